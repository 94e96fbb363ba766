// The JSON shapes of a key that users see: masked record, and the /stats view of the caller's key.
import { maskKey } from './secret.js';
import { remainingTokens } from '../quota/admission.js';
import type { KeyRecord, LimitWindow, WindowUsage } from '../types.js';
import { limitView, type LimitView } from '../quota/limits.js';
import { FIVE_HOURS, fiveHourTokens, limitViews } from './limits.js';
import { parseWeights, type TokenWeights } from '../usage/weights.js';

export interface KeyView {
  id: string;
  key: string;
  name: string;
  model: string | null;
  /** The `5h` limit; null for a key whose limits have none of that name. */
  token_limit_per_5h: number | null;
  limits: LimitView[];
  expiry_date: string;
  created_at: string;
  last_used: string | null;
  total_lifetime_tokens: number;
  total_requests: number;
  /** The key's own token weights (over the gate's defaults); null when it has none. */
  weights: TokenWeights | null;
}

/** One limit in /stats, with where its window stands. */
export interface LimitStats extends LimitView {
  used: number;
  reserved: number;
  remaining: number;
  window_ends_at: string;
}

export interface StatsView {
  key: string;
  name: string;
  model: string | null;
  token_limit_per_5h: number | null;
  limits: LimitStats[];
  expiry_date: string;
  created_at: string;
  last_used: string | null;
  is_expired: boolean;
  current_usage: {
    tokens_used_in_current_window: number;
    reserved_tokens: number;
    window_started_at: string;
    window_ends_at: string;
    remaining_tokens: number;
  };
  total_lifetime_tokens: number;
  total_requests: number;
  weights: TokenWeights | null;
}

const iso = (ms: number): string => new Date(ms).toISOString();

export function keyView(record: KeyRecord): KeyView {
  return {
    id: record.id,
    key: maskKey(record.keyPrefix),
    name: record.name,
    model: record.model,
    token_limit_per_5h: fiveHourTokens(record),
    limits: limitViews(record),
    expiry_date: iso(record.expiresAt),
    created_at: iso(record.createdAt),
    last_used: record.lastUsedAt === null ? null : iso(record.lastUsedAt),
    total_lifetime_tokens: record.totalLifetimeTokens,
    total_requests: record.totalRequests,
    weights: record.tokenWeights === null ? null : parseWeights(record.tokenWeights, 'token_weights'),
  };
}

/** The window starts at its oldest counting bucket (or now when nothing counts) and lasts `windowMs`. */
export function windowStart(window: WindowUsage, now: number): number {
  return window.oldestBucketStart ?? now;
}

/** One limit's window as /stats shows it: the limit, what is used and reserved, what remains, when the window ends. */
export function limitStats(seen: LimitWindow, now: number): LimitStats {
  return {
    ...limitView(seen.limit),
    used: seen.used,
    reserved: seen.reserved,
    remaining: remainingTokens({ limit: seen.limit.tokens, used: seen.used, reserved: seen.reserved }),
    window_ends_at: iso(windowStart(seen, now) + seen.limit.windowMs),
  };
}

/**
 * `window`: the key's `5h` limit's (or, without one, its first limit's) window, which
 * current_usage describes; `limits`: each limit's.
 */
export function statsView(record: KeyRecord, window: WindowUsage, now: number, windowMs: number, limits: readonly LimitWindow[]): StatsView {
  const { id: _id, ...view } = keyView(record);
  const started = windowStart(window, now);
  const shown = limits.find((seen) => seen.limit.name === FIVE_HOURS) ?? limits[0];
  return {
    key: view.key,
    name: view.name,
    model: view.model,
    token_limit_per_5h: view.token_limit_per_5h,
    limits: limits.map((seen) => limitStats(seen, now)),
    expiry_date: view.expiry_date,
    created_at: view.created_at,
    last_used: view.last_used,
    is_expired: record.expiresAt <= now,
    current_usage: {
      tokens_used_in_current_window: window.used,
      reserved_tokens: window.reserved,
      window_started_at: iso(started),
      window_ends_at: iso(started + (shown?.limit.windowMs ?? windowMs)),
      remaining_tokens: remainingTokens({ limit: shown?.limit.tokens ?? record.tokenLimit, used: window.used, reserved: window.reserved }),
    },
    total_lifetime_tokens: view.total_lifetime_tokens,
    total_requests: view.total_requests,
    weights: view.weights,
  };
}
