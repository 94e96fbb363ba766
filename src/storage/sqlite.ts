// SQLite storage on better-sqlite3 through Drizzle: synchronous, so each admission is atomic in-process.
import { existsSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { and, asc, eq, gt, sql } from 'drizzle-orm';
import { derivedDigestPrefix } from '../db/random-ids.js';
import { ConflictError, NotFoundError, StorageError } from '../errors.js';
import type { OpenedSqlite } from '../db/sqlite.js';
import { apiKeys, healthProbes, usageBuckets, usageRecords } from '../db/schema/sqlite.js';
import type { Logger } from '../ops/logger.js';
import { GroupCommit } from '../quota/group-commit.js';
import { KeyWindow } from '../quota/key-window.js';
import { ReservationBook } from '../quota/reservations.js';
import { bucketStart, countsAfter } from '../quota/window.js';
import { buildKey, patchChanges } from '../keys/build.js';
import { validateCharge, validatePatch, type KeyPatch, type NewKey } from '../keys/validate.js';
import { KeyCache } from './key-cache.js';
import { Pruner, sqliteTarget, type PruneOptions } from './prune.js';
import { Spill, type ApplyOutcome } from './spill.js';
import type { HeldLock } from './lock-file.js';
import type { Admission, AdmitRequest, CreatedKey, KeyRecord, Reservation, Storage, StorageHealth, UsageRecord, WindowUsage } from './types.js';

/** A key's buckets are read again after this long, to see what other processes (the CLI) wrote. */
const WINDOW_RELOAD_MS = 30_000;
/** Windows of keys not used for this long are dropped from memory. */
const WINDOW_IDLE_MS = 120_000;

interface Mirror {
  window: KeyWindow;
  loadedAt: number;
  usedAt: number;
}

interface Queued {
  record: UsageRecord;
  reservationId: string;
}

/** Thrown by a batch while the database refuses writes: its records go to the journal untried. */
const REFUSING = new StorageError('the SQLite database refuses writes', false);

const keyColumns = {
  id: apiKeys.id,
  keyPrefix: apiKeys.keyPrefix,
  name: apiKeys.name,
  model: apiKeys.model,
  tokenLimit: apiKeys.tokenLimit,
  expiresAt: apiKeys.expiresAt,
  createdAt: apiKeys.createdAt,
  lastUsedAt: apiKeys.lastUsedAt,
  totalLifetimeTokens: apiKeys.totalLifetimeTokens,
  totalRequests: apiKeys.totalRequests,
};

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
const inWindow = and(eq(usageBuckets.keyId, p('keyId')), gt(usageBuckets.bucketStart, p('since')));

/**
 * The embedded store. Reservations live in this process (one gate process per database file;
 * PostgreSQL is the store for several instances), so they vanish with a crashed process.
 *
 * The hot path stays off the disk where it can: keys found by digest are reused for a few seconds,
 * each busy key's window is kept in memory (read once, then moved by what this process records),
 * and the usage recorded within one turn of the event loop is committed in one transaction.
 */
export class SqliteStorage implements Storage {
  readonly backend = 'sqlite';
  private readonly reservations = new ReservationBook();
  private readonly statements;
  private readonly applyRecords;
  private readonly keyCache: KeyCache;
  private readonly mirrors = new Map<string, Mirror>();
  private lastSweep = performance.now();
  private readonly commits: GroupCommit<Queued>;
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
    this.lock = options.lock;
    const { db, sqlite } = opened;
    this.statements = {
      keyByHash: db.select(keyColumns).from(apiKeys).where(eq(apiKeys.keyHash, p('hash'))).prepare(),
      keyById: db.select(keyColumns).from(apiKeys).where(eq(apiKeys.id, p('id'))).prepare(),
      buckets: db
        .select({ start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
        .from(usageBuckets)
        .where(inWindow)
        .orderBy(asc(usageBuckets.bucketStart))
        .prepare(),
      insertRecord: db
        .insert(usageRecords)
        .values({ id: p('id'), keyId: p('keyId'), tokens: p('tokens'), recordedAt: p('at') })
        .onConflictDoNothing()
        .prepare(),
      chargeKey: db
        .update(apiKeys)
        .set({
          totalLifetimeTokens: sql`${apiKeys.totalLifetimeTokens} + ${p('tokens')}`,
          totalRequests: sql`${apiKeys.totalRequests} + 1`,
          lastUsedAt: sql`max(coalesce(${apiKeys.lastUsedAt}, 0), ${p('at')})`,
        })
        .where(eq(apiKeys.id, p('keyId')))
        .prepare(),
      addToBucket: db
        .insert(usageBuckets)
        .values({ keyId: p('keyId'), bucketStart: p('bucket'), tokens: p('tokens') })
        .onConflictDoUpdate({ target: [usageBuckets.keyId, usageBuckets.bucketStart], set: { tokens: sql`${usageBuckets.tokens} + excluded.tokens` } })
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
    // The record id goes in first: when it is already there, the record was applied before.
    this.applyRecords = sqlite.transaction((records: readonly UsageRecord[]): ApplyOutcome[] =>
      records.map((record) => {
        if (this.statements.insertRecord.run({ ...record }).changes === 0) return 'duplicate';
        if (this.statements.chargeKey.run({ ...record }).changes === 0) return 'no-key'; // key deleted meanwhile
        if (record.tokens > 0) this.statements.addToBucket.run({ ...record, bucket: bucketStart(record.at) });
        return 'applied';
      }),
    );
    this.commits = new GroupCommit<Queued>({
      write: (batch, alone) => this.write(batch, alone),
      isolates: (error) => error !== REFUSING && !wholeDatabase(error),
      failed: (queued, error) => this.refused(queued, error),
    });
    this.spill =
      options.journal &&
      new Spill({
        ...options.journal,
        apply: (record) => this.applyRecords([this.underCurrentId(record)])[0]!,
        holds: (id) => this.statements.hasRecord.get({ id }) !== undefined,
      });
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

  /** The key's window in memory, read from the database when absent, stale, or asked about an earlier instant. */
  private mirror(keyId: string, since: number): KeyWindow {
    const at = performance.now();
    if (at - this.lastSweep > WINDOW_IDLE_MS) this.sweep(at);
    const known = this.mirrors.get(keyId);
    if (known && at - known.loadedAt < WINDOW_RELOAD_MS && known.window.usage(since)) {
      known.usedAt = at;
      return known.window;
    }
    const window = new KeyWindow(this.statements.buckets.all({ keyId, since }), since);
    // Usage the database refused is journaled: it counts all the same.
    for (const record of this.spill?.records(keyId) ?? []) if (record.tokens > 0 && bucketStart(record.at) > since) window.add(bucketStart(record.at), record.tokens);
    this.mirrors.set(keyId, { window, loadedAt: at, usedAt: at });
    return window;
  }

  private sweep(at: number): void {
    this.lastSweep = at;
    for (const [keyId, mirror] of this.mirrors) if (at - mirror.usedAt > WINDOW_IDLE_MS) this.mirrors.delete(keyId);
  }

  async admit(request: AdmitRequest): Promise<Admission> {
    if (this.spill?.holding) throw new StorageError('usage can be written neither to the SQLite database nor to its journal: admitting nothing until one of them takes it', true);
    const since = countsAfter(request.now, request.windowMs);
    const window = this.mirror(request.keyId, since);
    return this.reservations.admit(request, window.usage(since)!, () => window.buckets(since)!);
  }

  /** Queues the record for the transaction that commits at the end of this turn of the event loop. */
  async settle(reservation: Reservation, record: UsageRecord): Promise<void> {
    try {
      validateCharge(record.tokens);
    } catch (error) {
      this.reservations.remove(reservation.id);
      throw error;
    }
    await this.commits.add({ record, reservationId: reservation.id });
  }

  /**
   * Commits a batch in one transaction (a failure of one record's sake retries each alone). While the
   * database refuses writes, records go straight to the journal (offered to the database again each
   * second), so that a lock held by another process never stalls the event loop once per batch. A
   * record counts in memory from its commit on, and its reservation goes at that same moment: the
   * tokens are never counted twice nor missing.
   */
  private write(batch: readonly Queued[], alone: boolean): void {
    if (!this.opened.sqlite.open) throw new StorageError('the SQLite store is closed', false);
    if (!alone && this.spill?.state !== undefined && this.spill.state !== 'ok') throw REFUSING;
    const outcomes = this.applyRecords(batch.map((queued) => queued.record));
    this.spill?.databaseWrote();
    batch.forEach((queued, i) => this.counted(queued, outcomes[i] === 'applied'));
  }

  /** A record the database did not take: journaled when the store has a journal, else its settle fails. */
  private refused(queued: Queued, error: unknown): Promise<void> {
    const { spill } = this;
    if (!spill) {
      this.counted(queued, false);
      return Promise.reject(error);
    }
    const { record } = queued;
    const counted = spill.holds(record); // settled again: counted once already
    const journaled = spill.take(record, error === REFUSING ? undefined : error);
    // Counted from now on, like a committed record: the journal (or memory) holds it for the database.
    this.counted(queued, !counted);
    return journaled.catch((failed: unknown) => {
      throw new StorageError(`usage record ${record.id} is held in memory: the SQLite database and its journal both refuse it (${(failed as Error).message})`, true, { cause: failed });
    });
  }

  /** The record counts in the key's window (when `applied`) and its reservation goes, in the same step. */
  private counted(queued: Queued, applied: boolean): void {
    const { record } = queued;
    if (applied && record.tokens > 0) this.mirrors.get(record.keyId)?.window.add(bucketStart(record.at), record.tokens);
    this.reservations.remove(queued.reservationId);
  }

  async release(reservation: Reservation): Promise<void> {
    this.reservations.remove(reservation.id);
  }

  async windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage> {
    const since = countsAfter(now, windowMs);
    const { used, oldestBucketStart } = this.mirror(keyId, since).usage(since)!;
    return { used, reserved: this.reservations.held(keyId).reserved, oldestBucketStart };
  }

  async createKey(input: NewKey, now = Date.now()): Promise<CreatedKey> {
    const { record, key, keyHash } = buildKey(input, now);
    try {
      this.opened.db.insert(apiKeys).values({ ...record, keyHash }).run();
    } catch (error) {
      if ((error as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') throw new ConflictError('a key with this value already exists');
      throw error;
    }
    return { record, key };
  }

  async listKeys(): Promise<KeyRecord[]> {
    return this.opened.db.select(keyColumns).from(apiKeys).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id)).all();
  }

  async getKey(id: string): Promise<KeyRecord | undefined> {
    return this.statements.keyById.get({ id });
  }

  async updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    const changes = patchChanges(validatePatch(patch));
    const updated =
      Object.keys(changes).length === 0
        ? this.statements.keyById.get({ id })
        : this.opened.db.update(apiKeys).set(changes).where(eq(apiKeys.id, id)).returning(keyColumns).get();
    this.keyCache.forget(id);
    if (!updated) throw new NotFoundError(`no key with id ${id}`);
    return updated;
  }

  async deleteKey(id: string): Promise<boolean> {
    this.keyCache.forget(id);
    this.mirrors.delete(id);
    return this.opened.db.delete(apiKeys).where(eq(apiKeys.id, id)).run().changes > 0;
  }

  /** Commits what is queued, then closes the database and lets another gate have it. */
  async close(): Promise<void> {
    try {
      await this.pruner?.stop();
      await this.commits.drain();
      await this.spill?.close();
      if (this.opened.sqlite.open) this.opened.sqlite.close();
    } finally {
      this.lock?.release();
    }
  }
}
