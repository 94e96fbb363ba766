// Tests of the time-ordered request and record ids.
import { describe, expect, it } from 'vitest';
import { newRecordId } from '../../../src/usage/record-id.js';

const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('newRecordId', () => {
  it('is a UUIDv7 carrying the millisecond timestamp it was made at', () => {
    const at = Date.UTC(2026, 10, 29, 5, 30, 0, 123);
    const id = newRecordId(at);
    expect(id).toMatch(UUID_V7);
    expect(Number.parseInt(id.replace(/-/g, '').slice(0, 12), 16)).toBe(at);
  });

  it('sorts as text in the order of creation across milliseconds', () => {
    const start = Date.UTC(2026, 0, 1);
    const ids = Array.from({ length: 1000 }, (_, i) => newRecordId(start + i * 7));
    expect(ids.toSorted()).toEqual(ids);
  });

  it('differs between ids of the same millisecond', () => {
    const ids = new Set(Array.from({ length: 10_000 }, () => newRecordId(1_795_000_000_000)));
    expect(ids.size).toBe(10_000);
  });

  it('defaults to now', () => {
    const before = Date.now();
    const time = Number.parseInt(newRecordId().replace(/-/g, '').slice(0, 12), 16);
    expect(time).toBeGreaterThanOrEqual(before);
    expect(time).toBeLessThanOrEqual(Date.now());
  });
});
