// The window each store was opened for (createStorage's windowMs), so that a gate on it agrees with it.
import type { Storage } from './types.js';

// Kept beside the stores rather than in them: any Storage, whatever its class, can be looked up.
const opened = new WeakMap<Storage, number>();

/** Notes that `storage` keeps usage for windows up to `windowMs`; returns it. */
export function rememberWindow(storage: Storage, windowMs: number): Storage {
  opened.set(storage, windowMs);
  return storage;
}

/** The longest window `storage` keeps usage for, when createStorage() opened it; undefined for a store made otherwise. */
export function openedWindow(storage: Storage): number | undefined {
  return opened.get(storage);
}
