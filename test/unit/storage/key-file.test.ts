// The earlier gateway's key file, parsed: its dates by the one ISO 8601 rule, its cache's epoch timestamps, random ids.
import { describe, expect, it } from 'vitest';
import { digestKey } from '../../../src/keys/secret.js';
import { KeyFileError, parseKeyFile } from '../../../src/storage/key-file.js';

const HOUR = 3_600_000;
const WINDOW = 5 * HOUR;
const NOW = Date.UTC(2026, 10, 28, 9);
const entry = { key: 'pk_user_123', name: 'Alice', token_limit_per_5h: 50_000, expiry_date: '2027-01-01' };

const parse = (entries: unknown[]) => parseKeyFile({ keys: entries }, 'api_keys.json', NOW, WINDOW);

function problems(entries: unknown[]): string[] {
  try {
    parse(entries);
  } catch (error) {
    if (error instanceof KeyFileError) return error.problems;
    throw error;
  }
  throw new Error('the file was accepted');
}

describe('key file dates', () => {
  it('reads dates with Z, an offset (either form) or none at all (midnight UTC)', () => {
    const [key] = parse([{ ...entry, created_at: '2026-01-10T11:00:00+02:00', last_used: '2026-11-28T03:30:00-0530', usage_windows: [{ window_start: '2026-11-28T08:00:00Z', tokens_used: 1200 }] }]).keys;
    expect(key).toMatchObject({ expiresAt: Date.UTC(2027, 0, 1), createdAt: Date.UTC(2026, 0, 10, 9), lastUsedAt: Date.UTC(2026, 10, 28, 9), buckets: [[Date.UTC(2026, 10, 28, 8), 1200]] });
  });

  it('refuses epoch milliseconds, local times and days that do not exist, naming each field', () => {
    const refused = problems([
      { ...entry, expiry_date: Date.UTC(2027, 0, 1) },
      { ...entry, key: 'pk_2', created_at: '2026-01-10T09:00:00', last_used: '2026-11-28 08:00 PST' },
      { ...entry, key: 'pk_3', expiry_date: '2027-02-30', usage_windows: [{ window_start: NOW - HOUR, tokens_used: 1 }] },
    ]);
    expect(refused).toEqual([
      'keys[0].expiry_date: not an ISO 8601 date, or date-time with a time zone',
      'keys[1].created_at: not an ISO 8601 date, or date-time with a time zone',
      'keys[1].last_used: not an ISO 8601 date, or date-time with a time zone',
      'keys[2].expiry_date: not an ISO 8601 date, or date-time with a time zone',
      'keys[2].usage_windows[0].window_start: not an ISO 8601 date, or date-time with a time zone',
    ]);
  });

  it('reads the rolling-window cache in epoch milliseconds, as the gateway wrote it', () => {
    const [key] = parse([{ ...entry, rolling_window_cache: { buckets: [{ timestamp: NOW - HOUR, tokens: 30 }] } }]).keys;
    expect(key!.buckets).toEqual([[NOW - HOUR, 30]]);
  });

  it('gives each key a random id, new at every read, sharing nothing with its digest', () => {
    const first = parse([entry]).keys[0]!;
    const second = parse([entry]).keys[0]!;
    expect(first.id).toMatch(/^key_[0-9a-f]{16}$/);
    expect(second.id).not.toBe(first.id);
    expect(digestKey(entry.key)).not.toContain(first.id.slice(4));
  });
});

describe('key file token weights', () => {
  it('reads the token_weights that `tokengate export` writes; the earlier gateway had none', () => {
    const [weighted, plain] = parse([{ ...entry, token_weights: 'cache_read=0.10,input=1' }, { ...entry, key: 'pk_2', token_weights: null }]).keys;
    expect(weighted?.tokenWeights).toBe('input=1,cache_read=0.1');
    expect(plain?.tokenWeights).toBeNull();
  });

  it('refuses weights that are not weights, naming the entry and field', () => {
    expect(problems([{ ...entry, token_weights: 'cache_read=0' }, { ...entry, key: 'pk_2', token_weights: { cache_read: 0.1 } }])).toEqual([
      'keys[0].token_weights: cache_read: "0" is not a weight: a decimal above 0 and at most 1000, with at most 6 decimals',
      'keys[1].token_weights: not text such as cache_read=0.1',
    ]);
  });
});
