// The admission decision: admit on a full or partial reservation, or refuse and say when to retry.
import type { Admission, AdmitRequest, Reservation, WindowUsage } from '../types.js';
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

/** What a store read of a key's window: the usage recorded in it, and its oldest counting bucket. */
export interface Recorded {
  used: number;
  oldestBucketStart: number | undefined;
}

/** What is held for a key by requests in flight, as the store counts them. */
export interface Held {
  reserved: number;
  /** A request admitted on a partial reservation is in flight. */
  partialInFlight: boolean;
}

/** An admission, or a refusal whose Retry-After is still to be worked out from the window's buckets. */
export type Verdict =
  | { admitted: true; reservation: Reservation; window: WindowUsage }
  | { admitted: false; window: WindowUsage; state: WindowState };

/**
 * The admission flow every store follows: the window and what is held decide; an admitted request
 * reserves its estimate (or what remains, on a partial reservation), and the window it is told of
 * counts that reservation. Storing the reservation is the store's part.
 */
export function judge(request: AdmitRequest, recorded: Recorded, held: Held): Verdict {
  const state = { limit: request.tokenLimit, used: recorded.used, reserved: held.reserved, partialInFlight: held.partialInFlight };
  const window = { used: recorded.used, reserved: held.reserved, oldestBucketStart: recorded.oldestBucketStart };
  const decision = decide(state, request.estimate);
  if (!decision.admit) return { admitted: false, window, state };
  const reservation = { id: request.requestId, keyId: request.keyId, tokens: decision.reserve, partial: decision.partial };
  return { admitted: true, reservation, window: { ...window, reserved: held.reserved + decision.reserve } };
}

/** A refused verdict as an admission, its Retry-After read from the window's buckets (oldest first). */
export function refusal(verdict: Extract<Verdict, { admitted: false }>, buckets: readonly Bucket[], request: AdmitRequest): Admission {
  return { admitted: false, window: verdict.window, retryAfterMs: msUntilAdmissible(verdict.state, buckets, request.now, request.windowMs) };
}
