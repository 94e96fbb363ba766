// Opens tokengate's PostgreSQL store at $DATABASE_URL (migrated, connected) and closes it: which postgres.js that loads is what record-imports.mjs is for.
import { createStorage } from 'tokengate';

const storage = await createStorage({ databaseUrl: process.env.DATABASE_URL, fallback: false });
await storage.ping();
console.log(storage.backend);
await storage.close();
