// Public entry point of the tokengate package.
export { tokenGate, statsHandler, statsUsageHandler, metricsHandler, healthHandler, readyHandler } from '../middleware/index.js';
export type { TokenGateMiddleware, TokenGateOptions, StatsOptions, Rejection, RejectionHandler, RejectionType, ErrorType, ErrorBody, RequestBody, TokenGateContext } from '../middleware/index.js';
export { proxy, type ProxyOptions, type ProxyHandler } from './sidecar/proxy.js';
export { dashboardHandler, DASHBOARD_CSP, type DashboardOptions } from './sidecar/dashboard.js';
export type { KeyStyle } from './sidecar/headers.js';
export { createStorage, DEFAULT_DATABASE_PATH, type StorageConfig } from './storage/create.js';
export type { Storage, StorageHealth, KeyRecord, CreatedKey, NewKey, KeyPatch, WindowUsage, Admission, AdmitRequest, Reservation, UsageRecord } from './storage/types.js';
export { keyView, statsView, type KeyView, type StatsView } from './keys/view.js';
export { createLogger } from './logger.js';
export type { Logger } from './types.js';
export { createMetrics, type TokenGateMetrics, type MetricsOptions, type RequestOutcome, type StorageOperation } from './ops/metrics.js';
export { monitorStorage, type StorageMonitor, type MonitorOptions, type ProbeState, type HealthBody, type ReadyBody, type HealthStatus } from './ops/health.js';
export { TokenGateError, ValidationError, NotFoundError, ConflictError, ConfigError, StorageError } from './errors.js';
