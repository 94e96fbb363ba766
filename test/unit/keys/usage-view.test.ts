// The /stats/usage points: their width per window, their span, and that they add up to what counts.
import { describe, expect, it } from 'vitest';
import { resolutionMs, usagePoints } from '../../../src/keys/usage-view.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

describe('usage points', () => {
  it.each([
    [MINUTE, 1000],
    [5 * HOUR, 5 * MINUTE],
    [7 * DAY, 3 * HOUR],
    [30 * DAY, 12 * HOUR],
    [31 * DAY, DAY],
  ])('a window of %i ms has points %i ms wide', (window, width) => {
    expect(resolutionMs(window)).toBe(width);
  });

  it('run from the point holding the window start to the one holding now, counting only what is in the window', () => {
    const now = Date.UTC(2026, 11, 4, 12, 2); // 2 minutes into a 5-minute point
    const since = now - 5 * HOUR;
    const buckets = [
      { start: since, tokens: 1 }, // left the window: not counted
      { start: since + MINUTE, tokens: 2 },
      { start: now - MINUTE, tokens: 4 },
      { start: now + 3 * MINUTE, tokens: 8 }, // another clock ahead: counted in the last point
    ];
    const points = usagePoints(buckets, 5 * HOUR, now);
    expect(points).toHaveLength(61);
    expect(points[0]).toEqual({ start: new Date(Math.floor(since / (5 * MINUTE)) * 5 * MINUTE).toISOString(), tokens: 2 });
    expect(points.at(-1)).toEqual({ start: new Date(Date.UTC(2026, 11, 4, 12, 0)).toISOString(), tokens: 12 });
    expect(points.reduce((sum, point) => sum + point.tokens, 0)).toBe(14);
  });
});
