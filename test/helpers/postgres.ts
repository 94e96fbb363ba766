// Fresh databases on the run's shared PostgreSQL server; throwaway servers come from pg-server.js.
import { randomBytes } from 'node:crypto';
import postgres from 'postgres';
import { inject } from 'vitest';

export { startPostgres, type PostgresServer } from './pg-server.js';

/** A new, empty database on the run's shared server (or TEST_DATABASE_URL's); returns its URL. */
export async function freshDatabase(serverUrl: string = inject('postgresUrl')): Promise<string> {
  const name = `tokengate_test_${randomBytes(6).toString('hex')}`;
  const admin = postgres(serverUrl, { max: 1, onnotice: () => undefined });
  try {
    await admin.unsafe(`create database ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}
