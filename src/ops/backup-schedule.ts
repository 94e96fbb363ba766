// Scheduled backups: a cron expression (croner), one backup at a time, the newest N files kept.
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Cron } from 'croner';
import { cronPattern } from '../config.js';
import type { AdminStore } from '../storage/admin.js';
import { listBackups, writeBackup } from './backup.js';
import type { Logger } from '../types.js';

export interface BackupScheduleOptions {
  /** Opens the store to back up; each run opens it and closes it again. */
  open: () => Promise<AdminStore>;
  /** A cron expression; six fields put seconds first (`*\/30 * * * * *`). Evaluated in UTC. */
  schedule: string;
  dir: string;
  /** How many backup files of this store to keep in `dir`; older ones are deleted. */
  retain: number;
  logger: Logger;
  /** Called after each successful backup with its time, e.g. for `tokengate_last_backup_timestamp_seconds`. */
  onSuccess?: (atMs: number) => void;
}

export interface BackupSchedule {
  /** Stops scheduling and waits for a backup in progress to finish. */
  stop(): Promise<void>;
}

/**
 * Runs backups on `schedule`. A run never starts while the previous one is still going (croner's
 * `protect`); a failed run is logged and the schedule goes on.
 */
export function scheduleBackups(options: BackupScheduleOptions): BackupSchedule {
  const { dir, retain, logger } = options;
  let running: Promise<void> | undefined;
  const run = async (): Promise<void> => {
    const started = Date.now();
    try {
      const store = await options.open();
      try {
        const { path, manifest } = await writeBackup(store, dir, started);
        const deleted = prune(dir, store.backend, retain);
        logger.info({ event: 'backup', path, tables: manifest.tables, ms: Date.now() - started, deleted }, 'backup written');
      } finally {
        await store.close();
      }
      options.onSuccess?.(started);
    } catch (error) {
      logger.error({ event: 'backup_failed', err: error, dir }, 'scheduled backup failed');
    }
  };
  const job = new Cron(cronPattern(options.schedule, 'BACKUP_SCHEDULE'), { protect: true, timezone: 'UTC' }, () => {
    running = run();
    return running;
  });
  return {
    async stop() {
      job.stop();
      await running;
    },
  };
}

/** Deletes the oldest backups of `backend` in `dir` beyond the newest `retain`; returns their names. */
export function prune(dir: string, backend: string, retain: number): string[] {
  const names = listBackups(dir, backend);
  const old = names.slice(0, Math.max(0, names.length - retain));
  for (const name of old) rmSync(join(dir, name), { force: true });
  return old;
}
