// The quota engine of a store whose reservations live in this process: key windows kept in memory,
// admission against them, and usage committed in groups through the store's adapter.
import { performance } from 'node:perf_hooks';
import { StorageError } from '../errors.js';
import { validateCharge } from '../keys/validate.js';
import type { Admission, AdmitRequest, Limit, LimitWindow, Reservation, UsageRecord, WindowUsage } from '../types.js';
import { bucketsOf, LEGACY, meterOf, withLimitBuckets } from './limits.js';
import { GroupCommit } from './group-commit.js';
import { KeyWindow } from './key-window.js';
import { ReservationBook, type LimitWindows } from './reservations.js';
import { countsAfter, type Bucket } from './window.js';

/** What a store made of a record: counted now, counted before, or refused for good (its key is gone). */
export type ApplyOutcome = 'applied' | 'duplicate' | 'no-key';

/** What a backend gives the engine: a key's buckets, and an idempotent commit of many records at once. */
export interface LocalAdapter {
  /** A key's buckets of one limit that start after `since`, oldest first. */
  buckets(keyId: string, limit: string, since: number): readonly Bucket[];
  /**
   * Applies the records in one transaction, each at most once (by its id): the key's bucket, last
   * use, lifetime tokens and requests. Throws when the transaction failed; nothing is applied then.
   */
  commit(records: readonly UsageRecord[]): readonly ApplyOutcome[];
  /** Whether a failed commit is the whole store's (full, locked, closed), rather than one record's. */
  wholeStore(error: unknown): boolean;
  /** Throws when the store can take no write at all (it is closed). */
  ready(): void;
}

/** Where the records go that the store refuses (a journal), counted in windows until the store takes them. */
export interface Overflow {
  /** Records neither the store nor the overflow took are in memory: nothing may be admitted. */
  readonly holding: boolean;
  /** `ok` while the store takes writes; otherwise records go to the overflow untried. */
  readonly state: string;
  /** Whether the overflow holds the record already (it was settled again). */
  holds(record: UsageRecord): boolean;
  /** The key's records the store does not hold yet. */
  records(keyId: string): Iterable<UsageRecord>;
  /** Takes a record the store refused (`refusal`) or was not offered; rejects when it cannot take it either. */
  take(record: UsageRecord, refusal?: unknown): Promise<void>;
  /** The store took a write. */
  databaseWrote(): void;
}

export interface LocalQuotaOptions {
  /** The store, as messages name it: `the SQLite database`. */
  name: string;
  overflow?: Overflow;
  /** Monotonic milliseconds, for when windows are read again and dropped. Default: performance.now. */
  clock?: () => number;
}

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
  reservation: Reservation;
}

/** Thrown by a batch while the store refuses writes: its records go to the overflow untried. */
const REFUSING = new StorageError('the store refuses writes', false);

/**
 * Each busy key's window is kept in memory (read once, then moved by what this process records) and
 * the usage recorded within one turn of the event loop is committed in one transaction. A record
 * counts in memory from its commit (or its overflow) on, and its reservation goes at that same
 * moment: the tokens are never counted twice nor missing.
 */
export class LocalQuota {
  private readonly reservations = new ReservationBook();
  /** Windows by key, then by limit. */
  private readonly mirrors = new Map<string, Map<string, Mirror>>();
  private readonly commits: GroupCommit<Queued>;
  private readonly clock: () => number;
  private lastSweep: number;

  constructor(
    private readonly adapter: LocalAdapter,
    private readonly options: LocalQuotaOptions,
  ) {
    this.clock = options.clock ?? (() => performance.now());
    this.lastSweep = this.clock();
    this.commits = new GroupCommit<Queued>({
      write: (batch, alone) => this.write(batch, alone),
      isolates: (error) => error !== REFUSING && !adapter.wholeStore(error),
      failed: (queued, error) => this.refused(queued, error),
    });
  }

  admit(request: AdmitRequest): Admission {
    if (this.options.overflow?.holding) throw new StorageError(`usage can be written neither to ${this.options.name} nor to its journal: admitting nothing until one of them takes it`, true);
    if (request.limits) return this.admitAll(request, request.limits);
    const since = countsAfter(request.now, request.windowMs);
    const window = this.mirror(request.keyId, LEGACY, since);
    return this.reservations.admit(request, window.usage(since)!, () => window.buckets(since)!);
  }

  /** Each limit's window, read from memory: what admission on several limits decides from. */
  private readonly windows: LimitWindows = {
    usage: (keyId, limit, since) => this.mirror(keyId, limit, since).usage(since)!,
    buckets: (keyId, limit, since) => this.mirror(keyId, limit, since).buckets(since)!,
  };

  /** Admits against every limit that applies, each read from its window in memory. */
  private admitAll(request: AdmitRequest, limits: readonly Limit[]): Admission {
    return this.reservations.admitAll(request, limits, this.windows);
  }

  /** Queues the record for the transaction that commits at the end of this turn of the event loop. */
  async settle(reservation: Reservation, record: UsageRecord): Promise<void> {
    try {
      validateCharge(record.tokens);
    } catch (error) {
      this.release(reservation);
      throw error;
    }
    await this.commits.add({ record: withLimitBuckets(record, reservation), reservation });
  }

  release(reservation: Reservation): void {
    this.reservations.release(reservation);
  }

  windowUsage(keyId: string, now: number, windowMs: number): WindowUsage {
    return this.limitUsage(keyId, LEGACY, now, windowMs, keyId);
  }

  /** Each limit's window, for /stats. */
  limitsUsage(keyId: string, limits: readonly Limit[], now: number): LimitWindow[] {
    return limits.map((limit) => ({ limit, ...this.limitUsage(keyId, limit.name, now, limit.windowMs, meterOf(keyId, limit.name)) }));
  }

  /** A limit's buckets that count at `now`, oldest first (those the store refused included). */
  usageBuckets(keyId: string, limit: Limit, now: number): Bucket[] {
    const since = countsAfter(now, limit.windowMs);
    return [...this.mirror(keyId, limit.name, since).buckets(since)!];
  }

  private limitUsage(keyId: string, limit: string, now: number, windowMs: number, heldAs: string): WindowUsage {
    const since = countsAfter(now, windowMs);
    const { used, oldestBucketStart } = this.mirror(keyId, limit, since).usage(since)!;
    return { used, reserved: this.reservations.held(heldAs).reserved, oldestBucketStart };
  }

  /** Drops a key's window from memory (the key was deleted). */
  forget(keyId: string): void {
    this.mirrors.delete(keyId);
  }

  /** Resolves once every record settled so far is committed or overflowed. */
  drain(): Promise<void> {
    return this.commits.drain();
  }

  /** One limit's window of the key in memory, read from the store when absent, stale, or asked about an earlier instant. */
  private mirror(keyId: string, limit: string, since: number): KeyWindow {
    const at = this.clock();
    if (at - this.lastSweep > WINDOW_IDLE_MS) this.sweep(at);
    let windows = this.mirrors.get(keyId);
    const known = windows?.get(limit);
    if (known && at - known.loadedAt < WINDOW_RELOAD_MS && known.window.usage(since)) {
      known.usedAt = at;
      return known.window;
    }
    const window = new KeyWindow(this.adapter.buckets(keyId, limit, since), since);
    // Usage the store refused is in the overflow: it counts all the same.
    for (const record of this.options.overflow?.records(keyId) ?? []) {
      if (record.tokens === 0) continue;
      for (const [name, start] of bucketsOf(record)) if (name === limit && start > since) window.add(start, record.tokens);
    }
    if (!windows) this.mirrors.set(keyId, (windows = new Map()));
    windows.set(limit, { window, loadedAt: at, usedAt: at });
    return window;
  }

  private sweep(at: number): void {
    this.lastSweep = at;
    for (const [keyId, windows] of this.mirrors) {
      for (const [limit, mirror] of windows) if (at - mirror.usedAt > WINDOW_IDLE_MS) windows.delete(limit);
      if (windows.size === 0) this.mirrors.delete(keyId);
    }
  }

  /**
   * Commits a batch in one transaction (a failure for one record's sake retries each alone). While
   * the store refuses writes, records go straight to the overflow (which offers them to the store
   * again), so that a lock held by another process never stalls the event loop once per batch.
   */
  private write(batch: readonly Queued[], alone: boolean): void {
    this.adapter.ready();
    const { overflow } = this.options;
    if (!alone && overflow && overflow.state !== 'ok') throw REFUSING;
    const outcomes = this.adapter.commit(batch.map((queued) => queued.record));
    overflow?.databaseWrote();
    batch.forEach((queued, i) => this.counted(queued, outcomes[i] === 'applied'));
  }

  /** A record the store did not take: to the overflow when there is one, else its settle fails. */
  private refused(queued: Queued, error: unknown): Promise<void> {
    const { overflow, name } = this.options;
    if (!overflow) {
      this.counted(queued, false);
      return Promise.reject(error);
    }
    const { record } = queued;
    const counted = overflow.holds(record); // settled again: counted once already
    const taken = overflow.take(record, error === REFUSING ? undefined : error);
    // Counted from now on, like a committed record: the overflow (or memory) holds it for the store.
    this.counted(queued, !counted);
    return taken.catch((failed: unknown) => {
      throw new StorageError(`usage record ${record.id} is held in memory: ${name} and its journal both refuse it (${(failed as Error).message})`, true, { cause: failed });
    });
  }

  /** The record counts in the key's windows (when `applied`) and its reservation goes, in the same step. */
  private counted(queued: Queued, applied: boolean): void {
    const { record } = queued;
    if (applied && record.tokens > 0) {
      const windows = this.mirrors.get(record.keyId);
      for (const [limit, start] of bucketsOf(record)) windows?.get(limit)?.window.add(start, record.tokens);
    }
    this.release(queued.reservation);
  }
}
