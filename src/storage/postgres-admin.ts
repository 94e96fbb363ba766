// Import, export, dump and restore on PostgreSQL, over a pool of its own (never the gate's).
import type postgres from 'postgres';
import { schemaTag } from '../db/migrations.js';
import {
  PAGE_SIZE,
  PRIMARY_KEYS,
  TABLES,
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

/** Thrown inside a transaction to roll it back on purpose (a dry run), carrying its result out. */
class RollBack<T> {
  constructor(readonly result: T) {}
}

/** postgres.js returns bigint columns as strings: integer columns become numbers again. */
function typed(table: TableName, row: Row): Row {
  const out: Row = {};
  for (const [column, type] of Object.entries(TABLES[table])) {
    const value = row[column] ?? null;
    out[column] = value !== null && type.startsWith('int') ? Number(value) : value;
  }
  return out;
}

export class PostgresAdmin implements AdminStore {
  readonly backend = 'postgres';

  constructor(private readonly sql: postgres.Sql) {}

  async schemaVersion(): Promise<string> {
    const [row] = await this.sql<{ n: string }[]>`select count(*) as n from drizzle.__drizzle_migrations`;
    return schemaTag('postgres', Number(row?.n ?? 0));
  }

  async importKeys(keys: SnapshotKey[], options: ImportOptions): Promise<ImportOutcome> {
    try {
      return await this.sql.begin(async (sql) => {
        const outcome = await importInto(this.transaction(sql), keys, options);
        if (options.dryRun) throw new RollBack(outcome);
        return outcome;
      });
    } catch (error) {
      if (error instanceof RollBack) return error.result as ImportOutcome;
      throw error;
    }
  }

  exportKeys(since: number): Promise<SnapshotKey[]> {
    return this.snapshot(async (sql) => {
      const keys = await sql.unsafe(`select ${columnsOf('api_keys').join(', ')} from api_keys order by created_at, id`);
      const buckets = await sql.unsafe('select key_id, bucket_start, tokens from usage_buckets where bucket_start > $1 order by bucket_start', [since]);
      return withBuckets(keys as unknown as Row[], buckets as unknown as Row[]);
    });
  }

  dump(write: (entry: TableRow) => Promise<void>): Promise<void> {
    return this.snapshot(async (sql) => {
      for (const table of TABLE_NAMES) {
        let after: Row | undefined;
        do {
          const rows = await this.page(sql, table, after);
          for (const row of rows) await write({ table, row });
          after = rows.length === PAGE_SIZE ? rows.at(-1) : undefined;
        } while (after);
      }
    });
  }

  async replaceAll(rows: AsyncIterable<TableRow>): Promise<void> {
    await this.sql.begin((sql) => replaceInto(this.transaction(sql), rows));
  }

  async close(): Promise<void> {
    await this.sql.end({ timeout: 5 });
  }

  /** One REPEATABLE READ, read-only transaction: every query in it sees the same snapshot. */
  private async snapshot<T>(work: (sql: postgres.TransactionSql) => Promise<T>): Promise<T> {
    return (await this.sql.begin('isolation level repeatable read read only', work)) as T;
  }

  private async page(sql: postgres.TransactionSql, table: TableName, after: Row | undefined): Promise<Row[]> {
    const pk = PRIMARY_KEYS[table];
    const where = after ? `where (${pk.join(', ')}) > (${pk.map((_, i) => `$${i + 1}`).join(', ')})` : '';
    const query = `select ${columnsOf(table).join(', ')} from ${table} ${where} order by ${pk.join(', ')} limit ${PAGE_SIZE}`;
    const rows = await sql.unsafe(query, after ? pk.map((column) => after[column] as string | number) : []);
    return (rows as unknown as Row[]).map((row) => typed(table, row));
  }

  private transaction(sql: postgres.TransactionSql): AdminTransaction {
    return {
      keysByDigest: async (digests) => {
        if (digests.length === 0) return [];
        const rows = await sql.unsafe(`select ${columnsOf('api_keys').join(', ')} from api_keys where key_hash = any($1)`, [digests]);
        return (rows as unknown as Row[]).map((row) => typed('api_keys', row));
      },
      insert: async (table, rows) => {
        for (let start = 0; start < rows.length; start += PAGE_SIZE) {
          await sql`insert into ${sql(table)} ${sql(rows.slice(start, start + PAGE_SIZE), columnsOf(table))}`;
        }
      },
      deleteAll: async () => {
        // Reservations go too: they are in-flight state, and they refer to keys.
        await sql`delete from reservations`;
        for (const table of [...TABLE_NAMES].reverse()) await sql`delete from ${sql(table)}`;
      },
    };
  }
}
