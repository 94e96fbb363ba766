// File storage: keys in an atomically replaced snapshot, usage in an fsynced append-only journal.
import { mkdirSync } from 'node:fs';
import { ConfigError, ConflictError, NotFoundError, StorageError } from '../errors.js';
import type { Logger } from '../ops/logger.js';
import { decide, msUntilAdmissible } from '../quota/admission.js';
import { ReservationBook } from '../quota/reservations.js';
import { bucketStart, countsAfter, DEFAULT_WINDOW_MS } from '../quota/window.js';
import { buildKey, patchChanges } from '../keys/build.js';
import { validateCharge, validatePatch, type KeyPatch, type NewKey } from '../keys/validate.js';
import { lockDirectory } from './dir-lock.js';
import { Journal } from './journal.js';
import { readSnapshot, setAsideSnapshot, SnapshotError, writeSnapshot, type SnapshotKey } from './snapshot.js';
import type { Admission, AdmitRequest, CreatedKey, KeyRecord, Reservation, Storage, StorageHealth, UsageRecord, WindowUsage } from './types.js';

interface MemKey extends KeyRecord {
  keyHash: string;
  buckets: Map<number, number>;
}

export interface FileStorageOptions {
  dir: string;
  /**
   * `standalone`: the file store is the store (STORAGE=file); journals are folded into the snapshot.
   * `fallback`: it mirrors a database; its journal holds usage for the database, replayed later.
   */
  role: 'standalone' | 'fallback';
  logger: Logger;
  /** Buckets older than this are dropped from snapshots. Default: 5 hours. */
  windowMs?: number;
  /** Standalone only: keys to start with when there is no snapshot yet (from the old JSON key file). */
  initialKeys?: () => SnapshotKey[];
}

const COMPACT_EVERY_MS = 60_000;

const toRecord = ({ keyHash: _hash, buckets: _buckets, ...record }: MemKey): KeyRecord => record;

export class FileStorage implements Storage {
  readonly backend = 'file';
  private keys = new Map<string, MemKey>();
  private byDigest = new Map<string, MemKey>();
  private readonly reservations = new ReservationBook();
  /** Ids of records applied in memory since the last snapshot, so that none is counted twice. */
  private applied = new Set<string>();
  /** Journal generations holding records not yet replayed (fallback) or folded (standalone). */
  private pending = new Map<number, number>();
  private journal!: Journal;
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
    for (const key of keys) this.putKey({ ...key, buckets: new Map(key.buckets) });
    const folded = snapshot?.journalGeneration ?? 0;
    this.journal = Journal.open(dir, folded);
    for (const generation of Journal.generations(dir)) {
      if (generation <= folded) {
        void this.journal.remove(generation); // already in the snapshot: a crash came between writing it and deleting this
        continue;
      }
      const records = this.journal.read(generation, logger);
      for (const record of records) this.apply(record);
      this.pending.set(generation, records.length);
    }
    if (role === 'standalone' && !snapshot && keys.length > 0) this.persistNow();
    // Standalone, the journal is folded into the snapshot now and then, so neither grows for ever.
    if (role === 'standalone') this.compactor = setInterval(() => void this.persist().catch((error: unknown) => logger.error({ err: error }, 'folding the journal into the snapshot failed')), COMPACT_EVERY_MS).unref();
  }

  async ping(): Promise<void> {}

  health(): StorageHealth {
    return { mode: 'primary', journalPendingRecords: this.journalLength, lastFailure: null, lastReplay: null };
  }

  /** Records in the journal not yet replayed or folded. */
  get journalLength(): number {
    let total = 0;
    for (const count of this.pending.values()) total += count;
    return total;
  }

  async findKeyByDigest(digest: string): Promise<KeyRecord | undefined> {
    const key = this.byDigest.get(digest);
    return key && toRecord(key);
  }

  async admit(request: AdmitRequest): Promise<Admission> {
    const { keyId, now, windowMs } = request;
    const window = this.window(keyId, now, windowMs);
    const held = this.reservations.held(keyId);
    const state = { limit: request.tokenLimit, used: window.used, reserved: held.reserved, partialInFlight: held.partialInFlight };
    const decision = decide(state, request.estimate);
    if (!decision.admit) {
      const since = countsAfter(now, windowMs);
      const buckets = [...(this.keys.get(keyId)?.buckets ?? [])].filter(([start]) => start > since).sort((a, b) => a[0] - b[0]);
      const retryAfterMs = msUntilAdmissible(state, buckets.map(([start, tokens]) => ({ start, tokens })), now, windowMs);
      return { admitted: false, window: { ...window, reserved: held.reserved }, retryAfterMs };
    }
    const reservation = { id: request.requestId, keyId, tokens: decision.reserve, partial: decision.partial };
    this.reservations.add(reservation.id, keyId, reservation.tokens, reservation.partial);
    return { admitted: true, reservation, window: { ...window, reserved: held.reserved + decision.reserve } };
  }

  /** Applies the record in memory and appends it to the journal; resolves once it is on disk. */
  async settle(reservation: Reservation, record: UsageRecord): Promise<void> {
    this.reservations.remove(reservation.id);
    validateCharge(record.tokens);
    if (!this.apply(record)) return;
    const generation = this.journal.generation;
    this.pending.set(generation, (this.pending.get(generation) ?? 0) + 1);
    await this.journal.append(record);
  }

  async release(reservation: Reservation): Promise<void> {
    this.reservations.remove(reservation.id);
  }

  /** Counts a record the database has already taken (fallback role keeps its mirror current). */
  observe(record: UsageRecord): void {
    this.apply(record);
  }

  async windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage> {
    return { ...this.window(keyId, now, windowMs), reserved: this.reservations.held(keyId).reserved };
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
    const changes = patchChanges(validatePatch(patch));
    const key = this.keys.get(id);
    if (!key) throw new NotFoundError(`no key with id ${id}`);
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
  async replay(apply: (record: UsageRecord) => Promise<void>): Promise<number> {
    this.journal.rotate();
    await this.journal.drain();
    let replayed = 0;
    for (const generation of [...this.pending.keys()].filter((g) => g < this.journal.generation).sort((a, b) => a - b)) {
      for (const record of this.journal.read(generation, this.options.logger)) {
        await apply(record);
        replayed++;
      }
      await this.journal.remove(generation);
      this.pending.delete(generation);
    }
    return replayed;
  }

  /** Fallback role: replaces the mirror with the database's keys and windows, and writes the snapshot. */
  refresh(keys: SnapshotKey[]): void {
    if (this.journalLength > 0) return; // the database lacks those records yet: keep counting them here
    this.keys = new Map();
    this.byDigest = new Map();
    this.applied = new Set();
    for (const key of keys) this.putKey({ ...key, buckets: new Map(key.buckets) });
    this.persistNow();
  }

  async close(): Promise<void> {
    clearInterval(this.compactor);
    if (this.options.role === 'standalone') await this.persist();
    await this.journal.close();
    this.releaseLock();
  }

  private standaloneOnly(): void {
    if (this.options.role === 'fallback') throw new StorageError('key changes need the database, which is unreachable; try again when it is back', true);
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
    if (record.tokens > 0) {
      const bucket = bucketStart(record.at);
      key.buckets.set(bucket, (key.buckets.get(bucket) ?? 0) + record.tokens);
    }
    return true;
  }

  private window(keyId: string, now: number, windowMs: number): WindowUsage {
    const since = countsAfter(now, windowMs);
    let used = 0;
    let oldest: number | undefined;
    for (const [start, tokens] of this.keys.get(keyId)?.buckets ?? []) {
      if (start <= since) continue;
      used += tokens;
      if (oldest === undefined || start < oldest) oldest = start;
    }
    return { used, reserved: 0, oldestBucketStart: oldest };
  }

  /** Standalone: folds the journal so far into a new snapshot, then drops the folded files. */
  private async persist(): Promise<void> {
    const folded = this.persistNow();
    await this.journal.drain();
    for (const generation of [...this.pending.keys()].filter((g) => g <= folded)) {
      await this.journal.remove(generation);
      this.pending.delete(generation);
    }
  }

  /**
   * Writes memory as the snapshot, rotating the journal in the same tick so that the snapshot holds
   * exactly the generations up to the returned one.
   */
  private persistNow(): number {
    const folded = this.journal.rotate();
    const since = countsAfter(Date.now(), this.windowMs);
    const keys = [...this.keys.values()].map((key) => ({ ...key, buckets: [...key.buckets].filter(([start]) => start > since) }));
    writeSnapshot(this.options.dir, { journalGeneration: this.options.role === 'standalone' ? folded : Math.min(folded, this.oldestPending() - 1), writtenAt: Date.now(), keys });
    if (this.options.role === 'standalone') this.applied = new Set();
    return folded;
  }

  private oldestPending(): number {
    return Math.min(Number.MAX_SAFE_INTEGER, ...this.pending.keys());
  }
}
