// One key's usage buckets in memory, oldest first, with their running sum: a window's usage without
// reading every bucket again.
import type { Bucket } from './window.js';

export class KeyWindow {
  private starts: number[] = [];
  private tokens: number[] = [];
  /** Index of the oldest bucket that still counted at the last look. */
  private head = 0;
  private sum = 0;

  /**
   * @param horizon buckets starting at or before this instant were left out (or have since left
   * the window); a question about an earlier instant cannot be answered from memory.
   */
  constructor(
    buckets: readonly Bucket[],
    private horizon: number,
  ) {
    for (const bucket of buckets) this.add(bucket.start, bucket.tokens);
  }

  /** Adds tokens to the bucket starting at `start` (usually the newest one, or a new one after it). */
  add(start: number, tokens: number): void {
    this.sum += tokens;
    const last = this.starts.length - 1;
    if (last < this.head || this.starts[last]! < start) {
      this.starts.push(start);
      this.tokens.push(tokens);
      return;
    }
    if (this.starts[last] === start) {
      this.tokens[last]! += tokens;
      return;
    }
    let low = this.head;
    let high = last;
    while (low < high) {
      const mid = (low + high) >> 1;
      if (this.starts[mid]! < start) low = mid + 1;
      else high = mid;
    }
    if (this.starts[low] === start) this.tokens[low]! += tokens;
    else {
      this.starts.splice(low, 0, start);
      this.tokens.splice(low, 0, tokens);
    }
  }

  /** Tokens in buckets starting after `since`, and the oldest such bucket; undefined when `since` is before the horizon. */
  usage(since: number): { used: number; oldestBucketStart: number | undefined } | undefined {
    if (!this.expire(since)) return undefined;
    return { used: this.sum, oldestBucketStart: this.head < this.starts.length ? this.starts[this.head] : undefined };
  }

  /** The buckets starting after `since`, oldest first; undefined when `since` is before the horizon. */
  buckets(since: number): Bucket[] | undefined {
    if (!this.expire(since)) return undefined;
    const buckets: Bucket[] = [];
    for (let i = this.head; i < this.starts.length; i++) buckets.push({ start: this.starts[i]!, tokens: this.tokens[i]! });
    return buckets;
  }

  private expire(since: number): boolean {
    if (since < this.horizon) return false;
    this.horizon = since;
    while (this.head < this.starts.length && this.starts[this.head]! <= since) {
      this.sum -= this.tokens[this.head]!;
      this.head++;
    }
    if (this.head > 64 && this.head * 2 > this.starts.length) {
      this.starts = this.starts.slice(this.head);
      this.tokens = this.tokens.slice(this.head);
      this.head = 0;
    }
    return true;
  }
}
