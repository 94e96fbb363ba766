// drizzle-kit configuration: `npm run db:generate` writes SQL migrations for the embedded SQLite store.
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'sqlite',
  schema: './src/db/schema/sqlite.ts',
  out: './drizzle/sqlite',
});
