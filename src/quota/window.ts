// Rolling-window arithmetic: buckets, what still counts, when usage leaves the window.

/** Usage is grouped in buckets of this size; a bucket counts while now < start + window. */
export const BUCKET_MS = 60_000;
export const DEFAULT_WINDOW_MS = 5 * 60 * 60 * 1000;

export interface Bucket {
  start: number;
  tokens: number;
}

/** The start of the bucket that usage recorded at `at` goes into. */
export function bucketStart(at: number): number {
  return Math.floor(at / BUCKET_MS) * BUCKET_MS;
}

/** Buckets that start after this instant still count at `now`. */
export function countsAfter(now: number, windowMs: number): number {
  return now - windowMs;
}

/** Milliseconds until a bucket starting at `start` leaves the window; 0 when there is none. */
export function msUntilLeaves(start: number | undefined, now: number, windowMs: number): number {
  return start === undefined ? 0 : Math.max(0, start + windowMs - now);
}

/** Whole seconds, rounded up. */
export function toSeconds(ms: number): number {
  return Math.ceil(ms / 1000);
}
