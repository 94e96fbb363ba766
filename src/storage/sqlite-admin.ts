// Import, export, dump and restore on SQLite, over a connection of its own (never the gate's).
import type Database from 'better-sqlite3';
import { and, asc, eq, getTableColumns, gt, inArray, ne, or, sql } from 'drizzle-orm';
import { LEGACY } from '../quota/limits.js';
import type { OpenedSqlite, SqliteDb } from '../db/sqlite.js';
import { schemaTag } from '../db/migrations.js';
import { apiKeys, usageBuckets } from '../db/schema/sqlite.js';
import { BACKED_UP, type SqliteShape } from '../db/tables.js';
import {
  PAGE_SIZE,
  importInto,
  pastRow,
  replaceInto,
  withBuckets,
  type AdminStore,
  type AdminTransaction,
  type ImportOptions,
  type ImportOutcome,
  type Row,
  type TableRow,
} from './admin.js';
import type { SnapshotKey } from './snapshot.js';

const TABLES = new Map(BACKED_UP.sqlite.map((shape) => [shape.name, shape]));

/** One row's insert into `shape`, its values bound by database column name (the names of a backup row). */
function insertStatement(db: SqliteDb, shape: SqliteShape) {
  const values = Object.fromEntries(Object.entries(getTableColumns(shape.table)).map(([property, column]) => [property, sql.placeholder(column.name)]));
  return db.insert(shape.table).values(values).prepare();
}

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

  private get db(): SqliteDb {
    return this.opened.db;
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
      const keys = this.db.select().from(apiKeys).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id)).all();
      const buckets = this.db
        .select({ keyId: usageBuckets.keyId, limit: usageBuckets.limitName, start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
        .from(usageBuckets)
        // The 5h limit's usage inside the window; each other limit's as pruning left it (export keeps what counts).
        .where(or(and(eq(usageBuckets.limitName, LEGACY), gt(usageBuckets.bucketStart, since)), ne(usageBuckets.limitName, LEGACY)))
        .orderBy(asc(usageBuckets.bucketStart))
        .all();
      return withBuckets(keys, buckets);
    });
  }

  dump(write: (entry: TableRow) => Promise<void>): Promise<void> {
    return this.transaction('BEGIN', false, async () => {
      for (const shape of TABLES.values()) {
        let after: Row | undefined;
        do {
          const rows = this.page(shape, after);
          for (const row of rows) await write({ table: shape.name, row });
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

  /** One page of the table in primary-key order, after the row `after`. */
  private page(shape: SqliteShape, after: Row | undefined): Row[] {
    const query = this.db.select(shape.columns).from(shape.table);
    return query.where(after && pastRow(shape, after)).orderBy(...shape.primaryKey).limit(PAGE_SIZE).all() as Row[];
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
    keysByDigest: async (digests) => (digests.length === 0 ? [] : this.db.select().from(apiKeys).where(inArray(apiKeys.keyHash, digests)).all()),
    insert: async (table, rows) => {
      const statement = insertStatement(this.db, TABLES.get(table)!);
      for (const row of rows) statement.run(row);
    },
    deleteAll: async () => {
      for (const { table } of [...TABLES.values()].reverse()) this.db.delete(table).run();
    },
  };
}
