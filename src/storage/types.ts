// The Storage interface: everything the gate (QuotaStore) and the tooling (KeyStore) ask of a store.
import type { KeyPatch, NewKey } from '../keys/validate.js';
import type { KeyRecord, CreatedKey, WindowUsage, AdmitRequest, Reservation, Admission, UsageRecord, RecordingState, StorageHealth, Limit, LimitWindow } from '../types.js';
import type { SnapshotKey } from './snapshot.js';
import type { Bucket } from '../quota/window.js';

export type { KeyPatch, NewKey, KeyRecord, CreatedKey, WindowUsage, AdmitRequest, Reservation, Admission, UsageRecord, RecordingState, StorageHealth, Limit, LimitWindow };

/** What the gate asks of a store for each request: the key, admission, usage and the window it leaves. */
export interface QuotaStore {
  readonly backend: string;
  /** The backend ping() reaches, when it is not `backend`: a fallback pings its database. */
  readonly pingBackend?: string;
  /** Resolves when the store answers; rejects otherwise. */
  ping(): Promise<void>;
  health(): StorageHealth;
  findKeyByDigest(digest: string): Promise<KeyRecord | undefined>;
  /** Decides and, when admitted, reserves in one atomic step. */
  admit(request: AdmitRequest): Promise<Admission>;
  /**
   * Replaces a reservation with actual usage in one transaction: the bucket, `last_used`,
   * `total_lifetime_tokens` and `total_requests`. A record already applied changes nothing.
   */
  settle(reservation: Reservation, record: UsageRecord): Promise<void>;
  /** Gives a reservation back without recording anything. */
  release(reservation: Reservation): Promise<void>;
  windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage>;
  /** Each limit's window of a key with several limits, for /stats; a store without it shows none. */
  limitsUsage?(keyId: string, limits: readonly Limit[], now: number): Promise<LimitWindow[]>;
  /** A limit's buckets that count at `now`, oldest first, for /stats/usage; a store without it shows no usage over time. */
  usageBuckets?(keyId: string, limit: Limit, now: number): Promise<Bucket[]>;
  close(): Promise<void>;
}

/** Key management, for the admin API and the CLI: apart from the hot path. */
export interface KeyStore {
  createKey(input: NewKey, now?: number): Promise<CreatedKey>;
  listKeys(): Promise<KeyRecord[]>;
  getKey(id: string): Promise<KeyRecord | undefined>;
  /** Throws NotFoundError for an unknown id. */
  updateKey(id: string, patch: KeyPatch): Promise<KeyRecord>;
  /** False when there was no such key. */
  deleteKey(id: string): Promise<boolean>;
}

/** A store as the gate and the tooling use it. */
export interface Storage extends QuotaStore, KeyStore {}

/** What a shared database store gives the fallback decorator beyond Storage. */
export interface SharedStorage extends Storage {
  limitsUsage(keyId: string, limits: readonly Limit[], now: number): Promise<LimitWindow[]>;
  usageBuckets(keyId: string, limit: Limit, now: number): Promise<Bucket[]>;
  /** Usage reached the database another way (the fallback's replayed journal): windows this store holds in memory are read again. */
  forgetWindows(): void;
  /** Stops counting a request whose settle or release never reached the database, as if it charged `charged`. */
  forget(reservation: Reservation, charged: number): void;
  /** Every key with its digest and the buckets that start after `since`: what the mirror holds. */
  snapshotKeys(since: number): Promise<SnapshotKey[]>;
  /** The id of the key whose digest starts with `prefix`, for records journaled under an id derived from it. */
  keyIdByDigestPrefix(prefix: string): Promise<string | undefined>;
}

/** What the fallback decorator decides from while the database is away: a mirror of it with a journal. */
export interface MirrorStorage extends Storage {
  limitsUsage(keyId: string, limits: readonly Limit[], now: number): Promise<LimitWindow[]>;
  usageBuckets(keyId: string, limit: Limit, now: number): Promise<Bucket[]>;
  /** Counts a record the database has already taken. */
  observe(record: UsageRecord): void;
  /** Replays the journal through `apply`, deleting each file once all its records are in; the records taken. */
  replay(apply: (record: UsageRecord) => Promise<'taken' | 'refused'>): Promise<number>;
  /** Replaces the mirror with the database's keys and windows (skipped while the journal holds records). */
  refresh(keys: SnapshotKey[]): void;
  /** Writes the mirror as the snapshot now, while the journal is empty. */
  persistMirror(): void;
  readonly journalLength: number;
  readonly journalHoldsRecords: boolean;
  readonly quarantinedFiles: string[];
}
