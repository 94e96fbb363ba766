// File storage: keys in an atomically replaced snapshot, usage in an fsynced append-only journal.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, ConflictError, NotFoundError, StorageError } from '../errors.js';
import type { Limit, LimitWindow, Logger } from '../types.js';
import { bucketsOf, LEGACY, meterOf, withLimitBuckets } from '../quota/limits.js';
import { ReservationBook, type LimitWindows } from '../quota/reservations.js';
import { countsAfter, DEFAULT_WINDOW_MS, type Bucket } from '../quota/window.js';
import { buildKey, patchChanges } from '../keys/build.js';
import { limitsOf } from '../keys/limits.js';
import { isDerivedId, logRenamed } from '../db/random-ids.js';
import { generateKeyId } from '../keys/secret.js';
import { validateCharge, validatePatch, type KeyPatch, type NewKey } from '../keys/validate.js';
import { lockDirectory } from './dir-lock.js';
import { Journal, type ReplayOutcome } from './journal.js';
import { readSnapshot, setAsideSnapshot, SnapshotError, writeSnapshot, type SnapshotKey } from './snapshot.js';
import type { Admission, AdmitRequest, CreatedKey, KeyRecord, MirrorStorage, Reservation, StorageHealth, UsageRecord, WindowUsage } from './types.js';

interface MemKey extends KeyRecord {
  keyHash: string;
  /** Tokens by bucket start, by limit name (`5h` alone for a key without limits of its own). */
  buckets: Map<string, Map<number, number>>;
}

export interface FileStorageOptions {
  dir: string;
  /**
   * `standalone`: the file store is the store (STORAGE=file); journals are folded into the snapshot.
   * `fallback`: it mirrors a database; its journal holds usage for the database, replayed later.
   */
  role: 'standalone' | 'fallback';
  logger: Logger;
  /**
   * The window of keys without limits of their own: their buckets older than it are dropped from
   * snapshots (those of a key's own limits, by each limit's window). Default: 5 hours.
   */
  windowMs?: number;
  /** Standalone only: keys to start with when there is no snapshot yet (from the old JSON key file). */
  initialKeys?: () => SnapshotKey[];
}

const COMPACT_EVERY_MS = 60_000;

const toRecord = ({ keyHash: _hash, buckets: _buckets, ...record }: MemKey): KeyRecord => record;

/** A snapshot's key in memory: the `5h` limit's buckets and each other limit's, by name. */
function memKey({ buckets, limitBuckets, ...key }: SnapshotKey): MemKey {
  const byLimit = new Map([[LEGACY, new Map(buckets)]]);
  for (const [name, pairs] of Object.entries(limitBuckets ?? {})) byLimit.set(name, new Map(pairs));
  return { ...key, buckets: byLimit };
}

export class FileStorage implements MirrorStorage {
  readonly backend = 'file';
  private keys = new Map<string, MemKey>();
  private byDigest = new Map<string, MemKey>();
  private readonly reservations = new ReservationBook();
  /** Ids of records applied in memory since the last snapshot, so that none is counted twice. */
  private applied = new Set<string>();
  /** Ids of records counted in memory whose journal append failed: appended again when settled again. */
  private readonly unjournaled = new Set<string>();
  private journal!: Journal;
  /** Standalone: records counted in memory that neither the journal nor a snapshot holds yet. */
  private unwritten = 0;
  private retrying: NodeJS.Timeout | undefined;
  private readonly failures = { database: 0, journal: 0 };
  private readonly windowMs: number;
  private compactor: NodeJS.Timeout | undefined;
  private readonly releaseLock: () => void;

  private constructor(private readonly options: FileStorageOptions) {
    const { dir } = options;
    this.windowMs = options.windowMs ?? DEFAULT_WINDOW_MS;
    mkdirSync(dir, { recursive: true });
    const lock = lockDirectory(dir, options.logger);
    this.releaseLock = () => lock.release();
    try {
      this.load();
    } catch (error) {
      this.releaseLock();
      throw error;
    }
  }

  static open(options: FileStorageOptions): FileStorage {
    return new FileStorage(options);
  }

  /** Reads the snapshot and the journal files after it into memory. */
  private load(): void {
    const { dir, role, logger } = this.options;
    let snapshot;
    try {
      snapshot = readSnapshot(dir);
    } catch (error) {
      if (!(error instanceof SnapshotError)) throw error;
      if (role === 'standalone') throw new ConfigError(`the file store cannot start: ${error.message}; it was left untouched`, { cause: error });
      const aside = setAsideSnapshot(dir, Date.now());
      logger.error({ err: error, movedTo: aside }, 'fallback snapshot unreadable: set aside, a new one comes from the database');
    }
    const keys = snapshot?.keys ?? (role === 'standalone' ? this.options.initialKeys?.() : undefined) ?? [];
    for (const key of keys) this.putKey(memKey(key));
    // Standalone, the snapshot is the store: it replaces ids derived from digests itself (a fallback's
    // mirror takes the database's ids at its next refresh, and its journal follows them on replay).
    const renamed = role === 'standalone' ? this.randomizeDerivedIds() : new Map<string, string>();
    const folded = snapshot?.journalGeneration ?? 0;
    this.journal = Journal.open(dir, folded, logger);
    for (const generation of Journal.generations(dir)) {
      if (generation <= folded) {
        // Already in the snapshot: a crash came between writing it and deleting this.
        this.journal.discardFolded(generation).catch((error: unknown) => logger.error({ err: error, generation }, 'removing a journal file the snapshot already holds failed; tried again at the next start'));
        continue;
      }
      for (const record of this.journal.load(generation)) this.apply({ ...record, keyId: renamed.get(record.keyId) ?? record.keyId });
    }
    // The new ids hold from here on: the snapshot written now folds the journal read under the old ones.
    if (role === 'standalone' && ((!snapshot && keys.length > 0) || renamed.size > 0)) this.persistNow();
    logRenamed(logger, 'file', renamed.size);
    // Standalone, the journal is folded into the snapshot now and then, so neither grows for ever.
    if (role === 'standalone') this.compactor = setInterval(() => void this.persist().catch((error: unknown) => logger.error({ err: error }, 'folding the journal into the snapshot failed')), COMPACT_EVERY_MS).unref();
  }

  async ping(): Promise<void> {}

  health(): StorageHealth {
    return {
      mode: 'primary',
      recording: this.unwritten > 0 ? 'failing' : 'ok',
      journalPendingRecords: this.journalLength,
      quarantinedFiles: this.quarantinedFiles,
      recordingFailures: { ...this.failures },
      lastFailure: null,
      lastReplay: null,
    };
  }

  /** Records on disk in the journal, not yet replayed or folded. */
  get journalLength(): number {
    return this.journal.pendingRecords;
  }

  /** Whether the journal holds records the database lacks, on disk or on their way there. */
  get journalHoldsRecords(): boolean {
    return this.journal.holdsRecords;
  }

  /** Journal files set aside because a line could not be trusted or a record was refused on replay. */
  get quarantinedFiles(): string[] {
    return this.journal.quarantinedFiles.map((name) => join(this.options.dir, name));
  }

  async findKeyByDigest(digest: string): Promise<KeyRecord | undefined> {
    const key = this.byDigest.get(digest);
    return key && toRecord(key);
  }

  async admit(request: AdmitRequest): Promise<Admission> {
    if (this.unwritten > 0) throw new StorageError(`usage cannot be written to ${this.options.dir}: admitting nothing until a write succeeds`, true);
    const { keyId, now, windowMs, limits } = request;
    if (limits) return this.reservations.admitAll(request, limits, this.windows);
    const window = this.reading(keyId, LEGACY, countsAfter(now, windowMs));
    return this.reservations.admit(request, window, window.buckets);
  }

  /**
   * Applies the record in memory (once) and appends it to the journal; resolves once it is on disk.
   * Settling a record again appends it again (the journal refused it before): replays are idempotent.
   * Standalone, a record the journal refuses stays in memory until a snapshot holds it, and nothing is
   * admitted meanwhile.
   */
  async settle(reservation: Reservation, usage: UsageRecord): Promise<void> {
    this.reservations.release(reservation);
    validateCharge(usage.tokens);
    // It counts against each limit its request was admitted on, here or (in fallback) by the database.
    const record = withLimitBuckets(usage, reservation);
    const fresh = this.apply(record);
    if (!fresh && !this.unjournaled.has(record.id)) return;
    try {
      await this.journal.append(record);
      this.unjournaled.delete(record.id);
    } catch (error) {
      this.failures.journal++;
      this.unjournaled.add(record.id);
      if (this.options.role === 'standalone' && fresh) this.holdUnwritten();
      throw new StorageError(`the journal in ${this.options.dir} cannot take usage record ${record.id}: ${(error as Error).message}`, false, { cause: error });
    }
  }

  /** Standalone: retries a snapshot (which holds every record in memory) each second until one is written. */
  private holdUnwritten(): void {
    this.unwritten++;
    this.retrying ??= setInterval(() => {
      // Only what the snapshot holds is written: a record refused while it is written waits for the next one.
      const held = this.unwritten;
      this.persist().then(
        () => {
          this.unwritten -= held;
          if (this.unwritten > 0) return;
          clearInterval(this.retrying);
          this.retrying = undefined;
        },
        () => undefined,
      );
    }, 1000).unref();
  }

  async release(reservation: Reservation): Promise<void> {
    this.reservations.release(reservation);
  }

  /** Counts a record the database has already taken (fallback role keeps its mirror current). */
  observe(record: UsageRecord): void {
    this.apply(record);
  }

  async windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage> {
    return this.limitWindow(keyId, LEGACY, now, windowMs);
  }

  async usageBuckets(keyId: string, limit: Limit, now: number): Promise<Bucket[]> {
    return [...this.reading(keyId, limit.name, countsAfter(now, limit.windowMs)).buckets()];
  }

  /** Each limit's window, for /stats. */
  async limitsUsage(keyId: string, limits: readonly Limit[], now: number): Promise<LimitWindow[]> {
    return limits.map((limit) => ({ limit, ...this.limitWindow(keyId, limit.name, now, limit.windowMs) }));
  }

  async createKey(input: NewKey, now = Date.now()): Promise<CreatedKey> {
    this.standaloneOnly();
    const { record, key, keyHash } = buildKey(input, now);
    if (this.byDigest.has(keyHash)) throw new ConflictError('a key with this value already exists');
    this.putKey({ ...record, keyHash, buckets: new Map() });
    await this.persist();
    return { record, key };
  }

  async listKeys(): Promise<KeyRecord[]> {
    return [...this.keys.values()].map(toRecord).sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
  }

  async getKey(id: string): Promise<KeyRecord | undefined> {
    const key = this.keys.get(id);
    return key && toRecord(key);
  }

  async updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    this.standaloneOnly();
    const key = this.keys.get(id);
    if (!key) throw new NotFoundError(`no key with id ${id}`);
    const changes = patchChanges(validatePatch(patch), key.limits);
    Object.assign(key, changes);
    await this.persist();
    return toRecord(key);
  }

  async deleteKey(id: string): Promise<boolean> {
    this.standaloneOnly();
    const key = this.keys.get(id);
    if (!key) return false;
    this.keys.delete(id);
    this.byDigest.delete(key.keyHash);
    await this.persist();
    return true;
  }

  /**
   * Fallback role: replays every finished journal generation through `apply` (the database's
   * idempotent recording), deleting each file once all its records are in. A replay cut short is
   * simply run again: records already applied are no-ops there. Returns the records replayed.
   */
  replay(apply: (record: UsageRecord) => Promise<ReplayOutcome>): Promise<number> {
    return this.journal.replay(apply);
  }

  /** Fallback role: replaces the mirror with the database's keys and windows, and writes the snapshot. */
  refresh(keys: SnapshotKey[]): void {
    if (this.journal.holdsRecords) return; // the database lacks those records yet: keep counting them here
    this.keys = new Map();
    this.byDigest = new Map();
    this.applied = new Set();
    for (const key of keys) this.putKey(memKey(key));
    this.persistNow();
  }

  /**
   * Fallback role: writes the mirror as the snapshot now, while the journal is empty, so that a gate
   * restarted during the outage that follows still counts the usage recorded before it (the periodic
   * refresh may be up to its interval behind).
   */
  persistMirror(): void {
    if (!this.journal.holdsRecords) this.persistNow();
  }

  async close(): Promise<void> {
    clearInterval(this.compactor);
    clearInterval(this.retrying);
    try {
      if (this.options.role === 'standalone') await this.persist();
      await this.journal.close();
    } finally {
      this.releaseLock();
    }
  }

  private standaloneOnly(): void {
    if (this.options.role === 'fallback') throw new StorageError('key changes need the database, which is unreachable; try again when it is back', true);
  }

  /** Gives each key whose id an earlier version derived from its digest a random one; returns old id → new id. */
  private randomizeDerivedIds(): Map<string, string> {
    const renamed = new Map<string, string>();
    for (const key of [...this.keys.values()]) {
      if (!isDerivedId(key.id, key.keyHash)) continue;
      const moved = { ...key, id: generateKeyId() };
      this.keys.delete(key.id);
      this.putKey(moved);
      renamed.set(key.id, moved.id);
    }
    return renamed;
  }

  private putKey(key: MemKey): void {
    this.keys.set(key.id, key);
    this.byDigest.set(key.keyHash, key);
  }

  /** Counts a record in memory once; false when it was counted already. */
  private apply(record: UsageRecord): boolean {
    if (this.applied.has(record.id)) return false;
    this.applied.add(record.id);
    const key = this.keys.get(record.keyId);
    if (!key) return true;
    key.totalLifetimeTokens += record.tokens;
    key.totalRequests += 1;
    key.lastUsedAt = Math.max(key.lastUsedAt ?? 0, record.at);
    if (record.tokens === 0) return true;
    for (const [limit, start] of bucketsOf(record)) {
      let buckets = key.buckets.get(limit);
      if (!buckets) key.buckets.set(limit, (buckets = new Map()));
      buckets.set(start, (buckets.get(start) ?? 0) + record.tokens);
    }
    return true;
  }

  /** Each limit's window, read from memory: what admission on several limits decides from. */
  private readonly windows: LimitWindows = {
    usage: (keyId, limit, since) => this.reading(keyId, limit, since),
    buckets: (keyId, limit, since) => this.reading(keyId, limit, since).buckets(),
  };

  /** One limit's window of a key: the tokens of its buckets that start after `since`, and (for a Retry-After) those buckets. */
  private reading(keyId: string, limit: string, since: number): { used: number; oldestBucketStart: number | undefined; buckets(): Bucket[] } {
    const buckets = this.keys.get(keyId)?.buckets.get(limit) ?? [];
    let used = 0;
    let oldest: number | undefined;
    for (const [start, tokens] of buckets) {
      if (start <= since) continue;
      used += tokens;
      if (oldest === undefined || start < oldest) oldest = start;
    }
    const counting = () =>
      [...buckets]
        .filter(([start]) => start > since)
        .sort((a, b) => a[0] - b[0])
        .map(([start, tokens]) => ({ start, tokens }));
    return { used, oldestBucketStart: oldest, buckets: counting };
  }

  /** One limit's window of a key at `now`: what is recorded in it, and what requests in flight hold against it. */
  private limitWindow(keyId: string, limit: string, now: number, windowMs: number): WindowUsage {
    const { used, oldestBucketStart } = this.reading(keyId, limit, countsAfter(now, windowMs));
    return { used, reserved: this.reservations.held(meterOf(keyId, limit)).reserved, oldestBucketStart };
  }

  /** Standalone: folds the journal so far into a new snapshot, then drops the folded files. */
  private async persist(): Promise<void> {
    const folded = this.persistNow();
    await this.journal.drain();
    for (const generation of this.journal.pendingGenerations.filter((g) => g <= folded)) await this.journal.done(generation);
  }

  /**
   * Writes memory as the snapshot, rotating the journal in the same tick so that the snapshot holds
   * exactly the generations up to the returned one.
   */
  private persistNow(): number {
    const folded = this.journal.rotate();
    const now = Date.now();
    const keys = [...this.keys.values()].map((key) => this.snapshotKey(key, now));
    writeSnapshot(this.options.dir, { journalGeneration: this.options.role === 'standalone' ? folded : Math.min(folded, this.oldestPending() - 1), writtenAt: now, keys });
    // Memory keeps what the snapshot keeps, so that neither a long-running store's maps nor its decisions grow with its history.
    for (const key of keys) this.keys.get(key.id)!.buckets = memKey(key).buckets;
    if (this.options.role === 'standalone') this.applied = new Set();
    return folded;
  }

  /** A key as the snapshot holds it: the buckets of each of its limits that still count at `now`, by that limit's window. */
  private snapshotKey({ buckets, ...key }: MemKey, now: number): SnapshotKey {
    const counting = (limit: Limit): [number, number][] => {
      const since = countsAfter(now, limit.windowMs);
      return [...(buckets.get(limit.name) ?? [])].filter(([start]) => start > since);
    };
    const limits = limitsOf(key, this.windowMs);
    const five = limits.find((limit) => limit.name === LEGACY);
    const others = limits.filter((limit) => limit !== five);
    const snapshot: SnapshotKey = { ...key, buckets: five ? counting(five) : [] };
    // Names the key no longer has are left behind: their usage counts against nothing.
    if (others.length > 0) snapshot.limitBuckets = Object.fromEntries(others.map((limit) => [limit.name, counting(limit)]));
    return snapshot;
  }

  private oldestPending(): number {
    return Math.min(Number.MAX_SAFE_INTEGER, ...this.journal.pendingGenerations);
  }
}
