// The admission decision and Retry-After arithmetic, without any I/O.
import { describe, expect, it } from 'vitest';
import { decide, msUntilAdmissible, remainingTokens } from '../../../src/quota/admission.js';
import { meterOf, parseLimitSpec } from '../../../src/quota/limits.js';
import { ReservationBook, type LimitWindows } from '../../../src/quota/reservations.js';
import { BUCKET_MS, bucketStart, msUntilLeaves } from '../../../src/quota/window.js';

const state = (used: number, reserved = 0, partialInFlight = false) => ({ limit: 1000, used, reserved, partialInFlight });

describe('decide', () => {
  it('admits on the full estimate while it fits', () => {
    expect(decide(state(100, 200), 700)).toEqual({ admit: true, reserve: 700, partial: false });
  });
  it('admits on what remains when the estimate does not fit, flagged partial', () => {
    expect(decide(state(100, 200), 701)).toEqual({ admit: true, reserve: 700, partial: true });
  });
  it('refuses when nothing remains, including when usage overshot the limit', () => {
    expect(decide(state(600, 400), 1)).toEqual({ admit: false });
    expect(decide(state(1500), 1)).toEqual({ admit: false });
    expect(remainingTokens(state(1500))).toBe(0);
  });
  it('refuses everything while a partial reservation is in flight', () => {
    expect(decide(state(0, 10, true), 1)).toEqual({ admit: false });
  });
});

describe('msUntilAdmissible', () => {
  const now = 10 * 3600_000;
  const window = 5 * 3600_000;
  it('is when enough of the oldest usage has left for a token to remain', () => {
    const buckets = [
      { start: now - 4 * 3600_000, tokens: 300 },
      { start: now - 3 * 3600_000, tokens: 500 },
      { start: now - 3600_000, tokens: 200 },
    ];
    // used 1000 = limit: the first bucket leaving frees 300 > 0.
    expect(msUntilAdmissible(state(1000), buckets, now, window)).toBe(3600_000);
    // used 1300 over a limit of 1000: 300 freed is not enough (needs > 300), 800 is.
    expect(msUntilAdmissible({ ...state(1300), limit: 1000 }, buckets, now, window)).toBe(2 * 3600_000);
    // Reservations do not push the retry out: they end when their requests do.
    expect(msUntilAdmissible(state(1000, 300), buckets, now, window)).toBe(3600_000);
  });
  it('is 0 when reservations, not usage, hold the budget', () => {
    expect(msUntilAdmissible(state(0, 10, true), [], now, window)).toBe(0);
    expect(msUntilAdmissible(state(500, 500), [{ start: now - 1000, tokens: 500 }], now, window)).toBe(0);
    expect(msUntilAdmissible(state(2000), [{ start: now - 1000, tokens: 5 }], now, window)).toBe(0);
  });
});

describe('window arithmetic', () => {
  it('puts usage in the bucket that starts at the minute', () => {
    expect(bucketStart(5 * BUCKET_MS + 59_999)).toBe(5 * BUCKET_MS);
    expect(bucketStart(5 * BUCKET_MS)).toBe(5 * BUCKET_MS);
  });
  it('counts the time until a bucket leaves, never negative', () => {
    expect(msUntilLeaves(undefined, 100, 50)).toBe(0);
    expect(msUntilLeaves(60, 100, 50)).toBe(10);
    expect(msUntilLeaves(0, 100, 50)).toBe(0);
  });
});

describe('ReservationBook', () => {
  it('keeps per-key totals and the partial flag, and forgets what is removed', () => {
    const book = new ReservationBook();
    book.add('a', 'k1', 10, false);
    book.add('b', 'k1', 5, true);
    book.add('c', 'k2', 7, false);
    book.add('a', 'k1', 10, false); // a duplicate id changes nothing
    expect(book.held('k1')).toEqual({ reserved: 15, partialInFlight: true });
    expect(book.total).toBe(22);
    expect(book.remove('b')).toBe(true);
    expect(book.remove('b')).toBe(false);
    expect(book.held('k1')).toEqual({ reserved: 10, partialInFlight: false });
    book.remove('a');
    book.remove('c');
    expect(book.held('k1')).toEqual({ reserved: 0, partialInFlight: false });
    expect(book.total).toBe(0);
  });
});

describe('ReservationBook.admit: the admission flow of a store whose reservations live in this process', () => {
  const NOW = 10 * 3600_000;
  const WINDOW = 5 * 3600_000;
  const request = (requestId: string, estimate: number) => ({ keyId: 'k', tokenLimit: 1000, estimate, requestId, now: NOW, windowMs: WINDOW });

  it('books what it admits, so the next request sees it held, and says so in the window', () => {
    const book = new ReservationBook();
    const recorded = { used: 300, oldestBucketStart: NOW - 3600_000 };
    const first = book.admit(request('a', 500), recorded, () => []);
    expect(first).toEqual({ admitted: true, reservation: { id: 'a', keyId: 'k', tokens: 500, partial: false }, window: { used: 300, reserved: 500, oldestBucketStart: NOW - 3600_000 } });
    const second = book.admit(request('b', 400), recorded, () => []);
    expect(second).toMatchObject({ admitted: true, reservation: { tokens: 200, partial: true }, window: { reserved: 700 } });
    expect(book.admit(request('c', 1), recorded, () => []).admitted).toBe(false); // a partial one is in flight
  });

  it('reads the buckets only for a refusal, and points Retry-After at the bucket whose leaving frees tokens', () => {
    const book = new ReservationBook();
    let reads = 0;
    const buckets = [{ start: bucketStart(NOW - 4 * 3600_000), tokens: 600 }, { start: bucketStart(NOW - 3600_000), tokens: 400 }];
    const read = () => (reads++, buckets);
    expect(book.admit(request('a', 10), { used: 500, oldestBucketStart: buckets[0]!.start }, read).admitted).toBe(true);
    expect(reads).toBe(0);
    const refused = book.admit(request('b', 10), { used: 1000, oldestBucketStart: buckets[0]!.start }, read);
    expect(reads).toBe(1);
    expect(refused).toEqual({ admitted: false, window: { used: 1000, reserved: 10, oldestBucketStart: buckets[0]!.start }, retryAfterMs: msUntilLeaves(buckets[0]!.start, NOW, WINDOW) });
  });
});

describe('ReservationBook.admitAll: one decision across several limits', () => {
  const NOW = 30 * 24 * 3600_000;
  const five = parseLimitSpec('5h=1000', 'test');
  const week = parseLimitSpec('7d=1500', 'test');
  const request = (requestId: string, estimate: number) => ({ keyId: 'k', tokenLimit: 1000, limits: [five, week], estimate, requestId, now: NOW, windowMs: five.windowMs });

  it("books each limit's part under its meter, partial where the estimate does not fit, and releases every part", () => {
    const book = new ReservationBook();
    const usage: Record<string, { used: number; oldestBucketStart: number }> = { '5h': { used: 100, oldestBucketStart: NOW - 3600_000 }, '7d': { used: 1200, oldestBucketStart: NOW - 48 * 3600_000 } };
    const admission = book.admitAll(request('a', 500), [five, week], { usage: (_key, limit) => usage[limit]!, buckets: () => [] });
    if (!admission.admitted) throw new Error('not admitted');
    expect(admission.reservation).toEqual({
      id: 'a',
      keyId: 'k',
      tokens: 500,
      partial: true,
      meters: [
        { limit: '5h', windowMs: five.windowMs, tokens: 500, partial: false },
        { limit: '7d', windowMs: week.windowMs, tokens: 300, partial: true },
      ],
    });
    expect(admission.limits!.map((seen) => seen.reserved)).toEqual([500, 300]);
    expect(book.held(meterOf('k', '5h'))).toEqual({ reserved: 500, partialInFlight: false });
    expect(book.held(meterOf('k', '7d'))).toEqual({ reserved: 300, partialInFlight: true });
    book.release(admission.reservation);
    expect(book.total).toBe(0);
  });

  it('names the limit that refuses, and waits (from the buckets) until every limit admits', () => {
    const book = new ReservationBook();
    let reads = 0;
    const starts = { '5h': NOW - 3600_000, '7d': NOW - 24 * 3600_000 };
    const tokens = { '5h': five.tokens, '7d': week.tokens };
    const full: LimitWindows = {
      usage: (_key, limit) => ({ used: tokens[limit as '5h' | '7d'], oldestBucketStart: starts[limit as '5h' | '7d'] }),
      buckets: (_key, limit) => (reads++, [{ start: starts[limit as '5h' | '7d'], tokens: tokens[limit as '5h' | '7d'] }]),
    };
    const refused = book.admitAll(request('a', 1), [five, week], full);
    expect(refused).toMatchObject({ admitted: false, refusedBy: '5h', window: { used: 1000 }, retryAfterMs: msUntilLeaves(starts['7d'], NOW, week.windowMs) });
    expect(reads).toBe(2);
    expect(book.total).toBe(0);
  });
});
