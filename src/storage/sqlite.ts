// SQLite storage on better-sqlite3 through Drizzle: synchronous, so each admission is atomic in-process.
import { existsSync } from 'node:fs';
import type { Statement } from 'better-sqlite3';
import { and, asc, eq, gt, is, Param, Placeholder, sql } from 'drizzle-orm';
import { derivedDigestPrefix } from '../db/random-ids.js';
import { StorageError } from '../errors.js';
import type { OpenedSqlite } from '../db/sqlite.js';
import { apiKeys, healthProbes, keyColumns, usageBuckets, usageRecords } from '../db/schema/sqlite.js';
import type { Logger } from '../types.js';
import type { Bucket } from '../quota/window.js';
import { LocalQuota, type ApplyOutcome } from '../quota/local-quota.js';
import { bucketsOf } from '../quota/limits.js';
import type { KeyPatch, NewKey } from '../keys/validate.js';
import { KeyCache } from './key-cache.js';
import { Pruner, sqliteTarget, type PruneOptions } from './prune.js';
import { Spill } from './spill.js';
import type { HeldLock } from './lock-file.js';
import { SqliteKeys } from './sqlite-keys.js';
import type { Admission, AdmitRequest, CreatedKey, KeyRecord, Limit, LimitWindow, Reservation, Storage, StorageHealth, UsageRecord, WindowUsage } from './types.js';

/** Failures of the database as a whole (full, locked, corrupt, read-only, I/O), not of one record. */
const WHOLE_DATABASE = /^SQLITE_(BUSY|LOCKED|FULL|CORRUPT|NOTADB|IOERR|READONLY|CANTOPEN|PROTOCOL)/;

function wholeDatabase(error: unknown): boolean {
  return WHOLE_DATABASE.test(String((error as { code?: unknown }).code ?? ''));
}

export interface SqliteStorageOptions {
  keyCacheTtlMs?: number;
  prune?: PruneOptions;
  /** The gate's hold on the file, released by close(). */
  lock?: HeldLock;
  /**
   * The directory whose journal takes the usage the database refuses (replayed into it each second).
   * Without one (the CLI's stores), a refused record fails its settle().
   */
  journal?: { dir: string; logger: Logger; retryMs?: number };
}

const p = sql.placeholder;

/**
 * A Drizzle query (its SQL built from the schema) as a better-sqlite3 statement that takes its
 * placeholders positionally, in the order `names` gives (checked here, once): the writes of every
 * record skip Drizzle's mapping of named placeholders on each run.
 */
function positional(sqlite: OpenedSqlite['sqlite'], query: { toSQL(): { sql: string; params: unknown[] } }, names: readonly string[]): Statement {
  const { sql: text, params } = query.toSQL();
  const order = params.map((param) => {
    const value = is(param, Param) ? param.value : param;
    if (!is(value, Placeholder)) throw new Error(`a positional statement takes placeholders only: ${text}`);
    return value.name;
  });
  if (order.join() !== names.join()) throw new Error(`the statement takes ${order.join(', ')}, not ${names.join(', ')}: ${text}`);
  return sqlite.prepare(text);
}
const inWindow = and(eq(usageBuckets.keyId, p('keyId')), eq(usageBuckets.limitName, p('limit')), gt(usageBuckets.bucketStart, p('since')));

/**
 * The embedded store. Reservations live in this process (one gate process per database file;
 * PostgreSQL is the store for several instances), so they vanish with a crashed process.
 *
 * The hot path stays off the disk where it can: keys found by digest are reused for a few seconds,
 * and the quota engine (LocalQuota) keeps each busy key's window in memory and commits the usage
 * recorded within one turn of the event loop in one transaction; this class is its adapter.
 */
export class SqliteStorage implements Storage {
  readonly backend = 'sqlite';
  private readonly quota: LocalQuota;
  private readonly statements;
  private readonly applyRecords;
  private readonly keyCache: KeyCache;
  private readonly keys: SqliteKeys;
  /** Prunes old usage in the background, when the store was opened with `prune`. */
  readonly pruner: Pruner | undefined;
  /** Holds the usage the database refuses, when the store was opened with `journal`. */
  private readonly spill: Spill | undefined;
  private readonly lock: HeldLock | undefined;

  /** `lock`: the gate's hold on the file, released by close(). */
  constructor(
    private readonly opened: OpenedSqlite,
    options: SqliteStorageOptions = {},
  ) {
    this.keyCache = new KeyCache(options.keyCacheTtlMs);
    this.keys = new SqliteKeys(opened.db, (id) => {
      this.keyCache.forget(id);
      this.quota.forget(id);
    });
    this.lock = options.lock;
    const { db, sqlite } = opened;
    this.statements = {
      keyByHash: db.select(keyColumns).from(apiKeys).where(eq(apiKeys.keyHash, p('hash'))).prepare(),
      buckets: db
        .select({ start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
        .from(usageBuckets)
        .where(inWindow)
        .orderBy(asc(usageBuckets.bucketStart))
        .prepare(),
      hasRecord: db.select({ id: usageRecords.id }).from(usageRecords).where(eq(usageRecords.id, p('id'))).prepare(),
      keyExists: db.select({ id: apiKeys.id }).from(apiKeys).where(eq(apiKeys.id, p('keyId'))).prepare(),
      keyByDigestPrefix: db
        .select({ id: apiKeys.id })
        .from(apiKeys)
        .where(sql`substr(${apiKeys.keyHash}, 1, 16) = ${p('prefix')}`)
        .prepare(),
      probe: db
        .insert(healthProbes)
        .values({ id: 'gate', at: p('at') })
        .onConflictDoUpdate({ target: healthProbes.id, set: { at: sql`excluded.at` } })
        .prepare(),
    };
    const insertRecord = positional(
      sqlite,
      db.insert(usageRecords).values({ id: p('id'), keyId: p('keyId'), tokens: p('tokens'), recordedAt: p('at') }).onConflictDoNothing(),
      ['id', 'keyId', 'tokens', 'at'],
    );
    const chargeKey = positional(
      sqlite,
      db
        .update(apiKeys)
        .set({
          totalLifetimeTokens: sql`${apiKeys.totalLifetimeTokens} + ${p('tokens')}`,
          totalRequests: sql`${apiKeys.totalRequests} + 1`,
          lastUsedAt: sql`max(coalesce(${apiKeys.lastUsedAt}, 0), ${p('at')})`,
        })
        .where(eq(apiKeys.id, p('keyId'))),
      ['at', 'tokens', 'keyId'],
    );
    const addToBucket = positional(
      sqlite,
      db
        .insert(usageBuckets)
        .values({ keyId: p('keyId'), limitName: p('limit'), bucketStart: p('bucket'), tokens: p('tokens') })
        .onConflictDoUpdate({ target: [usageBuckets.keyId, usageBuckets.limitName, usageBuckets.bucketStart], set: { tokens: sql`${usageBuckets.tokens} + excluded.tokens` } }),
      ['keyId', 'limit', 'bucket', 'tokens'],
    );
    // The record id goes in first: when it is already there, the record was applied before.
    this.applyRecords = sqlite.transaction((records: readonly UsageRecord[]): ApplyOutcome[] =>
      records.map((record) => {
        const { id, keyId, tokens, at } = record;
        if (insertRecord.run(id, keyId, tokens, at).changes === 0) return 'duplicate';
        if (chargeKey.run(at, tokens, keyId).changes === 0) return 'no-key'; // key deleted meanwhile
        if (tokens > 0) for (const [limit, bucket] of bucketsOf(record)) addToBucket.run(keyId, limit, bucket, tokens);
        return 'applied';
      }),
    );
    this.spill =
      options.journal &&
      new Spill({
        ...options.journal,
        apply: (record) => this.applyRecords([this.underCurrentId(record)])[0]!,
        holds: (id) => this.statements.hasRecord.get({ id }) !== undefined,
      });
    this.quota = new LocalQuota(
      {
        buckets: (keyId, limit, since) => this.statements.buckets.all({ keyId, limit, since }),
        commit: (records) => this.applyRecords(records),
        wholeStore: wholeDatabase,
        ready: () => {
          if (!opened.sqlite.open) throw new StorageError('the SQLite store is closed', false);
        },
      },
      { name: 'the SQLite database', ...(this.spill ? { overflow: this.spill } : {}) },
    );
    this.pruner = options.prune && new Pruner(sqliteTarget(opened.sqlite), options.prune).start();
  }

  /**
   * A journaled record as the database knows its key now: one journaled under an id derived from
   * the key's digest, before such ids were made random, goes to the key that digest names.
   */
  private underCurrentId(record: UsageRecord): UsageRecord {
    const prefix = derivedDigestPrefix(record.keyId);
    if (prefix === undefined || this.statements.keyExists.get({ keyId: record.keyId }) !== undefined) return record;
    const renamed = this.statements.keyByDigestPrefix.get({ prefix });
    return renamed ? { ...record, keyId: renamed.id } : record;
  }

  /**
   * Reads, then writes a probe row: a database that answers reads but refuses writes (full, locked,
   * corrupt) has its usage journaled, and health says so. Also fails when the file was removed under
   * the open connection: what is written then is lost at restart.
   */
  async ping(): Promise<void> {
    this.opened.sqlite.prepare('select 1').get();
    if (!existsSync(this.opened.path)) throw new StorageError(`the SQLite database file ${this.opened.path} was removed`, false);
    try {
      this.statements.probe.run({ at: Date.now() });
      this.spill?.databaseWrote();
    } catch (error) {
      if (!this.spill) throw new StorageError(`the SQLite database ${this.opened.path} refuses writes: ${(error as Error).message}`, false, { cause: error });
      this.spill.databaseRefused();
    }
  }

  health(): StorageHealth {
    const spill = this.spill;
    return {
      mode: 'primary',
      recording: spill?.state ?? 'ok',
      journalPendingRecords: spill?.pendingRecords ?? 0,
      quarantinedFiles: spill?.quarantinedFiles ?? [],
      recordingFailures: spill?.recordingFailures ?? { database: 0, journal: 0 },
      lastFailure: null,
      lastReplay: null,
    };
  }

  findKeyByDigest(digest: string): Promise<KeyRecord | undefined> {
    return this.keyCache.find(digest, async (hash) => this.statements.keyByHash.get({ hash }));
  }

  async admit(request: AdmitRequest): Promise<Admission> {
    return this.quota.admit(request);
  }

  /** Queues the record for the transaction that commits at the end of this turn of the event loop (the journal takes what the database refuses). */
  settle(reservation: Reservation, record: UsageRecord): Promise<void> {
    return this.quota.settle(reservation, record);
  }

  async release(reservation: Reservation): Promise<void> {
    this.quota.release(reservation);
  }

  async windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage> {
    return this.quota.windowUsage(keyId, now, windowMs);
  }

  async limitsUsage(keyId: string, limits: readonly Limit[], now: number): Promise<LimitWindow[]> {
    return this.quota.limitsUsage(keyId, limits, now);
  }

  async usageBuckets(keyId: string, limit: Limit, now: number): Promise<Bucket[]> {
    return this.quota.usageBuckets(keyId, limit, now);
  }

  createKey(input: NewKey, now?: number): Promise<CreatedKey> {
    return this.keys.createKey(input, now);
  }

  listKeys(): Promise<KeyRecord[]> {
    return this.keys.listKeys();
  }

  getKey(id: string): Promise<KeyRecord | undefined> {
    return this.keys.getKey(id);
  }

  updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    return this.keys.updateKey(id, patch);
  }

  deleteKey(id: string): Promise<boolean> {
    return this.keys.deleteKey(id);
  }

  /** Commits what is queued, then closes the database and lets another gate have it. */
  async close(): Promise<void> {
    try {
      await this.pruner?.stop();
      await this.quota.drain();
      await this.spill?.close();
      if (this.opened.sqlite.open) this.opened.sqlite.close();
    } finally {
      this.lock?.release();
    }
  }
}
