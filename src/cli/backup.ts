// `tokengate backup` and `tokengate restore`: logical backups of either database, and putting one back.
import { createInterface } from 'node:readline/promises';
import { Command } from 'commander';
import { sameColumns } from '../db/migrations.js';
import { BackupError, restoreBackup, verifyBackup, writeBackup, type BackupManifest } from '../ops/backup.js';
import { UsageError, environment, note, printJson, printLine, storeName, withAdminStore } from './shared.js';

interface BackupOptions {
  out?: string;
  json?: boolean;
}

interface RestoreOptions {
  yes?: boolean;
  json?: boolean;
}

export function backupCommand(): Command {
  return new Command('backup')
    .description(
      'write a backup of the store (keys, usage buckets, usage record ids) from one consistent snapshot, while the gate serves: ' +
        'tokengate-<backend>-<UTC time>.json.gz, gzipped NDJSON with a checksummed manifest',
    )
    .option('--out <dir>', 'directory for the file (default: BACKUP_DIR, else ./backups)')
    .option('--json', 'print {"path", "manifest"} as JSON')
    .action(async (options: BackupOptions) => {
      const { path, manifest } = await withAdminStore((store) => writeBackup(store, options.out ?? environment().backupDir));
      if (options.json) printJson({ path, manifest, store: storeName() });
      else {
        printLine(path);
        note(`${storeName()}: ${describe(manifest)}`);
      }
    });
}

export function restoreCommand(): Command {
  return new Command('restore')
    .description(
      'replace everything in the store (keys, usage, record ids; PostgreSQL reservations are dropped) with a backup, in one transaction. ' +
        'The file is checked in full first (checksum, counts, totals, every row, a schema with the same columns) and the current contents are backed up (BACKUP_DIR). ' +
        'Stop the gates first. A backup of either backend restores into either.',
    )
    .argument('<file>', 'a tokengate-*.json.gz backup')
    .option('--yes', 'do not ask for confirmation on a terminal')
    .option('--json', 'print {"restored", "manifest", "backup_before_restore"} as JSON')
    .action(async (file: string, options: RestoreOptions) => {
      const manifest = await verifyBackup(file);
      const result = await withAdminStore(async (store) => {
        const schema = await store.schemaVersion();
        if (!sameColumns(store.backend, manifest.schema, schema)) {
          throw new BackupError(`${file} has schema ${manifest.schema}, this ${store.backend} store has ${schema} with other columns: restore it with the tokengate version that wrote it`);
        }
        await confirm(options.yes, `Replace every key and all usage in this ${store.backend} store with ${file} (${describe(manifest)})?`);
        const before = await writeBackup(store, environment().backupDir);
        const restored = await restoreBackup(store, file);
        return { restored: file, manifest: restored, backup_before_restore: before.path };
      });
      if (options.json) printJson({ ...result, store: storeName() });
      else {
        printLine(`restored ${file} into ${storeName()}: ${describe(result.manifest)}`);
        printLine(`the contents before the restore are in ${result.backup_before_restore}`);
      }
    });
}

function describe(manifest: BackupManifest): string {
  const { api_keys, usage_buckets, usage_records } = manifest.tables;
  return `${manifest.backend} backup of ${manifest.created_at}, schema ${manifest.schema}: ${api_keys} keys, ${usage_buckets} usage buckets, ${usage_records} usage records, ${manifest.totals.lifetime_tokens} lifetime tokens`;
}

/** Asks on a terminal (unless `--yes`); a script, with no terminal, has decided already. */
async function confirm(yes: boolean | undefined, question: string): Promise<void> {
  if (yes || !process.stdin.isTTY) return;
  const prompt = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await prompt.question(`${question} Type yes to go on: `);
    if (answer.trim().toLowerCase() !== 'yes') throw new UsageError('restore cancelled: nothing was changed');
  } finally {
    prompt.close();
  }
}
