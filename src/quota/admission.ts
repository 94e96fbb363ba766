// The admission decision: admit on a full or partial reservation, or refuse and say when to retry.
import type { Bucket } from './window.js';
import { msUntilLeaves } from './window.js';

export interface WindowState {
  limit: number;
  /** Tokens recorded in the window. */
  used: number;
  /** Tokens held by requests in flight. */
  reserved: number;
  /** A request admitted on a partial reservation is in flight: nothing else is admitted meanwhile. */
  partialInFlight: boolean;
}

export type Decision = { admit: true; reserve: number; partial: boolean } | { admit: false };

export function remainingTokens(state: Pick<WindowState, 'limit' | 'used' | 'reserved'>): number {
  return Math.max(0, state.limit - state.used - state.reserved);
}

/**
 * Admits while tokens remain. A request whose estimate does not fit is admitted on what remains,
 * but only one such partial reservation per key may be in flight.
 */
export function decide(state: WindowState, estimate: number): Decision {
  const remaining = remainingTokens(state);
  if (remaining === 0 || state.partialInFlight) return { admit: false };
  if (estimate <= remaining) return { admit: true, reserve: estimate, partial: false };
  return { admit: true, reserve: remaining, partial: true };
}

/**
 * Milliseconds until enough recorded usage leaves the window for tokens to remain again, given the
 * window's buckets oldest first. Reservations are left out: requests in flight end within moments,
 * so when they are what holds the budget the answer is 0 (retry soon), not hours.
 */
export function msUntilAdmissible(state: WindowState, buckets: readonly Bucket[], now: number, windowMs: number): number {
  const excess = state.used - state.limit;
  if (excess < 0) return 0;
  let freed = 0;
  for (const bucket of buckets) {
    freed += bucket.tokens;
    if (freed > excess) return msUntilLeaves(bucket.start, now, windowMs);
  }
  return 0;
}
