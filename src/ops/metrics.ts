// Prometheus metrics (prom-client): the names and labels of the contract, and the calls that move them.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Storage } from '../storage/types.js';
import { UNREADABLE_REASONS, type UnreadableReason } from '../usage/tokens.js';

/** How a gated request ended (413, skipped requests and clients gone mid-body are not counted). */
export type RequestOutcome = 'admitted' | 'unauthenticated' | 'expired' | 'rate_limited' | 'unavailable';
export type StorageOperation = 'findKey' | 'admit' | 'settle' | 'release';

export interface MetricsOptions {
  /** Registry to add the metrics to. Default: a new one. */
  registry?: Registry;
  /** Also count requests and tokens per key, labelled by key id (one series per key). Default: false. */
  perKeyLabels?: boolean;
  /** Add prom-client's default process metrics, unless the registry already has them. Default: true. */
  defaultMetrics?: boolean;
}

// From 100 µs (an in-process SQLite read) to 5 s (a database past its timeouts).
const DURATION_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

// One of the metrics collectDefaultMetrics() registers, whatever the platform.
const DEFAULT_METRIC = 'process_cpu_user_seconds_total';

/** The metrics of one tokengate process; hand it to tokenGate({ metrics }) and monitorStorage(). */
export class TokenGateMetrics {
  readonly registry: Registry;
  readonly requests: Counter<'outcome'>;
  readonly tokens: Counter<'source'>;
  readonly storageDuration: Histogram<'backend' | 'operation'>;
  readonly storageUp: Gauge<'backend'>;
  readonly fallbackActive: Gauge;
  readonly journalPending: Gauge;
  readonly reservedTokens: Gauge;
  readonly recordingFailures: Counter<'stage'>;
  readonly journalQuarantined: Gauge;
  readonly usageUnreadable: Counter<'reason'>;
  readonly keyRequests: Counter<'key_id' | 'outcome'> | undefined;
  readonly keyTokens: Counter<'key_id'> | undefined;
  /** Stores whose health() the fallback and journal gauges read at scrape time. */
  private readonly stores = new Set<Storage>();
  /** Per database backend, whether its last probe answered (set by a StorageMonitor), read at scrape time. */
  private readonly probes = new Map<string, () => boolean>();

  constructor(options: MetricsOptions = {}) {
    const registry = options.registry ?? new Registry();
    const registers = [registry];
    this.registry = registry;
    if ((options.defaultMetrics ?? true) && !registry.getSingleMetric(DEFAULT_METRIC)) collectDefaultMetrics({ register: registry });
    this.requests = new Counter({ name: 'tokengate_requests_total', help: 'Gated requests by outcome.', labelNames: ['outcome'], registers });
    this.tokens = new Counter({ name: 'tokengate_tokens_total', help: 'Tokens charged, by whether the upstream reported them or they were estimated.', labelNames: ['source'], registers });
    this.storageDuration = new Histogram({
      name: 'tokengate_storage_operation_duration_seconds',
      help: 'Duration of the storage calls the gate makes, by the backend that served them.',
      labelNames: ['backend', 'operation'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    const { stores, probes } = this;
    this.storageUp = new Gauge({
      name: 'tokengate_storage_up',
      help: 'Whether the database answers the background probe (1) or not (0); needs monitorStorage().',
      labelNames: ['backend'],
      registers,
      collect() {
        for (const [backend, up] of probes) this.set({ backend }, up() ? 1 : 0);
      },
    });
    this.fallbackActive = new Gauge({
      name: 'tokengate_fallback_active',
      help: 'Whether requests are decided from the file fallback because the database is unreachable.',
      registers,
      collect() {
        this.set([...stores].some((store) => store.health().mode === 'fallback') ? 1 : 0);
      },
    });
    this.journalPending = new Gauge({
      name: 'tokengate_journal_pending_records',
      help: 'Usage records on disk in the journal, waiting to be replayed into the database.',
      registers,
      collect() {
        this.set([...stores].reduce((sum, store) => sum + store.health().journalPendingRecords, 0));
      },
    });
    const counted = { database: 0, journal: 0 };
    this.recordingFailures = new Counter({
      name: 'tokengate_recording_failures_total',
      help: 'Usage records refused: by the database (then journaled), and by the journal too (then held in memory, and nothing admitted).',
      labelNames: ['stage'],
      registers,
      collect() {
        for (const stage of ['database', 'journal'] as const) {
          const total = [...stores].reduce((sum, store) => sum + store.health().recordingFailures[stage], 0);
          if (total > counted[stage]) this.inc({ stage }, total - counted[stage]);
          counted[stage] = Math.max(counted[stage], total);
        }
      },
    });
    this.journalQuarantined = new Gauge({
      name: 'tokengate_journal_quarantined_files',
      help: 'Journal files set aside (not deleted) because a line failed its checksum or a record was refused on replay; /healthz names them.',
      registers,
      collect() {
        this.set([...stores].reduce((sum, store) => sum + store.health().quarantinedFiles.length, 0));
      },
    });
    this.reservedTokens = new Gauge({ name: 'tokengate_reserved_tokens', help: 'Tokens reserved by the requests this process has in flight.', registers });
    this.usageUnreadable = new Counter({ name: 'tokengate_usage_unreadable_total', help: 'Charged responses whose usage could not be read, so an estimate was charged, by reason.', labelNames: ['reason'], registers });
    if (options.perKeyLabels) {
      this.keyRequests = new Counter({ name: 'tokengate_key_requests_total', help: 'Requests per key id, by outcome.', labelNames: ['key_id', 'outcome'], registers });
      this.keyTokens = new Counter({ name: 'tokengate_key_tokens_total', help: 'Tokens charged per key id.', labelNames: ['key_id'], registers });
    }
    this.initialize();
  }

  /** Every contract series from the start, at 0, so rates and alerts work before the first event. */
  private initialize(): void {
    for (const outcome of ['admitted', 'unauthenticated', 'expired', 'rate_limited', 'unavailable'] as const) this.requests.inc({ outcome }, 0);
    for (const source of ['reported', 'estimated'] as const) this.tokens.inc({ source }, 0);
    for (const stage of ['database', 'journal'] as const) this.recordingFailures.inc({ stage }, 0);
    this.reservedTokens.set(0);
    for (const reason of UNREADABLE_REASONS satisfies readonly UnreadableReason[]) this.usageUnreadable.inc({ reason }, 0);
  }

  /** Makes the fallback and journal gauges report this store's state. */
  watch(storage: Storage): void {
    this.stores.add(storage);
  }

  /** Makes `tokengate_storage_up{backend}` report `up()` at each scrape. */
  watchProbe(backend: string, up: () => boolean): void {
    this.probes.set(backend, up);
  }

  /** `keyId` is given where the key is known (admitted, expired, rate_limited). */
  countRequest(outcome: RequestOutcome, keyId?: string): void {
    this.requests.inc({ outcome });
    if (keyId !== undefined && this.keyRequests) this.keyRequests.inc({ key_id: keyId, outcome });
  }

  countTokens(source: 'reported' | 'estimated', tokens: number, keyId: string): void {
    this.tokens.inc({ source }, tokens);
    this.keyTokens?.inc({ key_id: keyId }, tokens);
  }

  /** Runs a storage call and records its duration under the backend that served it (read after it ends). */
  async time<T>(storage: Storage, operation: StorageOperation, work: () => Promise<T>): Promise<T> {
    const end = this.storageDuration.startTimer({ operation });
    try {
      return await work();
    } finally {
      end({ backend: storage.backend });
    }
  }
}

export function createMetrics(options: MetricsOptions = {}): TokenGateMetrics {
  return new TokenGateMetrics(options);
}
