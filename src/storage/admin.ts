// The tooling side of a database store (import, export, dump, restore): kept apart from the gate's Storage.
import type { SnapshotKey } from './snapshot.js';
import type { KeyRecord } from './types.js';

/** Column types of the logical schema: text, integer, and the nullable `?` forms. */
type ColumnType = 'text' | 'text?' | 'int' | 'int?';

/**
 * The tables a backup holds, in the order they are written and restored (keys before what refers to
 * them), with their columns as both dialects name them. PostgreSQL's `reservations` is left out on
 * purpose: reservations belong to requests in flight and mean nothing once those are gone.
 */
export const TABLES = {
  api_keys: {
    id: 'text',
    key_hash: 'text',
    key_prefix: 'text',
    name: 'text',
    model: 'text?',
    token_limit_per_5h: 'int',
    expiry_date: 'int',
    created_at: 'int',
    last_used: 'int?',
    total_lifetime_tokens: 'int',
    total_requests: 'int',
  },
  usage_buckets: { key_id: 'text', bucket_start: 'int', tokens: 'int' },
  usage_records: { id: 'text', key_id: 'text', tokens: 'int', recorded_at: 'int' },
} as const satisfies Record<string, Record<string, ColumnType>>;

export type TableName = keyof typeof TABLES;
export const TABLE_NAMES = Object.keys(TABLES) as TableName[];

/** The primary key of each table, which also orders a dump. */
export const PRIMARY_KEYS: Record<TableName, readonly string[]> = {
  api_keys: ['id'],
  usage_buckets: ['key_id', 'bucket_start'],
  usage_records: ['id'],
};

export type Row = Record<string, string | number | null>;

export interface TableRow {
  table: TableName;
  row: Row;
}

export function columnsOf(table: TableName): string[] {
  return Object.keys(TABLES[table]);
}

/** Whether `name` is one of the tables a backup holds (never an inherited name such as `__proto__`). */
export function isTableName(name: unknown): name is TableName {
  return typeof name === 'string' && Object.hasOwn(TABLES, name);
}

/**
 * Why `row` cannot be a row of `table` (a missing, extra or mistyped column, a negative or
 * fractional number: every integer column is a count, a limit or a time), or undefined.
 */
export function rowProblem(table: TableName, row: unknown): string | undefined {
  if (typeof row !== 'object' || row === null || Array.isArray(row)) return 'not an object';
  const columns = TABLES[table] as Record<string, ColumnType>;
  for (const name of Object.keys(row)) if (!Object.hasOwn(columns, name)) return `unknown column ${JSON.stringify(name)}`;
  for (const [name, type] of Object.entries(columns)) {
    if (!Object.hasOwn(row, name)) return `column ${name} is missing`;
    const value = (row as Row)[name];
    if (value === null && type.endsWith('?')) continue;
    if (!type.startsWith('int')) {
      if (typeof value !== 'string') return `column ${name} is not a string`;
    } else if (!Number.isSafeInteger(value)) return `column ${name} is ${JSON.stringify(value)}, not an integer`;
    else if ((value as number) < 0) return `column ${name} is ${value as number}, a negative number`;
  }
  if (table === 'api_keys' && (row as Row).token_limit_per_5h === 0) return 'column token_limit_per_5h is 0, not a positive limit';
  return undefined;
}

/** What an import did, or would do: keys by id. */
export interface ImportOutcome {
  added: string[];
  /** Already in the store with the same name, model, limit and expiry: left as they are. */
  unchanged: string[];
  /** Already in the store (same key) with other values: left as they are, reported with the fields that differ. */
  conflicts: { id: string; fields: string[] }[];
}

const COMPARED: [keyof KeyRecord, string][] = [
  ['name', 'name'],
  ['model', 'model'],
  ['tokenLimit', 'token_limit_per_5h'],
  ['expiresAt', 'expiry_date'],
];

/**
 * Sorts imported keys against those already stored (matched by digest): new ones are to be added;
 * a stored one is never changed by an import, so running it twice changes nothing.
 */
export function classifyImport(keys: SnapshotKey[], existing: Map<string, KeyRecord>): ImportOutcome & { toAdd: SnapshotKey[] } {
  const outcome: ImportOutcome & { toAdd: SnapshotKey[] } = { added: [], unchanged: [], conflicts: [], toAdd: [] };
  for (const key of keys) {
    const stored = existing.get(key.keyHash);
    if (!stored) {
      outcome.added.push(key.id);
      outcome.toAdd.push(key);
      continue;
    }
    const fields = COMPARED.filter(([field]) => stored[field] !== key[field]).map(([, name]) => name);
    if (fields.length === 0) outcome.unchanged.push(stored.id);
    else outcome.conflicts.push({ id: stored.id, fields });
  }
  return outcome;
}

/** The rows an imported key becomes: its key row and its buckets still inside the window. */
export function importRows(key: SnapshotKey): TableRow[] {
  const keyRow: Row = {
    id: key.id,
    key_hash: key.keyHash,
    key_prefix: key.keyPrefix,
    name: key.name,
    model: key.model,
    token_limit_per_5h: key.tokenLimit,
    expiry_date: key.expiresAt,
    created_at: key.createdAt,
    last_used: key.lastUsedAt,
    total_lifetime_tokens: key.totalLifetimeTokens,
    total_requests: key.totalRequests,
  };
  const buckets = key.buckets.map(([start, tokens]): TableRow => ({ table: 'usage_buckets', row: { key_id: key.id, bucket_start: start, tokens } }));
  return [{ table: 'api_keys', row: keyRow }, ...buckets];
}

/** A stored key row as a KeyRecord. */
export function keyRecordOf(row: Row): KeyRecord {
  return {
    id: row.id as string,
    keyPrefix: row.key_prefix as string,
    name: row.name as string,
    model: row.model as string | null,
    tokenLimit: Number(row.token_limit_per_5h),
    expiresAt: Number(row.expiry_date),
    createdAt: Number(row.created_at),
    lastUsedAt: row.last_used === null ? null : Number(row.last_used),
    totalLifetimeTokens: Number(row.total_lifetime_tokens),
    totalRequests: Number(row.total_requests),
  };
}

export interface ImportOptions {
  /** Decide everything, write nothing. */
  dryRun: boolean;
  /** Called as keys are processed, with how many are done. */
  onProgress?: (done: number) => void;
}

export interface AdminStore {
  readonly backend: 'sqlite' | 'postgres';
  /** The tag of the latest applied migration (e.g. `0000_init`); the same sequence in both dialects. */
  schemaVersion(): Promise<string>;
  /** Adds the keys not yet stored (matched by digest) with their buckets, in one transaction. */
  importKeys(keys: SnapshotKey[], options: ImportOptions): Promise<ImportOutcome>;
  /** Every key with its digest and the buckets starting after `since`. */
  exportKeys(since: number): Promise<SnapshotKey[]>;
  /** Passes every row of every table to `write`, all read from one consistent snapshot. */
  dump(write: (entry: TableRow) => Promise<void>): Promise<void>;
  /** Replaces the whole contents with `rows` (keys first), in one transaction: all of it or nothing. */
  replaceAll(rows: AsyncIterable<TableRow>): Promise<void>;
  close(): Promise<void>;
}

/** Rows read or written per statement. */
export const PAGE_SIZE = 1000;

/** Groups consecutive rows of the same table into batches of at most `size`. */
export async function* batches(rows: AsyncIterable<TableRow>, size: number): AsyncGenerator<{ table: TableName; rows: Row[] }> {
  let current: { table: TableName; rows: Row[] } | undefined;
  for await (const { table, row } of rows) {
    if (current && (current.table !== table || current.rows.length >= size)) {
      yield current;
      current = undefined;
    }
    current ??= { table, rows: [] };
    current.rows.push(row);
  }
  if (current) yield current;
}

/** What a store does inside one of its write transactions; the shared import and restore logic drives it. */
export interface AdminTransaction {
  /** Stored key rows whose digest is among `digests`. */
  keysByDigest(digests: string[]): Promise<Row[]>;
  insert(table: TableName, rows: Row[]): Promise<void>;
  /** Empties every table a backup holds (and, on PostgreSQL, the reservations). */
  deleteAll(): Promise<void>;
}

/** Matches and adds keys in chunks inside `tx`, reporting progress after each chunk. */
export async function importInto(tx: AdminTransaction, keys: SnapshotKey[], options: ImportOptions): Promise<ImportOutcome> {
  const outcome: ImportOutcome = { added: [], unchanged: [], conflicts: [] };
  for (let start = 0; start < keys.length; start += PAGE_SIZE) {
    const chunk = keys.slice(start, start + PAGE_SIZE);
    const stored = await tx.keysByDigest(chunk.map((key) => key.keyHash));
    const existing = new Map(stored.map((row) => [row.key_hash as string, keyRecordOf(row)]));
    const { toAdd, ...part } = classifyImport(chunk, existing);
    outcome.added.push(...part.added);
    outcome.unchanged.push(...part.unchanged);
    outcome.conflicts.push(...part.conflicts);
    if (!options.dryRun) {
      const rows = toAdd.flatMap(importRows);
      await tx.insert('api_keys', rows.filter((r) => r.table === 'api_keys').map((r) => r.row));
      await tx.insert('usage_buckets', rows.filter((r) => r.table === 'usage_buckets').map((r) => r.row));
    }
    options.onProgress?.(start + chunk.length);
  }
  return outcome;
}

/** Empties the store and inserts `rows` batch by batch inside `tx`. */
export async function replaceInto(tx: AdminTransaction, rows: AsyncIterable<TableRow>): Promise<void> {
  await tx.deleteAll();
  for await (const batch of batches(rows, PAGE_SIZE)) await tx.insert(batch.table, batch.rows);
}

/** Key rows and bucket rows joined into snapshot keys. */
export function withBuckets(keys: Row[], buckets: Row[]): SnapshotKey[] {
  const byKey = new Map<string, [number, number][]>();
  for (const bucket of buckets) {
    const list = byKey.get(bucket.key_id as string) ?? [];
    list.push([Number(bucket.bucket_start), Number(bucket.tokens)]);
    byKey.set(bucket.key_id as string, list);
  }
  return keys.map((row) => ({ ...keyRecordOf(row), keyHash: row.key_hash as string, buckets: byKey.get(row.id as string) ?? [] }));
}
