// The gate's storage calls, timed into the metrics when the gate keeps metrics (and untouched when not).
import type { StorageOperation } from '../src/ops/metrics.js';
import type { GateConfig } from './options.js';

export function storageCall<T>(config: Pick<GateConfig, 'storage' | 'metrics'>, operation: StorageOperation, work: () => Promise<T>): Promise<T> {
  return config.metrics ? config.metrics.time(config.storage, operation, work) : work();
}
