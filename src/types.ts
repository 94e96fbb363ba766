// Types every floor uses: key and usage records, admission, store health, the logger.
import type { Logger as PinoLogger } from 'pino';

/** One limit of a key: `tokens` per rolling `windowMs`, for every request or only those whose model matches `models`. */
export interface Limit {
  name: string;
  tokens: number;
  windowMs: number;
  /** Glob patterns (`glm-4.7*`); absent, the limit applies to every request. */
  models?: string[];
}

/** A key as stored; times are milliseconds since the epoch. The plaintext key is not part of it. */
export interface KeyRecord {
  id: string;
  keyPrefix: string;
  name: string;
  model: string | null;
  tokenLimit: number;
  expiresAt: number;
  createdAt: number;
  lastUsedAt: number | null;
  totalLifetimeTokens: number;
  totalRequests: number;
  /** What each kind of token is charged, over the gate's defaults (`cache_read=0.1`); null: the defaults. */
  tokenWeights: string | null;
  /** The key's limits as canonical JSON (see src/quota/limits.ts); null: one limit, `5h`, of `tokenLimit` over the gate's window. */
  limits: string | null;
}

export interface CreatedKey {
  record: KeyRecord;
  /** The plaintext key: shown once, never stored. */
  key: string;
}

/** A key's rolling window as seen at one instant. */
export interface WindowUsage {
  /** Tokens recorded in buckets that still count. */
  used: number;
  /** Tokens reserved by requests in flight. */
  reserved: number;
  /** Start of the oldest bucket that still counts, if any. */
  oldestBucketStart: number | undefined;
}

export interface AdmitRequest {
  keyId: string;
  /**
   * The key's limits that apply to this request, each with its own window; absent, the one limit
   * of `tokenLimit` over `windowMs`, whose usage goes in minute buckets named `5h`.
   */
  limits?: readonly Limit[];
  tokenLimit: number;
  /** Tokens this request is expected to use. */
  estimate: number;
  /** Unique id of this request: its reservation and, later, its usage record. */
  requestId: string;
  now: number;
  windowMs: number;
}

/** What a request holds against one of several limits. */
export interface Meter {
  limit: string;
  windowMs: number;
  tokens: number;
  partial: boolean;
}

export interface Reservation {
  id: string;
  keyId: string;
  /** The most held against any one limit. */
  tokens: number;
  partial: boolean;
  /** Against each limit that applies, when the request was admitted on several (AdmitRequest.limits). */
  meters?: readonly Meter[];
}

/** One limit's window as an admission saw it, when several apply. */
export interface LimitWindow extends WindowUsage {
  limit: Limit;
}

export type Admission =
  | { admitted: true; reservation: Reservation; window: WindowUsage; limits?: readonly LimitWindow[] }
  | { admitted: false; window: WindowUsage; retryAfterMs: number; limits?: readonly LimitWindow[]; refusedBy?: string };

/** What a finished request used; `id` makes applying it twice a no-op. */
export interface UsageRecord {
  id: string;
  keyId: string;
  tokens: number;
  /** When the usage happened; decides its bucket. */
  at: number;
  /**
   * The buckets it counts in, `[limit, bucket start]`, one per limit that applied; absent, the
   * minute bucket of `at` of the `5h` limit (every record before keys had several limits).
   */
  buckets?: readonly (readonly [string, number])[];
}

/**
 * Where usage records go: `ok`, where they belong; `journal`, to the journal because the database
 * refuses them (replayed when it takes writes again); `failing`, nowhere durable (kept in memory and
 * retried), and nothing more is admitted until a write succeeds.
 */
export type RecordingState = 'ok' | 'journal' | 'failing';

/** How a store is doing, for /healthz and metrics. */
export interface StorageHealth {
  /** `fallback` while requests are decided from the file store because the database is unreachable. */
  mode: 'primary' | 'fallback';
  recording: RecordingState;
  /** Usage records on disk in the journal, waiting to be replayed into the database. */
  journalPendingRecords: number;
  /** Journal files set aside (never deleted) because a line failed its checksum or a record was refused on replay. */
  quarantinedFiles: string[];
  /** Usage records refused since start: by the database (then journaled), and by the journal too. */
  recordingFailures: { database: number; journal: number };
  lastFailure: { at: number; message: string } | null;
  lastReplay: { at: number; records: number } | null;
}

/** What tokengate logs through: any pino logger fits. */
export type Logger = Pick<PinoLogger, 'debug' | 'info' | 'warn' | 'error'>;
