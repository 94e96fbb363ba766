// GET /stats/usage: the caller's usage over each limit's window, in points the server sizes, on SQLite and PostgreSQL.
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { statsHandler, statsUsageHandler } from '../../middleware/stats.js';
import { createStorage } from '../../src/storage/create.js';
import { parseLimitSpec } from '../../src/quota/limits.js';
import type { UsageView } from '../../src/keys/usage-view.js';
import { quietLogger, startGate, tempDir, type Gate } from '../helpers/gate.js';
import { freshDatabase } from '../helpers/postgres.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
/** Every answer reports this many tokens. */
const USED = 250;

let upstream: Upstream;
beforeAll(async () => {
  upstream = await startUpstream((_req, _body, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ usage: { total_tokens: USED } }));
  });
});
afterAll(() => upstream?.close());

const stores = [
  { store: 'SQLite', open: (up: Upstream) => startGate(up) },
  { store: 'PostgreSQL', open: async (up: Upstream) => startGate(up, {}, await createStorage({ databaseUrl: await freshDatabase(), fallbackDir: tempDir(), keyCacheTtlMs: 0, logger: quietLogger() })) },
];

describe.each(stores)('GET /stats/usage on $store', ({ open }) => {
  let gate: Gate;
  let statsUrl: string;
  let close: () => Promise<void>;
  beforeAll(async () => {
    gate = await open(upstream);
    const app = express();
    const options = { storage: gate.storage, now: gate.clock.now, logger: quietLogger() };
    app.get('/stats/usage', statsUsageHandler(options));
    app.get('/stats', statsHandler(options));
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    statsUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    close = () => new Promise((resolve) => server.close(() => resolve()));
  });
  afterAll(async () => {
    await close?.();
    await gate?.close();
  });

  const get = async (path: string, key?: string) => {
    const response = await fetch(`${statsUrl}${path}`, { headers: key === undefined ? {} : { authorization: `Bearer ${key}` } });
    return { status: response.status, body: (await response.json()) as UsageView & { error?: { code: string } } };
  };
  const ask = async (key: string) => {
    const response = await fetch(`${gate.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: '{"model":"m"}' });
    expect(response.status).toBe(200);
    await response.text();
  };

  it("shows each limit's usage over its window in points of the server's width, matching /stats", async () => {
    const start = gate.clock.now();
    const { key, record } = await gate.storage.createKey({ name: 'plan', limits: [parseLimitSpec('5h=10000', 'test'), parseLimitSpec('7d=20000', 'test')], expiresAt: start + 30 * 24 * HOUR }, start);
    await ask(key);
    await gate.settled(record.id, 1);
    gate.clock.advance(10 * MINUTE);
    await ask(key);
    await gate.settled(record.id, 2);
    gate.clock.advance(6 * HOUR); // the first two left the 5-hour window, not the week
    await ask(key);
    await gate.settled(record.id, 3);
    const now = gate.clock.now();

    const { status, body } = await get('/stats/usage', key);
    expect(status).toBe(200);
    expect(body).toMatchObject({ key: expect.stringMatching(/\.\.\.$/) as unknown, name: 'plan', is_expired: false, generated_at: new Date(now).toISOString() });
    const [five, week] = body.limits;
    expect(five).toMatchObject({ name: '5h', tokens: 10_000, window_seconds: 18_000, used: USED, reserved: 0, remaining: 10_000 - USED, resolution_seconds: 300 });
    expect(week).toMatchObject({ name: '7d', tokens: 20_000, window_seconds: 604_800, used: 3 * USED, remaining: 20_000 - 3 * USED, resolution_seconds: 10_800 });
    for (const limit of body.limits) {
      const width = limit.resolution_seconds * 1000;
      // Points cover the window from its start to now, each `width` apart, and add up to what the window holds.
      expect(limit.points.length).toBe(Math.floor(now / width) - Math.floor((now - limit.window_seconds * 1000) / width) + 1);
      expect(limit.points.every((point, i) => i === 0 || Date.parse(point.start) - Date.parse(limit.points[i - 1]!.start) === width)).toBe(true);
      expect(limit.points.reduce((sum, point) => sum + point.tokens, 0)).toBe(limit.used);
    }
    expect(five!.points.at(-1)!.tokens).toBe(USED);
    const first = week!.points.find((point) => point.tokens > 0)!;
    expect(Date.parse(first.start)).toBe(Math.floor(start / (3 * HOUR)) * 3 * HOUR);
    expect(first.tokens).toBe(2 * USED);
    const stats = (await get('/stats', key)).body as unknown as { limits: { name: string; used: number; remaining: number; window_ends_at: string }[] };
    expect(stats.limits.map(({ name, used, remaining, window_ends_at }) => ({ name, used, remaining, window_ends_at }))).toEqual(
      body.limits.map(({ name, used, remaining, window_ends_at }) => ({ name, used, remaining, window_ends_at })),
    );
  });

  it('shows a key made the old way as its one 5h limit, an expired key as expired, and refuses unknown and missing keys', async () => {
    const { key, record } = await gate.createKey(1000, HOUR);
    await ask(key);
    await gate.settled(record.id, 1);
    const legacy = await get('/stats/usage', key);
    expect(legacy.body.limits.map((limit) => [limit.name, limit.used, limit.points.reduce((sum, point) => sum + point.tokens, 0)])).toEqual([['5h', USED, USED]]);
    gate.clock.advance(2 * HOUR);
    expect((await get('/stats/usage', key)).body).toMatchObject({ is_expired: true, limits: [{ used: USED }] });
    expect(await get('/stats/usage', 'tg-no-such-key')).toMatchObject({ status: 401, body: { error: { code: 'invalid_api_key' } } });
    expect((await get('/stats/usage')).status).toBe(401);
  });
});
