// The SQLite file under real processes: survives SIGKILL, creates its directory, refuses a read-only one clearly.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { createStorage } from '../../src/storage/create.js';
import { tempDbPath, tempDir } from '../helpers/temp.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const SERVER = join(import.meta.dirname, '../../examples/express-proxy/server.js');

describe('SQLite durability', () => {
  let upstream: Upstream;
  beforeAll(async () => {
    upstream = await startUpstream(json({ usage: { total_tokens: 17 } }));
  });
  afterAll(() => upstream.close());

  it('keeps every recorded request when the gate process is killed between requests', async () => {
    const dbPath = tempDbPath();
    const setup = await createStorage({ databasePath: dbPath });
    const { key, record } = await setup.createKey({ name: 'k', tokenLimit: 1_000_000, expiresAt: Date.now() + 3600_000 });
    await setup.close();

    const child = spawn(process.execPath, [SERVER], { env: { ...process.env, UPSTREAM_URL: upstream.url, DATABASE_PATH: dbPath, PORT: '0', LOG_LEVEL: 'warn' } });
    onTestFinished(() => void child.kill('SIGKILL')); // should an assertion fail before the kill below
    const [line] = (await once(child.stdout, 'data')) as [Buffer];
    const base = /http:\/\/localhost:(\d+)/.exec(line.toString())![0];
    const requests = 12;
    for (let i = 0; i < requests; i++) {
      const response = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}' });
      expect(response.status).toBe(200);
      await response.text();
    }
    await expect
      .poll(async () => ((await (await fetch(`${base}/stats`, { headers: { authorization: `Bearer ${key}` } })).json()) as { total_requests: number }).total_requests)
      .toBe(requests);
    child.kill('SIGKILL');
    await once(child, 'exit');

    const reopened = await createStorage({ databasePath: dbPath });
    try {
      expect(await reopened.getKey(record.id)).toMatchObject({ totalRequests: requests, totalLifetimeTokens: requests * 17 });
      expect((await reopened.windowUsage(record.id, Date.now(), 5 * 3600_000)).used).toBe(requests * 17);
    } finally {
      await reopened.close();
    }
  });

  it('creates a missing data directory', async () => {
    const dbPath = join(tempDir(), 'a', 'b', 'tokengate.db');
    const storage = await createStorage({ databasePath: dbPath });
    await storage.createKey({ name: 'k', tokenLimit: 1, expiresAt: Date.now() + 1000 });
    await storage.close();
    expect(existsSync(dbPath)).toBe(true);
  });

  it('refuses a read-only data directory with one clear line, at start', () => {
    const readOnly = join(tempDir(), 'ro');
    mkdirSync(readOnly, { mode: 0o555 });
    const env = { ...process.env, UPSTREAM_URL: upstream.url, DATABASE_PATH: join(readOnly, 'tokengate.db'), PORT: '0' };
    // Permissions do not stop root, a read-only file system does: as root, mount one over the
    // directory in a private mount namespace (as a container with a read-only root would have it).
    const result =
      process.getuid?.() === 0
        ? spawnSync('unshare', ['-m', 'sh', '-c', `mount -t tmpfs -o ro tokengate-ro "$1" && exec "$2" "$3"`, 'sh', readOnly, process.execPath, SERVER], { env, encoding: 'utf8', timeout: 10_000 })
        : spawnSync(process.execPath, [SERVER], { env, encoding: 'utf8', timeout: 10_000 });
    expect(result.status).toBe(1);
    const lines = result.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^cannot start: SQLite data directory ${readOnly} is not writable \\((EACCES\\)|EROFS, a read-only file system\\))`));
    expect(existsSync(join(readOnly, 'tokengate.db'))).toBe(false);
  });
});
