// Scheduled backups on a fast cron schedule with real files, their configuration, and restore's all-or-nothing.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { describe, expect, it, vi } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { readEnvironment } from '../../src/config.js';
import { scheduleBackups } from '../../src/ops/backup-schedule.js';
import { BackupError, backupFileName, restoreBackup, verifyBackup, writeBackup } from '../../src/ops/backup.js';
import type { Logger } from '../../src/types.js';
import type { AdminStore } from '../../src/storage/admin.js';
import { createStorage, openAdminStore } from '../../src/storage/create.js';
import { tempDir } from '../helpers/gate.js';

/** Records what was logged, by level. */
function recordingLogger(): Logger & { lines: { level: string; fields: Record<string, unknown> }[] } {
  const lines: { level: string; fields: Record<string, unknown> }[] = [];
  const at = (level: string) => (fields: unknown) => void lines.push({ level, fields: fields as Record<string, unknown> });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') } as Logger & { lines: typeof lines };
}

async function seededSqlite(): Promise<string> {
  const databasePath = join(tempDir(), 'tokengate.db');
  const storage = await createStorage({ databasePath });
  await storage.createKey({ name: 'alice', tokenLimit: 1000, expiresAt: Date.now() + 86_400_000 });
  await storage.close();
  return databasePath;
}

describe('scheduleBackups', () => {
  it('backs up every second, one run at a time, keeps the newest files of its own and nothing else', async () => {
    const databasePath = await seededSqlite();
    const dir = tempDir();
    const foreign = ['notes.txt', backupFileName('postgres', Date.UTC(2020, 0, 1)), 'tokengate-sqlite-backup.json.gz'];
    for (const name of foreign) writeFileSync(join(dir, name), 'not ours to delete');
    const logger = recordingLogger();
    const successes: number[] = [];
    let active = 0;
    let mostActive = 0;
    let opened = 0;
    // The first run is slow (longer than the schedule's period): the next tick must not start another.
    const open = async (): Promise<AdminStore> => {
      active++;
      mostActive = Math.max(mostActive, active);
      if (opened++ === 0) await new Promise((resolve) => setTimeout(resolve, 2500));
      const store = await openAdminStore({ databasePath });
      const close = store.close.bind(store);
      store.close = async () => {
        active--;
        await close();
      };
      return store;
    };
    const schedule = scheduleBackups({ open, schedule: '*/1 * * * * *', dir, retain: 2, logger, onSuccess: (at) => successes.push(at) });
    try {
      await vi.waitUntil(() => successes.length >= 4, { timeout: 30_000, interval: 25 }); // four scheduled backups
    } finally {
      await schedule.stop();
    }
    expect(active).toBe(0); // stop() waited for the run in progress
    expect(mostActive).toBe(1);
    const count = successes.length;
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(successes).toHaveLength(count); // stopped: no more runs

    const names = readdirSync(dir);
    for (const name of foreign) expect(names).toContain(name);
    const ours = names.filter((name) => /^tokengate-sqlite-\d{4}.*\.json\.gz$/.test(name));
    expect(ours).toHaveLength(2);
    expect(names.filter((name) => name.includes('partial'))).toEqual([]);
    for (const name of ours) expect((await verifyBackup(join(dir, name))).tables.api_keys).toBe(1);
    // The two kept are the newest: named after the last two successful runs.
    expect(ours.sort()).toEqual(successes.slice(-2).map((at) => backupFileName('sqlite', at)).sort());

    const logged = logger.lines.filter((line) => line.fields.event === 'backup');
    expect(logged).toHaveLength(count);
    expect(logged.every((line) => line.level === 'info' && typeof line.fields.path === 'string')).toBe(true);
  });

  it('logs a failed run and goes on with the schedule', async () => {
    const databasePath = await seededSqlite();
    const dir = tempDir();
    const logger = recordingLogger();
    const successes: number[] = [];
    let calls = 0;
    const open = async (): Promise<AdminStore> => {
      if (calls++ === 0) throw new Error('database unreachable');
      return openAdminStore({ databasePath });
    };
    const schedule = scheduleBackups({ open, schedule: '*/1 * * * * *', dir, retain: 5, logger, onSuccess: (at) => successes.push(at) });
    try {
      await vi.waitUntil(() => successes.length >= 1, { timeout: 30_000, interval: 25 }); // a backup after the failed one
    } finally {
      await schedule.stop();
    }
    expect(logger.lines.filter((line) => line.level === 'error' && line.fields.event === 'backup_failed')).toHaveLength(1);
  });
});

describe('the backup variables', () => {
  const backupConfigFromEnv = (env: NodeJS.ProcessEnv) => readEnvironment(env).backups;

  it('reads BACKUP_SCHEDULE, BACKUP_DIR and BACKUP_RETAIN with their defaults', () => {
    expect(backupConfigFromEnv({})).toBeUndefined();
    expect(readEnvironment({}).backupDir).toBe('./backups');
    expect(backupConfigFromEnv({ BACKUP_SCHEDULE: '0 3 * * *' })).toEqual({ schedule: '0 3 * * *', dir: './backups', retain: 7 });
    expect(backupConfigFromEnv({ BACKUP_SCHEDULE: '*/10 * * * * *', BACKUP_DIR: '/var/backups/tg', BACKUP_RETAIN: '30' })).toEqual({
      schedule: '*/10 * * * * *',
      dir: '/var/backups/tg',
      retain: 30,
    });
  });

  it.each([
    [{ BACKUP_SCHEDULE: 'every night' }, /^BACKUP_SCHEDULE is not a cron expression: "every night"/],
    [{ BACKUP_SCHEDULE: '61 * * * *' }, /^BACKUP_SCHEDULE/],
    [{ BACKUP_SCHEDULE: '0 3 * * *', BACKUP_RETAIN: '0' }, /^BACKUP_RETAIN must be a positive integer, not "0"/],
    [{ BACKUP_SCHEDULE: '0 3 * * *', BACKUP_RETAIN: 'many' }, /^BACKUP_RETAIN/],
    [{ BACKUP_RETAIN: '-1' }, /^BACKUP_RETAIN/],
  ])('throws a ConfigError naming the variable: %j', (env, message) => {
    expect(() => backupConfigFromEnv(env)).toThrow(ConfigError);
    expect(() => backupConfigFromEnv(env)).toThrow(message);
  });
});

describe('restoreBackup', () => {
  it('rolls back when the file fails a check after rows went in: the store is untouched', async () => {
    const databasePath = await seededSqlite();
    const store = await openAdminStore({ databasePath });
    try {
      const { path } = await writeBackup(store, tempDir());
      const other = await createStorage({ databasePath });
      await other.createKey({ name: 'bob', tokenLimit: 5, expiresAt: Date.now() + 86_400_000 });
      await other.close();

      // The rows are intact, the manifest's checksum is not: found only after every row was read.
      const lines = gunzipSync(readFileSync(path)).toString('utf8').trimEnd().split('\n');
      const manifest = JSON.parse(lines.at(-1)!) as { manifest: { sha256: string } };
      manifest.manifest.sha256 = '0'.repeat(64);
      const tampered = join(tempDir(), 'tampered.json.gz');
      writeFileSync(tampered, gzipSync(`${[...lines.slice(0, -1), JSON.stringify(manifest)].join('\n')}\n`));

      await expect(restoreBackup(store, tampered)).rejects.toThrow(BackupError);
      await expect(restoreBackup(store, tampered)).rejects.toThrow(/checksum mismatch/);
      const after = await createStorage({ databasePath });
      expect((await after.listKeys()).map((key) => key.name).sort()).toEqual(['alice', 'bob']);
      await after.close();
      expect(existsSync(tampered)).toBe(true);
    } finally {
      await store.close();
    }
  });
});
