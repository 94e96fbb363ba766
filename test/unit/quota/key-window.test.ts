// KeyWindow: a key's buckets in memory, with a running sum that follows the window as it moves.
import { describe, expect, it } from 'vitest';
import { KeyWindow } from '../../../src/quota/key-window.js';

const MIN = 60_000;

describe('KeyWindow', () => {
  it('sums the buckets after `since` and names the oldest one, dropping buckets as the window moves on', () => {
    const window = new KeyWindow([{ start: 1 * MIN, tokens: 10 }, { start: 2 * MIN, tokens: 20 }, { start: 5 * MIN, tokens: 50 }], 0);
    expect(window.usage(0)).toEqual({ used: 80, oldestBucketStart: 1 * MIN });
    expect(window.usage(1 * MIN)).toEqual({ used: 70, oldestBucketStart: 2 * MIN });
    expect(window.usage(4 * MIN)).toEqual({ used: 50, oldestBucketStart: 5 * MIN });
    expect(window.usage(5 * MIN)).toEqual({ used: 0, oldestBucketStart: undefined });
  });

  it('adds to the newest bucket, after it, and into the middle in order', () => {
    const window = new KeyWindow([{ start: 2 * MIN, tokens: 1 }], 0);
    window.add(2 * MIN, 2);
    window.add(6 * MIN, 4);
    window.add(4 * MIN, 8);
    window.add(4 * MIN, 16);
    window.add(1 * MIN, 32);
    expect(window.buckets(0)).toEqual([
      { start: 1 * MIN, tokens: 32 },
      { start: 2 * MIN, tokens: 3 },
      { start: 4 * MIN, tokens: 24 },
      { start: 6 * MIN, tokens: 4 },
    ]);
    expect(window.usage(0)?.used).toBe(63);
  });

  it('cannot answer for an instant before what it has dropped or was loaded from', () => {
    const window = new KeyWindow([{ start: 3 * MIN, tokens: 5 }], 2 * MIN);
    expect(window.usage(1 * MIN)).toBeUndefined();
    expect(window.usage(3 * MIN)?.used).toBe(0);
    expect(window.usage(2 * MIN)).toBeUndefined();
    expect(window.buckets(2 * MIN)).toBeUndefined();
  });

  it('matches a plain sum over many buckets added and expired in turn', () => {
    const window = new KeyWindow([], 0);
    const all: { start: number; tokens: number }[] = [];
    for (let minute = 1; minute <= 2000; minute++) {
      const tokens = (minute * 7919) % 101;
      window.add(minute * MIN, tokens);
      all.push({ start: minute * MIN, tokens });
      const since = Math.max(0, minute - 300) * MIN;
      const expected = all.filter((b) => b.start > since).reduce((sum, b) => sum + b.tokens, 0);
      expect(window.usage(since)?.used).toBe(expected);
    }
  });
});
