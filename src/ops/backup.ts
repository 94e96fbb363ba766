// Logical backups: a gzipped NDJSON dump of every table with a checksummed manifest, written and read back by tokengate.
import { createHash, type Hash } from 'node:crypto';
import { chmodSync, createReadStream, createWriteStream, fsyncSync, mkdirSync, openSync, closeSync, readdirSync, renameSync, rmSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip } from 'node:zlib';
import { TokenGateError } from '../errors.js';
import { PRIVATE_FILE_MODE } from '../private-files.js';
import { columnsAdded } from '../db/migrations.js';
import { formatWeights, parseWeights } from '../usage/weights.js';
import { parseStoredLimits, storedLimits } from '../keys/limits.js';
import { TABLE_NAMES, type TableName } from '../db/tables.js';
import { isTableName, rowProblem, type AdminStore, type TableRow } from '../storage/admin.js';

export const BACKUP_FORMAT = 'tokengate-backup';
export const BACKUP_VERSION = 1;

/** Sums that let an operator check a backup against the live store, and a restore against the backup. */
export interface BackupTotals {
  lifetime_tokens: number;
  requests: number;
  bucket_tokens: number;
  record_tokens: number;
}

export interface BackupManifest {
  format: typeof BACKUP_FORMAT;
  version: number;
  created_at: string;
  /** The store it was taken from: `sqlite` or `postgres`. */
  backend: string;
  /** The tag of the latest migration applied to that store. */
  schema: string;
  /** Rows per table. */
  tables: Record<TableName, number>;
  totals: BackupTotals;
  /** SHA-256 (hex) of every byte before the manifest line: the header line and all row lines. */
  sha256: string;
}

type Header = Pick<BackupManifest, 'format' | 'version' | 'created_at' | 'backend' | 'schema'>;

/** A file that is not a backup, or one that is damaged. */
export class BackupError extends TokenGateError {
  constructor(message: string) {
    super(message, 'invalid_backup');
  }
}

/** `tokengate-<backend>-<UTC timestamp>.json.gz`, with `-<n>` when two are taken in the same millisecond. */
const BACKUP_NAME = /^tokengate-(sqlite|postgres)-(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z)(?:-(\d+))?\.json\.gz$/;

export function backupFileName(backend: string, at: number, suffix = 0): string {
  const stamp = new Date(at).toISOString().replace(/[:.]/g, '-');
  return `tokengate-${backend}-${stamp}${suffix > 0 ? `-${suffix}` : ''}.json.gz`;
}

/** Backup files of `backend` in `dir`, oldest first (files of any other name are not ours and not listed). */
export function listBackups(dir: string, backend: string): string[] {
  if (!existsSync(dir)) return [];
  const ours = readdirSync(dir)
    .map((name) => ({ name, match: BACKUP_NAME.exec(name) }))
    .filter(({ match }) => match?.[1] === backend);
  const order = ({ match }: (typeof ours)[number]): string => `${match![2]}#${(match![3] ?? '0').padStart(6, '0')}`;
  return ours.sort((a, b) => order(a).localeCompare(order(b))).map(({ name }) => name);
}

const emptyCounts = (): Record<TableName, number> => Object.fromEntries(TABLE_NAMES.map((table) => [table, 0])) as Record<TableName, number>;
const emptyTotals = (): BackupTotals => ({ lifetime_tokens: 0, requests: 0, bucket_tokens: 0, record_tokens: 0 });

/** Adds one row to the running counts and totals. */
function tally(counts: Record<TableName, number>, totals: BackupTotals, { table, row }: TableRow): void {
  counts[table]++;
  if (table === 'api_keys') {
    totals.lifetime_tokens += row.total_lifetime_tokens as number;
    totals.requests += row.total_requests as number;
  } else if (table === 'usage_buckets') totals.bucket_tokens += row.tokens as number;
  else totals.record_tokens += row.tokens as number;
}

/**
 * Dumps `store` from one consistent snapshot into `dir` (created if needed, 0700). The file is
 * written under a temporary name, owner-only (0600, whatever the umask), fsynced, then renamed: a
 * file with the final name is always complete.
 */
export async function writeBackup(store: AdminStore, dir: string, now = Date.now()): Promise<{ path: string; manifest: BackupManifest }> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const partial = join(dir, `.${backupFileName(store.backend, now)}.partial-${process.pid}`);
  const header: Header = { format: BACKUP_FORMAT, version: BACKUP_VERSION, created_at: new Date(now).toISOString(), backend: store.backend, schema: await store.schemaVersion() };
  const gzip = createGzip();
  const written = pipeline(gzip, createWriteStream(partial, { flags: 'wx', mode: PRIVATE_FILE_MODE }));
  const hash = createHash('sha256');
  const counts = emptyCounts();
  const totals = emptyTotals();
  const put = async (line: string, hashed: boolean): Promise<void> => {
    const bytes = Buffer.from(`${line}\n`, 'utf8');
    if (hashed) hash.update(bytes);
    if (!gzip.write(bytes)) await once(gzip, 'drain');
  };
  try {
    await put(JSON.stringify(header), true);
    await store.dump(async (entry) => {
      tally(counts, totals, entry);
      await put(JSON.stringify(entry), true);
    });
    const manifest: BackupManifest = { ...header, tables: counts, totals, sha256: hash.digest('hex') };
    await put(JSON.stringify({ manifest }), false);
    gzip.end();
    await written;
    chmodSync(partial, PRIVATE_FILE_MODE);
    fsyncFile(partial);
    const path = finalPath(dir, store.backend, now);
    renameSync(partial, path);
    fsyncFile(dir);
    return { path, manifest };
  } catch (error) {
    gzip.destroy();
    await written.catch(() => undefined);
    rmSync(partial, { force: true });
    throw error;
  }
}

function fsyncFile(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function finalPath(dir: string, backend: string, now: number): string {
  for (let suffix = 0; ; suffix++) {
    const path = join(dir, backupFileName(backend, now, suffix));
    if (!existsSync(path)) return path;
  }
}

/** Lines of a gunzipped file as raw bytes (without the newline), and a last line that lacks one. */
async function* lines(path: string): AsyncGenerator<Buffer> {
  const gunzip = createGunzip();
  const source = createReadStream(path);
  source.on('error', (error) => gunzip.destroy(error));
  source.pipe(gunzip);
  let rest: Buffer = Buffer.alloc(0);
  try {
    for await (const chunk of gunzip as AsyncIterable<Buffer>) {
      rest = rest.length === 0 ? chunk : Buffer.concat([rest, chunk]);
      let newline: number;
      while ((newline = rest.indexOf(0x0a)) !== -1) {
        yield rest.subarray(0, newline);
        rest = rest.subarray(newline + 1);
      }
    }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR') throw new BackupError(`${path} cannot be read: ${(error as Error).message}`);
    throw new BackupError(`${path} is not a tokengate backup, or it is damaged: ${(error as Error).message}`);
  }
  if (rest.length > 0) yield rest;
}

function parseLine(path: string, number: number, bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new BackupError(`${path} is damaged: line ${number} is not JSON`);
  }
}

function checkHeader(path: string, value: unknown): Header {
  const header = value as Partial<Header> | null;
  if (header?.format !== BACKUP_FORMAT) throw new BackupError(`${path} is not a tokengate backup (no "${BACKUP_FORMAT}" header)`);
  if (header.version !== BACKUP_VERSION) throw new BackupError(`${path} is backup format version ${String(header.version)}; this tokengate reads version ${BACKUP_VERSION}`);
  return header as Header;
}

/**
 * Reads a backup, yielding its rows (keys first) and checking everything as it goes: the header,
 * every row's table and columns, and at the end the checksum, row counts and totals against the
 * manifest. Any failure throws a BackupError; a consumer writing the rows in a transaction (restore)
 * therefore rolls back. Returns the manifest once every check passed.
 */
export async function* readBackup(path: string): AsyncGenerator<TableRow, BackupManifest> {
  const hash: Hash = createHash('sha256');
  const counts = emptyCounts();
  const totals = emptyTotals();
  let header: Header | undefined;
  /** Columns the backup's schema had not: its rows leave them out, and they are restored null or to their default. */
  let added = new Map<string, Map<string, string | null>>();
  const keyIds = new Set<string>();
  let pending: { bytes: Buffer; number: number } | undefined;
  let number = 0;
  for await (const bytes of lines(path)) {
    number++;
    if (!header) {
      header = checkHeader(path, parseLine(path, number, bytes));
      added = (header.backend === 'sqlite' || header.backend === 'postgres' ? columnsAdded(header.backend, header.schema) : undefined) ?? new Map();
      hash.update(bytes).update('\n');
      continue;
    }
    // The last line is the manifest, outside the checksum: a row is taken once the next line shows it was not last.
    if (pending) {
      hash.update(pending.bytes).update('\n');
      const entry = checkRow(path, pending.number, parseLine(path, pending.number, pending.bytes), keyIds, added);
      tally(counts, totals, entry);
      yield entry;
    }
    pending = { bytes, number };
  }
  if (!header || !pending) throw new BackupError(`${path} is not a tokengate backup (too short)`);
  const manifest = (parseLine(path, pending.number, pending.bytes) as { manifest?: BackupManifest } | null)?.manifest;
  if (!manifest) throw new BackupError(`${path} is incomplete: its last line is not the manifest`);
  const sha256 = hash.digest('hex');
  if (manifest.sha256 !== sha256) throw new BackupError(`${path} is damaged: checksum mismatch (manifest ${String(manifest.sha256)}, contents ${sha256})`);
  for (const table of TABLE_NAMES) {
    if (manifest.tables?.[table] !== counts[table]) throw new BackupError(`${path} is damaged: ${table} has ${counts[table]} rows, the manifest says ${String(manifest.tables?.[table])}`);
  }
  for (const [name, value] of Object.entries(totals)) {
    if (manifest.totals?.[name as keyof BackupTotals] !== value) throw new BackupError(`${path} is damaged: total ${name} is ${value}, the manifest says ${String(manifest.totals?.[name as keyof BackupTotals])}`);
  }
  return manifest;
}

/** Checks one row line; `keyIds` holds the keys read so far (they come first), which usage rows must belong to. */
function checkRow(path: string, number: number, value: unknown, keyIds: Set<string>, added: Map<string, Map<string, string | null>>): TableRow {
  const entry = value as { table?: unknown; row?: unknown } | null;
  const table = entry?.table;
  if (!isTableName(table)) {
    const named = typeof table === 'string' ? `unknown table ${JSON.stringify(table.slice(0, 64))}` : 'no table';
    throw new BackupError(`${path} is refused: line ${number} names ${named}; a backup holds only ${TABLE_NAMES.join(', ')}`);
  }
  const problem = rowProblem(table, entry?.row, new Set(added.get(table)?.keys()));
  if (problem) throw new BackupError(`${path} is refused: line ${number} (${table}): ${problem}`);
  const row = (entry as TableRow).row;
  for (const [column, filled] of added.get(table) ?? []) row[column] ??= filled;
  // Stored as the gate writes them, so that an import compares like with like.
  if (table === 'api_keys' && typeof row.token_weights === 'string') row.token_weights = formatWeights(parseWeights(row.token_weights, 'token_weights'));
  if (table === 'api_keys' && typeof row.limits === 'string') row.limits = storedLimits(parseStoredLimits(row.limits));
  if (table === 'api_keys') keyIds.add(row.id as string);
  else if (!keyIds.has(row.key_id as string)) throw new BackupError(`${path} is refused: line ${number} (${table}): key_id ${JSON.stringify(row.key_id)} is not a key of this backup`);
  return entry as TableRow;
}

/** Reads the whole backup and checks it, writing nothing: its manifest, or a BackupError. */
export async function verifyBackup(path: string): Promise<BackupManifest> {
  const reader = readBackup(path);
  for (;;) {
    const next = await reader.next();
    if (next.done) return next.value;
  }
}

/**
 * Replaces the contents of `store` with the backup at `path`, in one transaction: the rows go in as
 * they are read and checked, so a file that fails a check at any point leaves the store untouched.
 */
export async function restoreBackup(store: AdminStore, path: string): Promise<BackupManifest> {
  let manifest: BackupManifest | undefined;
  const reader = readBackup(path);
  const rows = async function* (): AsyncGenerator<TableRow> {
    for (;;) {
      const next = await reader.next();
      if (next.done) return void (manifest = next.value);
      yield next.value;
    }
  };
  await store.replaceAll(rows());
  if (!manifest) throw new BackupError(`${path} was not read to its end`);
  return manifest;
}
