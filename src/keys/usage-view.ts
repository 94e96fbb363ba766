// The /stats/usage view: each limit's usage over its window, in points whose width the server picks (at most 61).
import type { Bucket } from '../quota/window.js';
import type { KeyRecord, LimitWindow } from '../types.js';
import { maskKey } from './secret.js';
import { limitStats, type LimitStats } from './view.js';

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** Point widths a chart reads easily: the narrowest that cuts a window into at most MAX_POINTS is used. */
const WIDTHS = [SECOND, 2 * SECOND, 5 * SECOND, 10 * SECOND, 15 * SECOND, 30 * SECOND, MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY];
const MAX_POINTS = 60;

/** A limit's window with what is used and its oldest bucket read from its counting buckets. */
function counted(seen: LimitWindow, buckets: readonly Bucket[], now: number): LimitWindow {
  const since = now - seen.limit.windowMs;
  const counting = buckets.filter((bucket) => bucket.start > since);
  return { ...seen, used: counting.reduce((sum, bucket) => sum + bucket.tokens, 0), oldestBucketStart: counting[0]?.start };
}

/** The width of a window's points: 5 minutes for 5 hours, 3 hours for 7 days, 12 hours for 30 days. */
export function resolutionMs(windowMs: number): number {
  return WIDTHS.find((width) => width * MAX_POINTS >= windowMs) ?? DAY;
}

export interface UsagePoint {
  start: string;
  tokens: number;
}

/** One limit with where its window stands and its usage over the window, oldest point first. */
export interface LimitUsage extends LimitStats {
  resolution_seconds: number;
  points: UsagePoint[];
}

export interface UsageView {
  key: string;
  name: string;
  is_expired: boolean;
  generated_at: string;
  limits: LimitUsage[];
}

/**
 * A limit's counting buckets (oldest first) summed into points of its resolution: from the point
 * holding the window's start to the one holding now, empty ones included. A bucket dated after now
 * (another instance's clock) goes in the last point, so that the points add up to what counts.
 */
export function usagePoints(buckets: readonly Bucket[], windowMs: number, now: number): UsagePoint[] {
  const width = resolutionMs(windowMs);
  const since = now - windowMs;
  const first = Math.floor(since / width) * width;
  const tokens = new Array<number>(Math.floor((now - first) / width) + 1).fill(0);
  for (const bucket of buckets) {
    if (bucket.start > since) tokens[Math.min(Math.floor((bucket.start - first) / width), tokens.length - 1)]! += bucket.tokens;
  }
  return tokens.map((sum, index) => ({ start: new Date(first + index * width).toISOString(), tokens: sum }));
}

/**
 * The key's usage view: `limits` each limit's window (what is reserved), `buckets` the counting
 * buckets of each, in the same order. What is used is the buckets' sum, so the points add up to it
 * even when a record landed between the two reads.
 */
export function usageView(record: KeyRecord, limits: readonly LimitWindow[], buckets: readonly (readonly Bucket[])[], now: number): UsageView {
  return {
    key: maskKey(record.keyPrefix),
    name: record.name,
    is_expired: record.expiresAt <= now,
    generated_at: new Date(now).toISOString(),
    limits: limits.map((seen, index) => ({
      ...limitStats(counted(seen, buckets[index]!, now), now),
      resolution_seconds: resolutionMs(seen.limit.windowMs) / SECOND,
      points: usagePoints(buckets[index]!, seen.limit.windowMs, now),
    })),
  };
}
