// The tooling side of a database store (import, export, dump, restore): kept apart from the gate's Storage.
// Both dialects name every backed-up table and column alike, with the same types (a test holds them
// to it): SQLite's schema stands for either in what handles rows of both.
import { sql, type SQL } from 'drizzle-orm';
import { apiKeys, usageBuckets } from '../db/schema/sqlite.js';
import { BACKED_UP, rowOf, type TableName, type TableShape } from '../db/tables.js';
import type { SnapshotKey, StoredKey } from './snapshot.js';
import type { KeyRecord } from './types.js';
import { parseWeights } from '../usage/weights.js';
import { parseStoredLimits } from '../keys/limits.js';
import { LEGACY } from '../quota/limits.js';

const BACKUP_TABLES = new Map(BACKED_UP.sqlite.map((shape) => [shape.name, shape]));

export type Row = Record<string, string | number | null>;

export interface TableRow {
  table: TableName;
  row: Row;
}

/** Whether `name` is one of the tables a backup holds (never an inherited name such as `__proto__`). */
export function isTableName(name: unknown): name is TableName {
  return typeof name === 'string' && BACKUP_TABLES.has(name as TableName);
}

/**
 * Why `row` cannot be a row of `table` (a missing, extra or mistyped column, a negative or
 * fractional number: every integer column is a count, a limit or a time), or undefined. Columns in
 * `added` (nullable ones added since the backup was made) may be missing: they are null.
 */
export function rowProblem(table: TableName, row: unknown, added?: ReadonlySet<string>): string | undefined {
  if (typeof row !== 'object' || row === null || Array.isArray(row)) return 'not an object';
  const columns = BACKUP_TABLES.get(table)!.columns;
  for (const name of Object.keys(row)) if (!Object.hasOwn(columns, name)) return `unknown column ${JSON.stringify(name)}`;
  for (const [name, column] of Object.entries(columns)) {
    if (!Object.hasOwn(row, name)) {
      if (added?.has(name)) continue;
      return `column ${name} is missing`;
    }
    const value = (row as Row)[name];
    if (value === null && !column.notNull) continue;
    if (column.dataType !== 'number') {
      if (typeof value !== 'string') return `column ${name} is not a string`;
    } else if (!Number.isSafeInteger(value)) return `column ${name} is ${JSON.stringify(value)}, not an integer`;
    else if ((value as number) < 0) return `column ${name} is ${value as number}, a negative number`;
  }
  if (table === 'api_keys') return keyRowProblem(row as Row);
  return undefined;
}

/** What the column types do not say about a key row: its limit is positive, its weights are weights. */
function keyRowProblem(row: Row): string | undefined {
  if (row.token_limit_per_5h === 0) return 'column token_limit_per_5h is 0, not a positive limit';
  try {
    if (typeof row.token_weights === 'string') parseWeights(row.token_weights, 'token_weights');
    if (typeof row.limits === 'string') parseStoredLimits(row.limits);
  } catch (error) {
    return `column ${(error as Error).message}`;
  }
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

/** What an import compares with a stored key; a conflict names the columns that differ. */
const COMPARED = (['name', 'model', 'tokenLimit', 'expiresAt', 'tokenWeights', 'limits'] as const).map((field) => [field, apiKeys[field].name] as const);

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

/** The rows an imported key becomes: its key row and the buckets of each limit still inside its window. */
export function importRows(key: SnapshotKey): TableRow[] {
  const bucketRows = (limitName: string, buckets: readonly [number, number][]): TableRow[] =>
    buckets.map(([start, tokens]) => ({ table: 'usage_buckets', row: rowOf(usageBuckets, { keyId: key.id, limitName, bucketStart: start, tokens }) as Row }));
  const others = Object.entries(key.limitBuckets ?? {}).flatMap(([name, buckets]) => bucketRows(name, buckets));
  return [{ table: 'api_keys', row: rowOf(apiKeys, key) as Row }, ...bucketRows(LEGACY, key.buckets), ...others];
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
  /** Stored keys whose digest is among `digests`. */
  keysByDigest(digests: string[]): Promise<StoredKey[]>;
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
    const existing = new Map(stored.map((key) => [key.keyHash, key]));
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

/** A stored key with its digest, as the stores read it. */
export type { StoredKey } from './snapshot.js';
export { withBuckets } from './snapshot.js';


/** The rows after `row` in primary-key order: where the next page of a dump starts. */
export function pastRow(shape: TableShape, row: Row): SQL {
  return sql`(${sql.join(shape.primaryKey, sql`, `)}) > (${sql.join(shape.primaryKey.map((column) => sql`${row[column.name]}`), sql`, `)})`;
}
