// monitorStorage(): pings the store in the background, so /healthz, /readyz and scrapes never wait on it.
import { performance } from 'node:perf_hooks';
import type { Storage, StorageHealth } from '../storage/types.js';
import type { Logger } from '../types.js';
import type { TokenGateMetrics } from './metrics.js';

export interface MonitorOptions {
  /** Keeps `tokengate_storage_up` and the fallback and journal gauges current. */
  metrics?: TokenGateMetrics;
  /** Time between probes, in milliseconds. Default: 500. */
  intervalMs?: number;
  /** A probe without an answer after this long counts as failed. Default: 2000. */
  timeoutMs?: number;
  /** Where a store going down or coming back is logged (once per change). Default: not logged. */
  logger?: Logger;
}

/** The last probe of the store's database. */
export interface ProbeState {
  up: boolean;
  /** How long the last answered probe took. */
  latencyMs: number | null;
  /** When the last probe ended (or was given up on), ms since the epoch. */
  checkedAt: number | null;
  lastError: string | null;
}

export type HealthStatus = 'ok' | 'degraded' | 'unhealthy';

export interface HealthBody {
  status: HealthStatus;
  mode: StorageHealth['mode'];
  /** The store deciding requests now (`file` while PostgreSQL is replaced by the fallback). */
  backend: string;
  database: { backend: string; up: boolean; latencyMs: number | null; checkedAt: string | null; lastError: string | null };
  /** Where usage goes: `ok` the database, `journal` the journal (replayed later), `failing` nowhere durable (nothing admitted). */
  recording: StorageHealth['recording'];
  journalPendingRecords: number;
  /** Journal files set aside for an operator to look at: lines that failed their checksum, or records refused on replay. */
  quarantinedFiles: string[];
  /** Usage records refused since start, by the database (then journaled) and by the journal too. */
  recordingFailures: StorageHealth['recordingFailures'];
  lastFailure: { at: string; message: string } | null;
  lastReplay: { at: string; records: number } | null;
}

export interface ReadyBody {
  ready: boolean;
  status: HealthStatus;
}

export interface Answer<T> {
  statusCode: 200 | 503;
  body: T;
}

/** Removes credentials from any URL a driver message might quote. */
function scrub(message: string): string {
  return message.replace(/(\b[a-z][a-z0-9+.-]*:\/\/)[^/@\s]*@/gi, '$1[redacted]@');
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

/** The store that answers the ping: a fallback store pings its PostgreSQL database. */
function databaseBackend(storage: Storage): string {
  return storage.pingBackend ?? storage.backend;
}

export class StorageMonitor {
  private current: ProbeState = { up: false, latencyMs: null, checkedAt: null, lastError: 'not probed yet' };
  private inFlight: { promise: Promise<void>; startedAt: number } | undefined;
  private readonly timer: NodeJS.Timeout;
  private readonly intervalMs: number;
  private readonly timeoutMs: number;
  private readonly database: string;
  /** A failure this monitor logged itself (a fallback store logs its own switch). */
  private announcedDown = false;

  constructor(
    readonly storage: Storage,
    private readonly options: MonitorOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? 500;
    this.timeoutMs = options.timeoutMs ?? 2000;
    if (!Number.isSafeInteger(this.intervalMs) || this.intervalMs <= 0) throw new TypeError('monitorStorage: `intervalMs` must be a positive integer');
    if (!Number.isSafeInteger(this.timeoutMs) || this.timeoutMs <= 0) throw new TypeError('monitorStorage: `timeoutMs` must be a positive integer');
    this.database = databaseBackend(storage);
    options.metrics?.watch(storage);
    options.metrics?.watchProbe(this.database, () => this.databaseUp(storage.health()));
    void this.probe();
    this.timer = setInterval(() => void this.probe(), this.intervalMs).unref();
  }

  /** The last probe's result. */
  get state(): ProbeState {
    return { ...this.current };
  }

  /**
   * Probes now, unless a probe is still under way (then resolves with that one). A probe that
   * outlives the timeout is recorded as failed at the next tick, and still ends in its own time.
   */
  probe(): Promise<void> {
    if (this.inFlight) {
      if (performance.now() - this.inFlight.startedAt > this.timeoutMs && this.current.up) {
        this.record({ up: false, latencyMs: this.current.latencyMs, checkedAt: Date.now(), lastError: `the store did not answer within ${this.timeoutMs} ms` });
      }
      return this.inFlight.promise;
    }
    const startedAt = performance.now();
    const promise = this.storage.ping().then(
      () => this.record({ up: true, latencyMs: performance.now() - startedAt, checkedAt: Date.now(), lastError: null }),
      (error: unknown) =>
        this.record({ up: false, latencyMs: performance.now() - startedAt, checkedAt: Date.now(), lastError: scrub(error instanceof Error ? error.message : String(error)) }),
    );
    this.inFlight = { promise: promise.finally(() => (this.inFlight = undefined)), startedAt };
    return this.inFlight.promise;
  }

  private record(next: ProbeState): void {
    this.current = next;
    const { logger } = this.options;
    if (!logger) return;
    if (!next.up && !this.announcedDown && this.storage.health().mode !== 'fallback') {
      this.announcedDown = true;
      logger.error({ backend: this.database, error: next.lastError }, 'storage probe failed: requests cannot be decided');
    } else if (next.up && this.announcedDown) {
      this.announcedDown = false;
      logger.info({ backend: this.database, latencyMs: next.latencyMs }, 'storage probe answers again');
    }
  }

  /**
   * /healthz: ok when the database decides and records; degraded on the file fallback, while usage
   * is journaled, or with journal files set aside; unhealthy when nothing can decide, or usage can be
   * recorded nowhere (then nothing is admitted).
   */
  health(): Answer<HealthBody> {
    const store = this.storage.health();
    const status = this.status(store);
    const { latencyMs, checkedAt, lastError } = this.current;
    const up = this.databaseUp(store);
    return {
      statusCode: status === 'unhealthy' ? 503 : 200,
      body: {
        status,
        mode: store.mode,
        backend: this.storage.backend,
        database: { backend: this.database, up, latencyMs: latencyMs === null ? null : Math.round(latencyMs * 1000) / 1000, checkedAt: iso(checkedAt), lastError },
        recording: store.recording,
        journalPendingRecords: store.journalPendingRecords,
        quarantinedFiles: store.quarantinedFiles,
        recordingFailures: store.recordingFailures,
        lastFailure: store.lastFailure && { at: new Date(store.lastFailure.at).toISOString(), message: scrub(store.lastFailure.message) },
        lastReplay: store.lastReplay && { at: new Date(store.lastReplay.at).toISOString(), records: store.lastReplay.records },
      },
    };
  }

  /** /readyz: ready while the store, or its fallback, can decide requests. */
  readiness(): Answer<ReadyBody> {
    const status = this.status(this.storage.health());
    return { statusCode: status === 'unhealthy' ? 503 : 200, body: { ready: status !== 'unhealthy', status } };
  }

  /** In fallback the database is not used, whatever the last probe said just before the switch. */
  private databaseUp(store: StorageHealth): boolean {
    return this.current.up && store.mode !== 'fallback';
  }

  private status(store: StorageHealth): HealthStatus {
    if (store.recording === 'failing') return 'unhealthy';
    if (store.mode === 'fallback') return 'degraded';
    if (!this.current.up) return 'unhealthy';
    return store.recording === 'journal' || store.quarantinedFiles.length > 0 ? 'degraded' : 'ok';
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** Starts probing `storage` in the background (the first probe at once); `stop()` ends it. */
export function monitorStorage(storage: Storage, options: MonitorOptions = {}): StorageMonitor {
  return new StorageMonitor(storage, options);
}
