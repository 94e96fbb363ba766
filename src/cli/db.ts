// `tokengate db migrate` and `tokengate db prune`: database maintenance on the configured store, then exit.
import { Command } from 'commander';
import { formatDuration, parseDuration, storageForWindow } from '../config.js';
import { migrateDatabase, openPruneTarget } from '../storage/create.js';
import { cliLogger, environment, printJson, printLine } from './shared.js';

interface PruneCliOptions {
  window?: string;
  json?: boolean;
}

export function dbCommand(): Command {
  const db = new Command('db').description('database maintenance');
  db.command('migrate')
    .description('apply pending migrations to the store DATABASE_URL or DATABASE_PATH names (also done on every start)')
    .action(async () => {
      // Under an advisory lock on PostgreSQL; on SQLite alongside a running gate, which holds the file's lock, not this.
      const { store, applied, schema } = await migrateDatabase({ ...environment().storage, logger: cliLogger() });
      printLine(`${store}: ${applied === 0 ? 'up to date, no migrations applied' : `applied ${applied} migration${applied === 1 ? '' : 's'}`}; schema ${schema}`);
    });
  db.command('prune')
    .description(
      'delete usage record ids older than RECORD_RETENTION (default 7d), usage buckets outside the window and, on PostgreSQL, ' +
        'expired reservations, in small batches, while the gate serves (a running gate also does this every minute)',
    )
    .option('--window <duration>', 'the longest window your gates use, such as 5h or 7d: older buckets are deleted', '5h')
    .option('--json', 'print {"store", "usage_records", "usage_buckets", "reservations"?} as JSON')
    .action(async (options: PruneCliOptions) => {
      const windowMs = parseDuration('--window', options.window ?? '5h');
      const target = await openPruneTarget(storageForWindow(environment().storage, windowMs));
      try {
        const counts = await target.pruner.run();
        const { store } = target;
        if (options.json) {
          printJson({ store, usage_records: counts.usageRecords, usage_buckets: counts.usageBuckets, ...(counts.reservations === undefined ? {} : { reservations: counts.reservations }) });
          return;
        }
        const parts = [
          `${counts.usageRecords} usage records older than ${formatDuration(target.options.recordRetentionMs)}`,
          `${counts.usageBuckets} usage buckets outside the ${formatDuration(windowMs)} window`,
          ...(counts.reservations === undefined ? [] : [`${counts.reservations} expired reservations`]),
        ];
        printLine(`${store}: pruned ${parts.join(', ')}`);
      } finally {
        await target.close();
      }
    });
  return db;
}
