// One process per file store: the lock file refuses a second one and is taken over from a dead or silent owner.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { createStorage } from '../../src/storage/create.js';
import { quietLogger } from '../helpers/gate.js';
import { tempDir } from '../helpers/temp.js';

describe('one process per file store', () => {
  it('refuses a second process with a clear error, and takes over the lock of a dead one', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'lock'), '999999999'); // left by a process that no longer runs
    const storage = await createStorage({ storage: 'file', fallbackDir: dir, logger: quietLogger() });
    try {
      const cli = spawnSync(process.execPath, ['dist/src/cli/main.js', 'keys', 'list'], {
        cwd: join(import.meta.dirname, '../..'),
        env: { ...process.env, STORAGE: 'file', FALLBACK_DIR: dir, DATABASE_URL: '' },
        encoding: 'utf8',
      });
      expect(cli.status).toBe(1);
      expect(cli.stderr.trim()).toBe(`tokengate: the file store ${dir} is in use by process ${process.pid} on ${hostname()}; each gate instance needs its own FALLBACK_DIR`);
    } finally {
      await storage.close();
    }
    expect(existsSync(join(dir, 'lock'))).toBe(false);
  });

  it("refuses a lock that another host keeps fresh, and takes it over once that host stops touching it", async () => {
    const dir = tempDir();
    const lock = join(dir, 'lock');
    // Another container on the same volume: its pid means nothing here, only its heartbeat does.
    writeFileSync(lock, JSON.stringify({ host: 'other-container', pid: process.pid, token: 'theirs' }));
    const refused = await createStorage({ storage: 'file', fallbackDir: dir, logger: quietLogger() }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(ConfigError);
    expect((refused as Error).message).toBe(`the file store ${dir} is in use by process ${process.pid} on other-container; each gate instance needs its own FALLBACK_DIR`);

    const minuteAgo = new Date(Date.now() - 60_000);
    utimesSync(lock, minuteAgo, minuteAgo);
    const storage = await createStorage({ storage: 'file', fallbackDir: dir, logger: quietLogger() });
    try {
      expect(JSON.parse(readFileSync(lock, 'utf8'))).toMatchObject({ host: hostname(), pid: process.pid });
      expect(readdirSync(dir).filter((name) => name.startsWith('lock'))).toEqual(['lock']);
    } finally {
      await storage.close();
    }
    expect(existsSync(lock)).toBe(false);
  });

  it('takes over a lock naming its own pid on this host (a restarted container is pid 1 again)', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'lock'), JSON.stringify({ host: hostname(), pid: process.pid, token: 'previous-run' }));
    const storage = await createStorage({ storage: 'file', fallbackDir: dir, logger: quietLogger() });
    await storage.close();
    expect(existsSync(join(dir, 'lock'))).toBe(false);
  });
});
