// The SQLite file as an operator meets it: one gate per file (real `tokengate serve` processes), files that are not tokengate's refused untouched, read-only files, owner-only modes.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { createStorage } from '../../src/storage/create.js';
import { cli, CLI, expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { quietLogger } from '../helpers/gate.js';
import { runSidecarToExit, startSidecar, type Sidecar } from '../helpers/sidecar.js';
import { tempDir } from '../helpers/temp.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const sidecars: Sidecar[] = [];
let upstream: Upstream;
let umask: number;

beforeAll(async () => {
  requireBuiltCli();
  umask = process.umask(0o022); // the usual default, which would leave new files world-readable; children inherit it
  upstream = await startUpstream();
});
afterAll(async () => {
  process.umask(umask);
  await upstream.close();
});
afterEach(async () => {
  for (const sidecar of sidecars.splice(0)) await sidecar.stop();
});

async function gate(dir: string): Promise<Sidecar> {
  const sidecar = await startSidecar({ UPSTREAM_URL: upstream.url }, dir);
  sidecars.push(sidecar);
  return sidecar;
}

const mode = (path: string): string => (statSync(path).mode & 0o777).toString(8);

/** A pid that ran on this host and is gone. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'console.log(process.pid)'], { encoding: 'utf8' });
  return Number(child.stdout.trim());
}

describe('one gate per SQLite file', () => {
  it('refuses a second gate on the file in one line naming the file and the owner, while the key commands run alongside', async () => {
    const dir = tempDir();
    const first = await gate(dir);
    const lock = JSON.parse(readFileSync(`${first.dbPath}.lock`, 'utf8')) as { pid: number; host: string };
    expect(lock).toMatchObject({ pid: first.process.pid, host: hostname() });

    const second = await runSidecarToExit({ UPSTREAM_URL: upstream.url, DATABASE_PATH: first.dbPath });
    expect(second.code).toBe(1);
    const lines = second.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`the SQLite database ${first.dbPath} is in use by process ${first.process.pid} on ${hostname()}`);
    expect(lines[0]).toMatch(/one gate process serves each SQLite file/);
    expect(second.stdout).not.toMatch(/listening/);

    // The key commands take no lock: they create and list keys while the gate serves, and the gate sees them.
    const created = cli(first.dbPath, ['keys', 'create', '--name', 'cli', '--limit', '1000', '--expires', '2999-01-01']);
    expect(created.status).toBe(0);
    expect(created.stderr).toMatch(/^Created key_/);
    const key = created.stdout.trim();
    const listed = cli(first.dbPath, ['keys', 'list', '--json']);
    expect(listed.status).toBe(0);
    expect((JSON.parse(listed.stdout) as { keys: { name: string }[] }).keys.map((k) => k.name)).toEqual(['cli']);
    expect((await fetch(`${first.url}/stats`, { headers: { authorization: `Bearer ${key}` } })).status).toBe(200);
    expect(first.process.exitCode).toBeNull();
    // The gate still holds its lock.
    expect(JSON.parse(readFileSync(`${first.dbPath}.lock`, 'utf8'))).toMatchObject({ pid: first.process.pid });
  });

  it('takes over a lock left by a process that is gone, and removes its lock when it stops', async () => {
    const dir = tempDir();
    const dbPath = join(dir, 'tokengate.db');
    const killed = await gate(dir);
    killed.process.kill('SIGKILL');
    await killed.exited;
    expect(existsSync(`${dbPath}.lock`)).toBe(true); // a killed gate cannot clean up
    const gone = deadPid();
    writeFileSync(`${dbPath}.lock`, JSON.stringify({ host: hostname(), pid: gone, token: 'left-behind' }));

    const next = await startSidecar({ UPSTREAM_URL: upstream.url }, dir);
    sidecars.push(next);
    expect(JSON.parse(readFileSync(`${dbPath}.lock`, 'utf8'))).toMatchObject({ pid: next.process.pid });
    next.process.kill('SIGTERM');
    expect((await next.exited).code).toBe(0);
    expect(existsSync(`${dbPath}.lock`)).toBe(false);
  });
});

describe('files that are not a tokengate database', () => {
  const otherApp = (path: string) => {
    const db = new Database(path);
    db.exec("create table users (id integer primary key, email text); insert into users (email) values ('a@example.com')");
    db.close();
  };
  const cases: [string, (path: string) => void, RegExp][] = [
    ['an empty file', (path) => writeFileSync(path, ''), /is empty \(0 bytes\), perhaps a failed copy/],
    ['a file that is not SQLite', (path) => writeFileSync(path, '{"keys":[]}\n'), /is not a SQLite database/],
    ['another application\'s SQLite database', otherApp, /is a SQLite database but not tokengate's \(no __drizzle_migrations, api_keys table\)/],
  ];

  it.each(cases)('refuses %s with a ConfigError, the gate and the CLI alike, and leaves it byte for byte', async (_what, make, message) => {
    const dir = tempDir();
    const path = join(dir, 'data.db');
    make(path);
    const bytes = readFileSync(path);
    const files = readdirSync(dir).sort();

    const refused = await createStorage({ databasePath: path, logger: quietLogger() }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(ConfigError);
    expect((refused as Error).message).toContain(path);
    expect((refused as Error).message).toMatch(message);
    expectFailure(cli(path, ['keys', 'list']), message);
    const served = await runSidecarToExit({ UPSTREAM_URL: upstream.url, DATABASE_PATH: path });
    expect(served.code).toBe(1);
    expect(served.stderr.trim().split('\n')).toHaveLength(1);
    expect(served.stderr).toMatch(message);

    expect(readFileSync(path).equals(bytes)).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(files); // no -wal, -shm or lock left behind
  });

  const asRoot = process.getuid?.() === 0;
  it.skipIf(!asRoot)('refuses a database file on a read-only mount as read-only, not with a failed write', async () => {
    const dir = tempDir();
    const path = join(dir, 'tokengate.db');
    const storage = await createStorage({ databasePath: path, logger: quietLogger() });
    await storage.createKey({ name: 'a', tokenLimit: 10, expiresAt: Date.now() + 86_400_000 });
    await storage.close();
    const bytes = readFileSync(path);
    // The file alone is mounted read-only (its directory stays writable), in a mount namespace of the child's own:
    // permission bits do not stop root, a read-only mount does.
    const readOnly = (args: string[]) =>
      spawnSync('unshare', ['-m', 'sh', '-c', 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"', 'sh', path, process.execPath, CLI, ...args], {
        env: { ...process.env, DATABASE_URL: '', DATABASE_PATH: path, UPSTREAM_URL: upstream.url, PORT: '0' },
        encoding: 'utf8',
        timeout: 20_000,
      });
    for (const args of [['keys', 'list'], ['serve']]) {
      const run = readOnly(args);
      expect(run.status).toBe(1);
      const lines = run.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`the SQLite database file ${path} is read-only \\(EROFS\\): the gate writes keys and usage to it`));
      expect(lines[0]).not.toMatch(/CREATE|create table|attempt to write/i);
    }
    expect(readFileSync(path).equals(bytes)).toBe(true);
  });
});

describe('file modes', () => {
  it('creates the database, its -wal and -shm, backups and exports 0600 under umask 022', async () => {
    const dir = tempDir();
    const dbPath = join(dir, 'tokengate.db');
    const storage = await createStorage({ databasePath: dbPath, logger: quietLogger() });
    await storage.createKey({ name: 'a', tokenLimit: 10, expiresAt: Date.now() + 86_400_000 });
    expect([mode(dbPath), mode(`${dbPath}-wal`), mode(`${dbPath}-shm`)]).toEqual(['600', '600', '600']);

    // The CLI runs alongside the open store, under the same umask.
    const backup = cli(dbPath, ['backup', '--out', join(dir, 'backups')]);
    expect(backup.status).toBe(0);
    expect(mode(backup.stdout.trim())).toBe('600');
    expect(mode(join(dir, 'backups'))).toBe('700');
    const exported = join(dir, 'keys.json');
    expect(cli(dbPath, ['export', '--out', exported]).status).toBe(0);
    expect(mode(exported)).toBe('600');
    // An export over a file others could read leaves it the owner's alone.
    writeFileSync(join(dir, 'old.json'), '', { mode: 0o644 });
    expect(cli(dbPath, ['export', '--out', join(dir, 'old.json')]).status).toBe(0);
    expect(mode(join(dir, 'old.json'))).toBe('600');
    // Restore's own backup of what it replaces.
    const restored = cli(dbPath, ['restore', backup.stdout.trim(), '--yes', '--json'], { BACKUP_DIR: join(dir, 'before') });
    expect(restored.status).toBe(0);
    expect(mode((JSON.parse(restored.stdout) as { backup_before_restore: string }).backup_before_restore)).toBe('600');
    await storage.close();
  });
});

describe('tokengate db migrate on SQLite', () => {
  it('names the file, and says how many migrations it applied', () => {
    const dir = tempDir();
    const dbPath = join(dir, 'tokengate.db');
    const migrations = (JSON.parse(readFileSync(join(import.meta.dirname, '../../drizzle/sqlite/meta/_journal.json'), 'utf8')) as { entries: { tag: string }[] }).entries;
    const latest = migrations.at(-1)!.tag;
    const first = cli(dbPath, ['db', 'migrate']);
    expect(first).toEqual({ status: 0, stdout: `sqlite ${dbPath}: applied ${migrations.length} migrations; schema ${latest}\n`, stderr: '' });
    expect(mode(dbPath)).toBe('600');
    const again = cli(dbPath, ['db', 'migrate']);
    expect(again).toEqual({ status: 0, stdout: `sqlite ${dbPath}: up to date, no migrations applied; schema ${latest}\n`, stderr: '' });
  });
});
