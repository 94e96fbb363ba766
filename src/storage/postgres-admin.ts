// Import, export, dump and restore on PostgreSQL, over a pool of its own (never the gate's).
import { and, asc, eq, gt, inArray, ne, or } from 'drizzle-orm';
import { LEGACY } from '../quota/limits.js';
import type { OpenedPostgres, PostgresDb } from '../db/postgres.js';
import { schemaTag } from '../db/migrations.js';
import { apiKeys, reservations, usageBuckets } from '../db/schema/postgres.js';
import { BACKED_UP, valuesOf, type PostgresShape } from '../db/tables.js';
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

const TABLES = new Map(BACKED_UP.postgres.map((shape) => [shape.name, shape]));

type Tx = Parameters<Parameters<PostgresDb['transaction']>[0]>[0];

/** Thrown inside a transaction to roll it back on purpose (a dry run), carrying its result out. */
class RollBack<T> {
  constructor(readonly result: T) {}
}

export class PostgresAdmin implements AdminStore {
  readonly backend = 'postgres';

  constructor(private readonly opened: OpenedPostgres) {}

  private get db(): PostgresDb {
    return this.opened.db;
  }

  async schemaVersion(): Promise<string> {
    const [row] = await this.opened.sql<{ n: string }[]>`select count(*) as n from drizzle.__drizzle_migrations`;
    return schemaTag('postgres', Number(row?.n ?? 0));
  }

  async importKeys(keys: SnapshotKey[], options: ImportOptions): Promise<ImportOutcome> {
    try {
      return await this.db.transaction(async (tx) => {
        const outcome = await importInto(this.transaction(tx), keys, options);
        if (options.dryRun) throw new RollBack(outcome);
        return outcome;
      });
    } catch (error) {
      if (error instanceof RollBack) return error.result as ImportOutcome;
      throw error;
    }
  }

  exportKeys(since: number): Promise<SnapshotKey[]> {
    return this.snapshot(async (tx) => {
      const keys = await tx.select().from(apiKeys).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id));
      const buckets = await tx
        .select({ keyId: usageBuckets.keyId, limit: usageBuckets.limitName, start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
        .from(usageBuckets)
        // The 5h limit's usage inside the window; each other limit's as pruning left it (export keeps what counts).
        .where(or(and(eq(usageBuckets.limitName, LEGACY), gt(usageBuckets.bucketStart, since)), ne(usageBuckets.limitName, LEGACY)))
        .orderBy(asc(usageBuckets.bucketStart));
      return withBuckets(keys, buckets);
    });
  }

  dump(write: (entry: TableRow) => Promise<void>): Promise<void> {
    return this.snapshot(async (tx) => {
      for (const shape of TABLES.values()) {
        let after: Row | undefined;
        do {
          const rows = await this.page(tx, shape, after);
          for (const row of rows) await write({ table: shape.name, row });
          after = rows.length === PAGE_SIZE ? rows.at(-1) : undefined;
        } while (after);
      }
    });
  }

  async replaceAll(rows: AsyncIterable<TableRow>): Promise<void> {
    await this.db.transaction((tx) => replaceInto(this.transaction(tx), rows));
  }

  async close(): Promise<void> {
    await this.opened.sql.end({ timeout: 5 });
  }

  /** One REPEATABLE READ, read-only transaction: every query in it sees the same snapshot. */
  private snapshot<T>(work: (tx: Tx) => Promise<T>): Promise<T> {
    return this.db.transaction(work, { isolationLevel: 'repeatable read', accessMode: 'read only' });
  }

  /** One page of the table in primary-key order, after the row `after`; bigint columns come back as numbers. */
  private async page(tx: Tx, shape: PostgresShape, after: Row | undefined): Promise<Row[]> {
    const query = tx.select(shape.columns).from(shape.table);
    return (await query.where(after && pastRow(shape, after)).orderBy(...shape.primaryKey).limit(PAGE_SIZE)) as Row[];
  }

  private transaction(tx: Tx): AdminTransaction {
    return {
      keysByDigest: async (digests) => (digests.length === 0 ? [] : tx.select().from(apiKeys).where(inArray(apiKeys.keyHash, digests))),
      insert: async (table, rows) => {
        const { table: into } = TABLES.get(table)!;
        for (let start = 0; start < rows.length; start += PAGE_SIZE) {
          await tx.insert(into).values(rows.slice(start, start + PAGE_SIZE).map((row) => valuesOf(into, row)));
        }
      },
      deleteAll: async () => {
        // Reservations go too: they are in-flight state, and they refer to keys.
        await tx.delete(reservations);
        for (const { table } of [...TABLES.values()].reverse()) await tx.delete(table);
      },
    };
  }
}
