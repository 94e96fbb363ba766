// The database store with a file store behind it: decides from files while the database is away,
// and replays what it journaled into the database, exactly once, when it is back.
import { derivedDigestPrefix } from '../db/random-ids.js';
import pRetry from 'p-retry';
import { StorageError } from '../errors.js';
import type { Logger } from '../types.js';
import { countsAfter, DEFAULT_WINDOW_MS, type Bucket } from '../quota/window.js';
import { validateCharge, type KeyPatch, type NewKey } from '../keys/validate.js';
import { withLimitBuckets } from '../quota/limits.js';
import type { Admission, AdmitRequest, CreatedKey, KeyRecord, Limit, LimitWindow, MirrorStorage, Reservation, SharedStorage, Storage, StorageHealth, UsageRecord, WindowUsage } from './types.js';

export interface FallbackOptions {
  logger: Logger;
  /** Longest a request waits on the database before it is decided from the files. Default: 2000 ms. */
  timeoutMs?: number;
  /** How often the file snapshot is refreshed from the database. Default: 30 s. */
  snapshotIntervalMs?: number;
  /** Length of the window the snapshot keeps buckets for. Default: 5 hours. */
  windowMs?: number;
  /** Makes the database ready again before replaying into it (runs migrations). */
  reconnect: () => Promise<void>;
}

const DOWN = Symbol('database unreachable');

/** A failure that means the database is unreachable (as opposed to a bad query). */
function isConnectionFailure(error: unknown): boolean {
  return error instanceof StorageError && error.transient;
}

/** Rejects after `ms`; `onLate` sees the result should the work still succeed after that. */
function withTimeout<T>(work: Promise<T>, ms: number, onLate?: (value: T) => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timedOut = true;
      reject(new StorageError(`the database did not answer within ${ms} ms`, true));
    }, ms);
  });
  if (onLate) work.then((value) => timedOut && onLate(value)).catch(() => undefined);
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

/** What an admission the database never answered may hold there: the estimate, against each of its limits. */
function unanswered(request: AdmitRequest): Reservation {
  const { requestId: id, keyId, estimate: tokens, limits } = request;
  const meters = limits?.map((limit) => ({ limit: limit.name, windowMs: limit.windowMs, tokens, partial: false }));
  return { id, keyId, tokens, partial: false, ...(meters ? { meters } : {}) };
}

export class FallbackStorage implements Storage {
  private mode: 'primary' | 'fallback' = 'primary';
  private closed = false;
  private lastFailure: StorageHealth['lastFailure'] = null;
  private lastReplay: StorageHealth['lastReplay'] = null;
  private probe: AbortController | undefined;
  /** The running probe-and-recover, so that close() can wait for it. */
  private recovering: Promise<void> = Promise.resolve();
  private refreshing: Promise<void> = Promise.resolve();
  /** Reservations the database holds for requests in flight here. */
  private readonly heldInDatabase = new Set<string>();
  /** Reservations given back while the database was unreachable, or maybe left by an admission it never answered: deleted there on recovery. */
  private readonly unreleased = new Map<string, Reservation>();
  private readonly refresher: NodeJS.Timeout;
  /** Records neither the database nor the journal took: in memory only, retried each second. */
  private unwritten: { reservation: Reservation; record: UsageRecord }[] = [];
  private retryTimer: NodeJS.Timeout | undefined;
  /** Retries run one after another (close() waits for the last): two at once could each take the other's record. */
  private retrying: Promise<void> = Promise.resolve();
  /** Records the database refused (then journaled) since start. */
  private databaseFailures = 0;
  private readonly timeoutMs: number;
  private readonly windowMs: number;

  constructor(
    private readonly primary: SharedStorage,
    private readonly file: MirrorStorage,
    private readonly options: FallbackOptions,
  ) {
    this.timeoutMs = options.timeoutMs ?? 2000;
    this.windowMs = options.windowMs ?? DEFAULT_WINDOW_MS;
    this.refresher = setInterval(() => void this.refreshSnapshot(), options.snapshotIntervalMs ?? 30_000).unref();
  }

  health(): StorageHealth {
    const recording = this.unwritten.length > 0 ? 'failing' : this.mode === 'fallback' || this.file.journalHoldsRecords ? 'journal' : 'ok';
    return {
      mode: this.mode,
      recording,
      journalPendingRecords: this.file.journalLength,
      quarantinedFiles: this.file.quarantinedFiles,
      recordingFailures: { database: this.databaseFailures, journal: this.file.health().recordingFailures.journal },
      lastFailure: this.lastFailure,
      lastReplay: this.lastReplay,
    };
  }

  /** ping() reaches the database, whichever store decides. */
  get pingBackend(): string {
    return this.primary.backend;
  }

  /** The store deciding requests now: PostgreSQL, or the file store while in fallback. */
  get backend(): string {
    return this.mode === 'fallback' ? this.file.backend : this.primary.backend;
  }

  /**
   * Pings the database like any request would reach it: an unreachable database switches to the
   * files (and starts the reconnect probe); in fallback it rejects without touching the database.
   */
  async ping(): Promise<void> {
    const answered = await this.attempt(() => this.primary.ping());
    if (answered === DOWN) throw new StorageError('database unreachable, serving from the file store', true);
  }

  /** Switches to the files and starts probing the database; used on failures and at start. */
  enterFallback(reason: unknown): void {
    if (this.mode === 'fallback' || this.closed) return;
    this.mode = 'fallback';
    const message = reason instanceof Error ? reason.message : String(reason);
    this.lastFailure = { at: Date.now(), message };
    // The mirror holds this instance's usage up to now: a gate restarted during the outage starts from it.
    try {
      this.file.persistMirror();
    } catch (error) {
      this.options.logger.error({ err: error }, 'writing the fallback snapshot at the switch failed; the last periodic one stays');
    }
    this.options.logger.warn({ reason: message, journalPendingRecords: this.file.journalLength }, 'database unreachable: deciding from the file store');
    this.startProbe();
  }

  async findKeyByDigest(digest: string): Promise<KeyRecord | undefined> {
    const found = await this.attempt(() => this.primary.findKeyByDigest(digest));
    if (found !== DOWN) return found;
    const key = await this.file.findKeyByDigest(digest);
    // Unknown to the snapshot is not unknown to the database: say "cannot decide", never a false 401.
    if (!key) throw new StorageError('the database is unreachable and the fallback snapshot does not know this key', true);
    return key;
  }

  async admit(request: AdmitRequest): Promise<Admission> {
    if (this.unwritten.length > 0) throw new StorageError('usage can be written neither to the database nor to the journal: admitting nothing until one of them takes it', true);
    // An admission that commits after its timeout was decided by the files instead: give its
    // reservation back, or it would hold tokens in the database until the reservation TTL.
    const abandon = (late: Admission): void => {
      if (late.admitted) void this.primary.release(late.reservation).catch(() => this.unreleased.set(late.reservation.id, late.reservation));
    };
    const asked = this.mode === 'primary';
    const admission = await this.attempt(() => this.primary.admit(request), abandon);
    if (admission === DOWN) {
      // The database may have committed the reservation even though its answer was lost: deleted on recovery.
      if (asked) this.unreleased.set(request.requestId, unanswered(request));
      return this.file.admit(request);
    }
    if (admission.admitted) this.heldInDatabase.add(admission.reservation.id);
    return admission;
  }

  async settle(reservation: Reservation, given: UsageRecord): Promise<void> {
    // The limits' buckets go with the record wherever it goes: the database, the journal, the mirror.
    const record = withLimitBuckets(given, reservation);
    try {
      validateCharge(record.tokens); // a bad charge is refused as it is, not journaled
    } catch (error) {
      await this.release(reservation);
      throw error;
    }
    await this.file.release(reservation);
    // Settling deletes the database's reservation too, now or when the journal is replayed.
    this.heldInDatabase.delete(reservation.id);
    let settled;
    try {
      settled = await this.attempt(() => this.primary.settle(reservation, record));
    } catch (error) {
      // Refused for another reason than being unreachable: journaled all the same, offered again in a second.
      this.databaseFailures++;
      this.options.logger.error({ err: error, keyId: record.keyId, recordId: record.id }, 'the database refused a usage record: journaled, replayed when it takes it');
      return this.journal(reservation, record, 1000);
    }
    if (settled !== DOWN) return this.file.observe(record);
    this.databaseFailures++;
    this.primary.forget(reservation, record.tokens);
    // Journaled just as the database came back (after the last replay pass): replay it now.
    return this.journal(reservation, record, 0);
  }

  /**
   * Journals a record the database did not take (counting it in the mirror at once). When the journal
   * refuses it too, it is kept in memory and retried each second, and nothing is admitted meanwhile.
   * `replayInMs`: while deciding from the database, when to offer the journal to it.
   */
  private async journal(reservation: Reservation, record: UsageRecord, replayInMs: number): Promise<void> {
    try {
      await this.file.settle(reservation, record);
    } catch (error) {
      this.unwritten.push({ reservation, record });
      this.scheduleRetry(1000);
      this.options.logger.error({ err: error, unwritten: this.unwritten.length }, 'neither the database nor the journal can take usage: admitting nothing until one of them can');
      throw error;
    }
    if (this.mode === 'primary') this.scheduleRetry(replayInMs);
  }

  private scheduleRetry(delayMs: number): void {
    if (this.retryTimer || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retrying = this.retrying.then(async () => {
        await this.retryRecording();
        // Cleared only now: a failure during the run is picked up here, not by a second run beside it.
        this.retryTimer = undefined;
        if (this.unwritten.length > 0 || (this.mode === 'primary' && this.file.journalHoldsRecords)) this.scheduleRetry(1000);
      });
    }, delayMs).unref();
  }

  /** Writes what is in memory only (to the database, else the journal), then offers the journal to the database. */
  private async retryRecording(): Promise<void> {
    while (this.unwritten.length > 0) {
      const { reservation, record } = this.unwritten[0]!;
      try {
        const settled = await this.attempt(() => this.primary.settle({ id: record.id, keyId: record.keyId, tokens: 0, partial: false }, record)).catch(() => DOWN);
        if (settled === DOWN) await this.file.settle(reservation, record);
        else this.file.observe(record);
        this.unwritten.shift();
      } catch {
        break; // still refused by both: again in a second
      }
    }
    if (this.mode === 'primary' && this.file.journalHoldsRecords) {
      try {
        await this.file.replay(this.replayInto());
      } catch (error) {
        this.options.logger.warn({ err: error, journalPendingRecords: this.file.journalLength }, 'replaying journaled usage failed; trying again in a second');
      }
    }
  }

  /**
   * How a replay applies a journaled record: the database's idempotent recording. A record for a key
   * the database does not know is refused (its file is set aside, not deleted); any failure throws,
   * and the replay is run again later.
   */
  private replayInto(): (record: UsageRecord) => Promise<'taken' | 'refused'> {
    const current = new Map<string, string | null>();
    return async (journaled) => {
      let keyId = current.get(journaled.keyId);
      if (keyId === undefined) {
        keyId = await withTimeout(this.currentKeyId(journaled.keyId), this.timeoutMs);
        current.set(journaled.keyId, keyId);
      }
      if (keyId === null) return 'refused';
      const record = { ...journaled, keyId };
      await withTimeout(this.primary.settle({ id: record.id, keyId, tokens: 0, partial: false }, record), this.timeoutMs);
      return 'taken';
    };
  }

  /**
   * The id the database knows a journaled key by: its own, or, for an id derived from the key's
   * digest before such ids were made random, the renamed key's. Null when there is no such key.
   */
  private async currentKeyId(keyId: string): Promise<string | null> {
    if ((await this.primary.getKey(keyId)) !== undefined) return keyId;
    const prefix = derivedDigestPrefix(keyId);
    return (prefix === undefined ? undefined : await this.primary.keyIdByDigestPrefix(prefix)) ?? null;
  }

  async release(reservation: Reservation): Promise<void> {
    await this.file.release(reservation);
    const held = this.heldInDatabase.delete(reservation.id);
    const released = await this.attempt(() => this.primary.release(reservation));
    if (released !== DOWN) return;
    this.primary.forget(reservation, 0);
    // Left in the database, it would hold the key's tokens until the reservation TTL.
    if (held) this.unreleased.set(reservation.id, reservation);
  }

  async windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage> {
    const usage = await this.attempt(() => this.primary.windowUsage(keyId, now, windowMs));
    return usage === DOWN ? this.file.windowUsage(keyId, now, windowMs) : usage;
  }

  async limitsUsage(keyId: string, limits: readonly Limit[], now: number): Promise<LimitWindow[]> {
    const usage = await this.attempt(() => this.primary.limitsUsage(keyId, limits, now));
    return usage === DOWN ? this.file.limitsUsage(keyId, limits, now) : usage;
  }

  async usageBuckets(keyId: string, limit: Limit, now: number): Promise<Bucket[]> {
    const buckets = await this.attempt(() => this.primary.usageBuckets(keyId, limit, now));
    return buckets === DOWN ? this.file.usageBuckets(keyId, limit, now) : buckets;
  }

  createKey(input: NewKey, now?: number): Promise<CreatedKey> {
    return this.change(() => this.primary.createKey(input, now), () => this.file.createKey(input, now));
  }

  async listKeys(): Promise<KeyRecord[]> {
    const keys = await this.attempt(() => this.primary.listKeys());
    return keys === DOWN ? this.file.listKeys() : keys;
  }

  async getKey(id: string): Promise<KeyRecord | undefined> {
    const key = await this.attempt(() => this.primary.getKey(id));
    return key === DOWN ? this.file.getKey(id) : key;
  }

  updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    return this.change(() => this.primary.updateKey(id, patch), () => this.file.updateKey(id, patch));
  }

  deleteKey(id: string): Promise<boolean> {
    return this.change(() => this.primary.deleteKey(id), () => this.file.deleteKey(id));
  }

  /**
   * Refreshes the file snapshot from the database (skipped while the journal waits for replay).
   * Refreshes run one after another, so the last one applied is the last one read.
   */
  refreshSnapshot(): Promise<void> {
    this.refreshing = this.refreshing.then(() => this.refreshNow());
    return this.refreshing;
  }

  private async refreshNow(): Promise<void> {
    if (this.mode !== 'primary' || this.file.journalHoldsRecords) return;
    // Not through attempt(): reading every key may take longer than a request may wait, and a slow
    // or failed refresh says nothing about whether requests can be decided by the database.
    try {
      const keys = await this.primary.snapshotKeys(countsAfter(Date.now(), this.windowMs));
      if (this.mode === 'primary') this.file.refresh(keys);
    } catch (error) {
      this.options.logger.warn({ err: error }, 'refreshing the fallback snapshot failed; keeping the previous one');
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.refresher);
    clearTimeout(this.retryTimer);
    this.probe?.abort();
    // A replay, refresh or retry still writing to the file store finishes before it closes.
    await this.recovering;
    await this.refreshing;
    await this.retrying;
    for (const { reservation, record } of this.unwritten.splice(0)) {
      await this.file.settle(reservation, record).catch((error: unknown) => this.options.logger.error({ err: error, recordId: record.id, tokens: record.tokens }, 'closing with usage neither the database nor the journal took: it is lost'));
    }
    // The next start in an outage decides from this: the usage this instance recorded up to now.
    if (this.mode === 'primary') {
      try {
        this.file.persistMirror();
      } catch (error) {
        this.options.logger.warn({ err: error }, 'writing the fallback snapshot at close failed');
      }
    }
    await this.file.close();
    await this.primary.close();
  }

  /** Runs a database operation; DOWN (after switching to the files) when the database is unreachable. */
  private async attempt<T>(operation: () => Promise<T>, onLate?: (value: T) => void): Promise<T | typeof DOWN> {
    if (this.mode === 'fallback') return DOWN;
    try {
      return await withTimeout(operation(), this.timeoutMs, onLate);
    } catch (error) {
      if (!isConnectionFailure(error)) throw error;
      this.enterFallback(error);
      return DOWN;
    }
  }

  /** Key changes go to the database; the mirror follows at once, so a new key works during an outage. */
  private async change<T>(onDatabase: () => Promise<T>, onFiles: () => Promise<T>): Promise<T> {
    const result = await this.attempt(onDatabase);
    if (result === DOWN) return onFiles(); // the file store refuses: key changes need the database
    await this.refreshSnapshot();
    return result;
  }

  private startProbe(): void {
    this.probe?.abort();
    const probe = new AbortController();
    this.probe = probe;
    const check = async (): Promise<void> => {
      await this.options.reconnect();
      await withTimeout(this.primary.ping(), this.timeoutMs);
    };
    this.recovering = pRetry(check, { retries: Number.POSITIVE_INFINITY, minTimeout: 200, maxTimeout: 5000, factor: 2, signal: probe.signal })
      .then(() => this.recover(probe))
      .catch(() => undefined); // aborted: closed, or a newer probe took over
  }

  /** Replays the journal into the database until it is empty, then decides from the database again. */
  private async recover(probe: AbortController): Promise<void> {
    const { logger } = this.options;
    let replayed = 0;
    try {
      await this.releaseLeftovers();
      do {
        replayed += await this.file.replay(this.replayInto());
      } while (this.file.journalHoldsRecords && !probe.signal.aborted);
    } catch (error) {
      logger.warn({ err: error, replayed }, 'replay into the database interrupted; probing again');
      if (!probe.signal.aborted) this.startProbe();
      return;
    }
    if (probe.signal.aborted) return;
    // The leases' views lack what the files decided meanwhile: the next admission of each key reads the database.
    this.primary.forgetWindows();
    // Same tick as the last emptiness check: no record can slip into the journal in between.
    this.mode = 'primary';
    this.lastReplay = { at: Date.now(), records: replayed };
    logger.info({ replayed }, 'database back: journal replayed, deciding from the database again');
    // Reservations given back during the replay; any that fails now waits for the next recovery.
    await this.releaseLeftovers().catch(() => undefined);
    await this.refreshSnapshot();
  }

  /** Deletes from the database the reservations given back while it was unreachable. */
  private async releaseLeftovers(): Promise<void> {
    for (const [id, reservation] of this.unreleased) {
      await withTimeout(this.primary.release(reservation), this.timeoutMs);
      this.unreleased.delete(id);
    }
  }
}
