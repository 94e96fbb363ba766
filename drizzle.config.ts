// drizzle-kit configuration for both dialects: DRIZZLE_DIALECT=postgres selects PostgreSQL.
// `npm run db:generate` writes migrations for each into drizzle/<dialect>.
import { defineConfig } from 'drizzle-kit';

const dialect = process.env.DRIZZLE_DIALECT === 'postgres' ? 'postgresql' : 'sqlite';
const folder = dialect === 'postgresql' ? 'postgres' : 'sqlite';

export default defineConfig({
  dialect,
  schema: `./src/db/schema/${folder}.ts`,
  out: `./drizzle/${folder}`,
});
