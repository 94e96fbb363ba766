// `tokengate import` and `tokengate export`: the old JSON key file into the database, and back out.
import { Command } from 'commander';
import cliProgress from 'cli-progress';
import { StorageError } from '../errors.js';
import { writeBackup } from '../ops/backup.js';
import { writePrivateFile } from '../private-files.js';
import { DEFAULT_WINDOW_MS, countsAfter } from '../quota/window.js';
import type { ImportOutcome } from '../storage/admin.js';
import { loadKeyFile, type ParsedKeyFile } from '../storage/key-file.js';
import type { SnapshotKey } from '../storage/snapshot.js';
import { maskKey } from '../keys/secret.js';
import { limitsOf } from '../keys/limits.js';
import { LEGACY } from '../quota/limits.js';
import { environment, note, printJson, printLine, storeName, withAdminStore } from './shared.js';

/** Files with at least this many keys get a progress bar on a terminal. */
const PROGRESS_FROM = 1000;

interface ImportCommandOptions {
  dryRun?: boolean;
  json?: boolean;
}

export function importCommand(): Command {
  return new Command('import')
    .description(
      'import a JSON key file of the earlier file-based gateway ({"keys":[…]}): every entry is validated first, ' +
        'the store is backed up (BACKUP_DIR), then new keys go in with their lifetime totals and current-window usage, in one transaction. ' +
        'Keys already stored (same key) are left as they are, so a second run changes nothing.',
    )
    .argument('<file>', 'the JSON key file')
    .option('--dry-run', 'report what would be imported, write nothing')
    .option('--json', 'print the report as one JSON object')
    .action(async (file: string, options: ImportCommandOptions) => {
      const parsed = loadKeyFile(file, Date.now(), DEFAULT_WINDOW_MS);
      const report = await withAdminStore(async (store) => {
        const planned = await store.importKeys(parsed.keys, { dryRun: true });
        if (options.dryRun || planned.added.length === 0) return { outcome: planned, backup: null };
        const { path } = await writeBackup(store, environment().backupDir);
        const outcome = await withProgress(parsed.keys.length, !options.json, (onProgress) => store.importKeys(parsed.keys, { dryRun: false, onProgress })).catch(
          (error: unknown) => {
            throw new StorageError(`import rolled back, nothing was written: ${(error as Error).message}`, false, { cause: error });
          },
        );
        return { outcome, backup: path };
      });
      const summary = importSummary(parsed, report.outcome, Boolean(options.dryRun), report.backup);
      if (options.json) printJson({ ...summary, store: storeName() });
      else printImport(summary);
    });
}

interface ImportSummary {
  dry_run: boolean;
  keys: number;
  new: number;
  unchanged: number;
  conflicts: ImportOutcome['conflicts'];
  usage_windows_in_window: number;
  usage_windows_outside_window: number;
  backup: string | null;
}

function importSummary(parsed: ParsedKeyFile, outcome: ImportOutcome, dryRun: boolean, backup: string | null): ImportSummary {
  return {
    dry_run: dryRun,
    keys: parsed.keys.length,
    new: outcome.added.length,
    unchanged: outcome.unchanged.length,
    conflicts: outcome.conflicts,
    usage_windows_in_window: parsed.usageInWindow,
    usage_windows_outside_window: parsed.usageOutsideWindow,
    backup,
  };
}

function printImport(summary: ImportSummary): void {
  const verb = summary.dry_run ? 'would import' : 'imported';
  printLine(`${verb} ${summary.new} new key(s) of ${summary.keys} into ${storeName()}: ${summary.unchanged} unchanged, ${summary.conflicts.length} conflict(s)`);
  printLine(`usage: ${summary.usage_windows_in_window} window(s) inside the 5-hour window, ${summary.usage_windows_outside_window} outside it (kept in lifetime totals only)`);
  for (const conflict of summary.conflicts) printLine(`conflict: ${conflict.id} is stored with another ${conflict.fields.join(', ')}; left as stored`);
  if (summary.backup) printLine(`backup of the store before the import: ${summary.backup}`);
  if (summary.dry_run) printLine('dry run: nothing was written');
}

/** Runs `work` with a progress bar on stderr when it is a terminal and the file is large. */
async function withProgress<T>(total: number, wanted: boolean, work: (onProgress?: (done: number) => void) => Promise<T>): Promise<T> {
  if (!wanted || !process.stderr.isTTY || total < PROGRESS_FROM) return work();
  const bar = new cliProgress.SingleBar({ stream: process.stderr, format: 'importing [{bar}] {value}/{total} keys', hideCursor: true }, cliProgress.Presets.shades_classic);
  bar.start(total, 0);
  try {
    return await work((done) => bar.update(done));
  } finally {
    bar.stop();
  }
}

interface ExportCommandOptions {
  out?: string;
}

export function exportCommand(): Command {
  return new Command('export')
    .description(
      'write the keys as a JSON key file in the earlier gateway format, with the usage still inside the window. ' +
        'Plaintext keys are not stored, so "key" is null in every entry; "key_id" and "key_prefix" say which key it was.',
    )
    .option('--out <file>', 'write to this file (mode 0600) instead of stdout')
    .action(async (options: ExportCommandOptions) => {
      const now = Date.now();
      const keys = await withAdminStore((store) => store.exportKeys(countsAfter(now, DEFAULT_WINDOW_MS)));
      const text = `${JSON.stringify({ exported_at: new Date(now).toISOString(), keys: keys.map((key) => exportEntry(key, now)) }, null, 2)}\n`;
      if (options.out === undefined) {
        process.stdout.write(text);
        note(`exported ${keys.length} key(s) from ${storeName()}`);
        return;
      }
      writePrivateFile(options.out, text); // key digests and usage: the owner's alone
      note(`exported ${keys.length} key(s) from ${storeName()} to ${options.out}`);
    });
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

/** Usage as the key file lists it: one entry per bucket. */
const usageWindows = (buckets: readonly [number, number][]) => buckets.map(([start, tokens]) => ({ window_start: iso(start), tokens_used: tokens }));

/** The usage of each of the key's limits but `5h` (whose usage is `usage_windows`) that still counts at `now`; undefined when there is none. */
function limitUsageWindows(key: SnapshotKey, now: number): Record<string, unknown> | undefined {
  if (!key.limitBuckets) return undefined;
  const entries = limitsOf(key, DEFAULT_WINDOW_MS)
    .filter((limit) => limit.name !== LEGACY)
    .map((limit) => [limit.name, usageWindows((Object.hasOwn(key.limitBuckets!, limit.name) ? key.limitBuckets![limit.name]! : []).filter(([start]) => start > countsAfter(now, limit.windowMs)))] as const)
    .filter(([, windows]) => windows.length > 0);
  return entries.length > 0 ? Object.fromEntries(entries) : undefined;
}

/** One key in the old format; the plaintext is explicitly absent. */
function exportEntry(key: SnapshotKey, now: number): Record<string, unknown> {
  const limitUsage = limitUsageWindows(key, now);
  return {
    key: null,
    key_id: key.id,
    key_prefix: maskKey(key.keyPrefix),
    name: key.name,
    model: key.model,
    token_limit_per_5h: key.tokenLimit,
    expiry_date: iso(key.expiresAt),
    created_at: iso(key.createdAt),
    last_used: iso(key.lastUsedAt),
    total_lifetime_tokens: key.totalLifetimeTokens,
    total_requests: key.totalRequests,
    token_weights: key.tokenWeights,
    limits: key.limits == null ? null : (JSON.parse(key.limits) as unknown),
    usage_windows: usageWindows(key.buckets),
    ...(limitUsage ? { limit_usage_windows: limitUsage } : {}),
  };
}
