// Import, export, dump and restore on SQLite, over a connection of its own (never the gate's).
import type Database from 'better-sqlite3';
import type { OpenedSqlite } from '../db/sqlite.js';
import { schemaTag } from '../db/migrations.js';
import {
  PAGE_SIZE,
  PRIMARY_KEYS,
  TABLE_NAMES,
  columnsOf,
  importInto,
  replaceInto,
  withBuckets,
  type AdminStore,
  type AdminTransaction,
  type ImportOptions,
  type ImportOutcome,
  type Row,
  type TableName,
  type TableRow,
} from './admin.js';
import type { SnapshotKey } from './snapshot.js';

/**
 * Transactions here span awaits (progress output, a gzip stream's backpressure), which
 * better-sqlite3's synchronous `transaction()` cannot: they are begun and ended by hand, which is
 * safe because this connection is used by nothing else. In WAL mode a read transaction sees one
 * snapshot from its first read to its end while a gate goes on writing.
 */
export class SqliteAdmin implements AdminStore {
  readonly backend = 'sqlite';

  constructor(private readonly opened: OpenedSqlite) {}

  private get sqlite(): Database.Database {
    return this.opened.sqlite;
  }

  async schemaVersion(): Promise<string> {
    const row = this.sqlite.prepare('select count(*) as n from __drizzle_migrations').get() as { n: number };
    return schemaTag('sqlite', row.n);
  }

  importKeys(keys: SnapshotKey[], options: ImportOptions): Promise<ImportOutcome> {
    return this.transaction(options.dryRun ? 'BEGIN' : 'BEGIN IMMEDIATE', !options.dryRun, (tx) => importInto(tx, keys, options));
  }

  async exportKeys(since: number): Promise<SnapshotKey[]> {
    return this.transaction('BEGIN', false, async () => {
      const keys = this.sqlite.prepare(`select ${columnsOf('api_keys').join(', ')} from api_keys order by created_at, id`).all() as Row[];
      const buckets = this.sqlite.prepare('select key_id, bucket_start, tokens from usage_buckets where bucket_start > ? order by bucket_start').all(since) as Row[];
      return withBuckets(keys, buckets);
    });
  }

  dump(write: (entry: TableRow) => Promise<void>): Promise<void> {
    return this.transaction('BEGIN', false, async () => {
      for (const table of TABLE_NAMES) {
        let after: Row | undefined;
        do {
          const rows = this.page(table, after);
          for (const row of rows) await write({ table, row });
          after = rows.length === PAGE_SIZE ? rows.at(-1) : undefined;
        } while (after);
      }
    });
  }

  replaceAll(rows: AsyncIterable<TableRow>): Promise<void> {
    return this.transaction('BEGIN IMMEDIATE', true, (tx) => replaceInto(tx, rows));
  }

  async close(): Promise<void> {
    if (this.sqlite.open) this.sqlite.close();
  }

  /** One page of `table` in primary-key order, after the row `after`. */
  private page(table: TableName, after: Row | undefined): Row[] {
    const pk = PRIMARY_KEYS[table];
    const where = after ? `where (${pk.join(', ')}) > (${pk.map(() => '?').join(', ')})` : '';
    const query = `select ${columnsOf(table).join(', ')} from ${table} ${where} order by ${pk.join(', ')} limit ${PAGE_SIZE}`;
    return this.sqlite.prepare(query).all(...(after ? pk.map((column) => after[column]) : [])) as Row[];
  }

  private async transaction<T>(begin: string, commit: boolean, work: (tx: AdminTransaction) => Promise<T>): Promise<T> {
    this.sqlite.exec(begin);
    try {
      const result = await work(this.tx);
      this.sqlite.exec(commit ? 'COMMIT' : 'ROLLBACK');
      return result;
    } catch (error) {
      if (this.sqlite.inTransaction) this.sqlite.exec('ROLLBACK');
      throw error;
    }
  }

  private readonly tx: AdminTransaction = {
    keysByDigest: async (digests) => {
      if (digests.length === 0) return [];
      const query = `select ${columnsOf('api_keys').join(', ')} from api_keys where key_hash in (${digests.map(() => '?').join(', ')})`;
      return this.sqlite.prepare(query).all(...digests) as Row[];
    },
    insert: async (table, rows) => {
      const columns = columnsOf(table);
      const statement = this.sqlite.prepare(`insert into ${table} (${columns.join(', ')}) values (${columns.map(() => '?').join(', ')})`);
      for (const row of rows) statement.run(...columns.map((column) => row[column]));
    },
    deleteAll: async () => {
      for (const table of [...TABLE_NAMES].reverse()) this.sqlite.exec(`delete from ${table}`);
    },
  };
}
