// Pruning: deletes usage record ids past their retention and buckets no window counts any more, in small batches.
import { setImmediate as nextTurn } from 'node:timers/promises';
import type Database from 'better-sqlite3';
import type postgres from 'postgres';
import type { Logger } from '../types.js';
import { BUCKET_MS } from '../quota/window.js';
import { bucketMs, LEGACY, MAX_WINDOW_MS } from '../quota/limits.js';
import { parseStoredLimits } from '../keys/limits.js';

/** How long a usage record's id is kept by default: a journal written during a week-long outage still replays exactly once. */
export const DEFAULT_RECORD_RETENTION_MS = 7 * 24 * 60 * 60_000;
/** How often a store prunes in the background. */
export const PRUNE_INTERVAL_MS = 60_000;
/**
 * Rows one statement deletes at most. On SQLite a batch blocks the event loop (better-sqlite3 is
 * synchronous) and holds the write lock a gate or the CLI may be waiting for: about 1-2 ms here.
 */
const BATCH_ROWS = { sqlite: 1000, postgres: 5000 } as const;

/** What one pass deleted. */
export interface PruneCounts {
  usageRecords: number;
  usageBuckets: number;
  /** PostgreSQL only: reservations past their expiry. */
  reservations?: number;
}

export interface PruneOptions {
  /** Usage record ids older than this are deleted. */
  recordRetentionMs: number;
  /** The longest window a gate on this store uses: buckets that left it (and one more bucket) are deleted. */
  windowMs: number;
  /** The clock ages are measured with (tests move it). Default: Date.now. */
  now?: () => number;
  /** Where a failed background pass is reported. */
  logger?: Logger;
}

/** One table's deletion: removes at most `limit` rows older than `before`, returns how many it removed. */
type DeleteBatch = (before: number, limit: number) => number | Promise<number>;

interface Target {
  dialect: 'sqlite' | 'postgres';
  records: DeleteBatch;
  /** Buckets of one limit (by name); of every limit when `limit` is undefined. */
  buckets: (limit: string | undefined) => DeleteBatch;
  /** The `limits` column of every key that has limits of its own. */
  keyLimits: () => string[] | Promise<string[]>;
  reservations?: DeleteBatch;
}

/**
 * The statements for SQLite. Each runs on its own (an implicit transaction per statement), picking
 * its rows through the pruning indexes; SQLite's DELETE takes no LIMIT unless compiled for it.
 */
export function sqliteTarget(sqlite: Database.Database): Target {
  const batch = (table: string, column: string, op: '<' | '<=') => {
    const statement = sqlite.prepare(`delete from ${table} where rowid in (select rowid from ${table} where ${column} ${op} ? limit ?)`);
    return (before: number, limit: number) => statement.run(before, limit).changes;
  };
  const everyLimit = batch('usage_buckets', 'bucket_start', '<=');
  const oneLimit = sqlite.prepare('delete from usage_buckets where rowid in (select rowid from usage_buckets where limit_name = ? and bucket_start <= ? limit ?)');
  const keyLimits = sqlite.prepare('select limits from api_keys where limits is not null').pluck();
  return {
    dialect: 'sqlite',
    records: batch('usage_records', 'recorded_at', '<'),
    buckets: (name) => (name === undefined ? everyLimit : (before, limit) => oneLimit.run(name, before, limit).changes),
    keyLimits: () => keyLimits.all() as string[],
  };
}

/**
 * The statements for PostgreSQL: rows picked by ctid, skipping those another instance's pass has
 * locked, so that several instances prune side by side without waiting on each other.
 */
export function postgresTarget(sql: postgres.Sql): Target {
  const batch = (table: string, column: string, op: '<' | '<=') => async (before: number, limit: number) =>
    (await sql.unsafe(`delete from ${table} where ctid = any(array(select ctid from ${table} where ${column} ${op} $1 limit $2 for update skip locked))`, [before, limit])).count;
  const everyLimit = batch('usage_buckets', 'bucket_start', '<=');
  const oneLimit = (name: string) => async (before: number, limit: number) =>
    (await sql.unsafe('delete from usage_buckets where ctid = any(array(select ctid from usage_buckets where limit_name = $1 and bucket_start <= $2 limit $3 for update skip locked))', [name, before, limit])).count;
  return {
    dialect: 'postgres',
    records: batch('usage_records', 'recorded_at', '<'),
    buckets: (name) => (name === undefined ? everyLimit : oneLimit(name)),
    keyLimits: async () => (await sql<{ limits: string }[]>`select limits from api_keys where limits is not null`).map((row) => row.limits),
    reservations: batch('reservations', 'expires_at', '<='),
  };
}

/**
 * Keeps a store's usage tables bounded. A pass deletes, table by table, batch after batch until one
 * comes back short, yielding to the event loop between batches; each batch is its own short
 * transaction. Nothing it deletes can change a decision:
 * - a record id older than the retention (a replay of it could only come from an older journal);
 * - a bucket whose start plus the longest window lies a whole bucket in the past (it stopped
 *   counting a minute ago; the spare bucket covers clocks of instances that disagree a little);
 * - a reservation that expired a bucket's length ago (no instance counts it any more).
 */
export class Pruner {
  private readonly now: () => number;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<PruneCounts> | undefined;
  private stopped = false;

  constructor(
    private readonly target: Target,
    private readonly options: PruneOptions,
  ) {
    this.now = options.now ?? Date.now;
  }

  /** Prunes every `intervalMs` in the background (the timer keeps no process alive), the first time after one interval. */
  start(intervalMs = PRUNE_INTERVAL_MS): this {
    this.timer ??= setInterval(() => {
      if (this.running) return;
      this.run().catch((error: unknown) => this.options.logger?.warn({ err: error, backend: this.target.dialect }, 'pruning old usage failed; trying again later'));
    }, intervalMs).unref();
    return this;
  }

  /** Stops the timer and waits for a pass under way, which ends after its current batch. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.running?.catch(() => undefined);
  }

  /** One pass over every table; a second call while one runs waits for it and returns its counts. */
  run(): Promise<PruneCounts> {
    this.running ??= this.pass().finally(() => (this.running = undefined));
    return this.running;
  }

  private async pass(): Promise<PruneCounts> {
    const now = this.now();
    const { recordRetentionMs, windowMs } = this.options;
    const counts: PruneCounts = {
      usageRecords: await this.drain(this.target.records, now - recordRetentionMs),
      usageBuckets: await this.pruneBuckets(now, windowMs),
    };
    if (this.target.reservations) counts.reservations = await this.drain(this.target.reservations, now - BUCKET_MS);
    return counts;
  }

  /**
   * Each limit's buckets once they left its window: the `5h` limit's (every key without limits of
   * its own) after the store's window, each other name's after the longest window a key gives it,
   * and any name's (limits since removed) after the longest window there can be.
   */
  private async pruneBuckets(now: number, windowMs: number): Promise<number> {
    const windows = new Map<string, number>([[LEGACY, windowMs]]);
    for (const text of await this.target.keyLimits()) {
      for (const limit of parseStoredLimits(text)) windows.set(limit.name, Math.max(windows.get(limit.name) ?? 0, limit.windowMs));
    }
    let deleted = await this.drain(this.target.buckets(undefined), now - MAX_WINDOW_MS - BUCKET_MS);
    for (const [name, window] of windows) deleted += await this.drain(this.target.buckets(name), now - window - Math.max(BUCKET_MS, bucketMs(window)));
    return deleted;
  }

  private async drain(batch: DeleteBatch, before: number): Promise<number> {
    const limit = BATCH_ROWS[this.target.dialect];
    let total = 0;
    while (!this.stopped) {
      const deleted = await batch(before, limit);
      total += deleted;
      if (deleted < limit) break;
      await nextTurn();
    }
    return total;
  }
}
