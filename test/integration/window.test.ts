// The rolling window, driven by an injected clock: what counts, 429 with Retry-After, admitted again.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { post, startGate, type Gate } from '../helpers/gate.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { BUCKET_MS, bucketStart } from '../../src/quota/window.js';

const HOUR = 3600_000;
const WINDOW = 5 * HOUR;
let upstream: Upstream;
let gate: Gate;
let usage = 0;

beforeEach(async () => {
  upstream = await startUpstream((_req, _body, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ usage: { total_tokens: usage } }));
  });
  gate = await startGate(upstream);
});
afterEach(async () => {
  await gate.close();
  await upstream.close();
});

async function spend(key: string, id: string, tokens: number, count: number): Promise<Response> {
  usage = tokens;
  const response = await post(gate, key);
  await response.text();
  await gate.settled(id, count);
  return response;
}

const used = async (id: string): Promise<number> => (await gate.storage.windowUsage(id, gate.clock.now(), WINDOW)).used;

describe('rolling window', () => {
  it('counts usage 1 h old and drops usage 6 h old', async () => {
    const { key, record } = await gate.createKey(10_000);
    await spend(key, record.id, 600, 1);
    gate.clock.advance(HOUR);
    expect(await used(record.id)).toBe(600);
    await spend(key, record.id, 50, 2);
    expect(await used(record.id)).toBe(650);
    gate.clock.advance(4 * HOUR - 1); // the 600 is 5 h old less 1 ms: it still counts
    expect(await used(record.id)).toBe(650);
    gate.clock.advance(1); // 5 h: it has left
    expect(await used(record.id)).toBe(50);
    gate.clock.advance(HOUR); // the 600 is 6 h old, the 50 is 5 h old
    expect(await used(record.id)).toBe(0);
    expect((await gate.storage.getKey(record.id))?.totalLifetimeTokens).toBe(650);
  });

  it('at used = limit answers 429 with Retry-After until the oldest usage leaves, then admits again', async () => {
    const { key, record } = await gate.createKey(1000);
    const spentAt = gate.clock.now();
    await spend(key, record.id, 400, 1);
    gate.clock.advance(2 * HOUR);
    await spend(key, record.id, 600, 2);
    gate.clock.advance(10 * 60_000);

    const hits = upstream.hits;
    const refused = await post(gate, key);
    expect(refused.status).toBe(429);
    expect(upstream.hits).toBe(hits);
    const retryAfter = Number(refused.headers.get('retry-after'));
    const expected = (bucketStart(spentAt) + WINDOW - gate.clock.now()) / 1000;
    expect(Math.abs(retryAfter - expected)).toBeLessThanOrEqual(BUCKET_MS / 1000);
    const body = (await refused.json()) as { error: Record<string, unknown> };
    expect(body.error).toMatchObject({ type: 'rate_limit_exceeded', code: 'rate_limit_exceeded', tokens_used: 1000, tokens_limit: 1000 });
    expect(body.error.window_ends_at).toBe(new Date(bucketStart(spentAt) + WINDOW).toISOString());
    expect(refused.headers.get('ratelimit')).toBe(`"tokens-5h";r=0;t=${retryAfter}`);
    expect(refused.headers.get('ratelimit-policy')).toBe('"tokens-5h";q=1000;qu="tokens";w=18000');
    expect(refused.headers.get('x-ratelimit-remaining-tokens')).toBe('0');

    gate.clock.advance((retryAfter - 1) * 1000);
    expect((await post(gate, key)).status).toBe(429);
    gate.clock.advance(1000);
    const admitted = await spend(key, record.id, 10, 3);
    expect(admitted.status).toBe(200);
  });

  it('reports remaining after the request’s own reservation in the quota headers', async () => {
    const { key } = await gate.createKey(5000);
    usage = 1;
    const body = { model: 'm', messages: [], max_tokens: 300 };
    const response = await post(gate, key, body);
    const estimate = Math.ceil(JSON.stringify(body).length / 4) + 300;
    expect(response.headers.get('x-ratelimit-remaining-tokens')).toBe(String(5000 - estimate));
    expect(response.headers.get('x-ratelimit-limit-tokens')).toBe('5000');
    expect(response.headers.get('x-ratelimit-reset-tokens')).toBe('0s');
    expect(response.headers.get('ratelimit')).toBe(`"tokens-5h";r=${5000 - estimate};t=0`);
  });

  it('shows the window in /stats', async () => {
    const { key, record } = await gate.createKey(2000);
    await spend(key, record.id, 300, 1);
    gate.clock.advance(30 * 60_000);
    const stats = (await (await fetch(`${gate.url}/stats`, { headers: { authorization: `Bearer ${key}` } })).json()) as Record<string, unknown>;
    const started = bucketStart(gate.clock.now() - 30 * 60_000);
    expect(stats).toEqual({
      key: `${record.keyPrefix}...`,
      name: 'test',
      model: null,
      token_limit_per_5h: 2000,
      limits: [{ name: '5h', tokens: 2000, window: '5h', window_seconds: 18_000, used: 300, reserved: 0, remaining: 1700, window_ends_at: new Date(started + WINDOW).toISOString() }],
      expiry_date: new Date(record.expiresAt).toISOString(),
      created_at: new Date(record.createdAt).toISOString(),
      last_used: new Date(gate.clock.now() - 30 * 60_000).toISOString(),
      is_expired: false,
      current_usage: {
        tokens_used_in_current_window: 300,
        reserved_tokens: 0,
        window_started_at: new Date(started).toISOString(),
        window_ends_at: new Date(started + WINDOW).toISOString(),
        remaining_tokens: 1700,
      },
      total_lifetime_tokens: 300,
      total_requests: 1,
      weights: null,
    });
    expect(JSON.stringify(stats)).not.toContain(key);
  });
});
