// Several limits per key on SQLite and PostgreSQL: a 5-hour and a weekly limit, a model-scoped limit, their headers, 429s and /stats.
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { createStorage } from '../../src/storage/create.js';
import { bucketStartFor, parseLimitSpec, type Limit } from '../../src/quota/limits.js';
import { statsHandler } from '../../middleware/stats.js';
import postgres from 'postgres';
import { quietLogger, startGate, tempDbPath, tempDir, type Gate } from '../helpers/gate.js';
import { freshDatabase, startPostgres } from '../helpers/postgres.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import Database from 'better-sqlite3';
import express from 'express';
import { Pruner, sqliteTarget } from '../../src/storage/prune.js';
import type { AddressInfo } from 'node:net';

const HOUR = 3_600_000;
/** Every answer reports this many tokens. */
const USED = 250;
const limits = (...specs: string[]): Limit[] => specs.map((spec) => parseLimitSpec(spec, 'test'));

let upstream: Upstream;
let gate: Gate;
beforeAll(async () => {
  upstream = await startUpstream((_req, _body, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ usage: { total_tokens: USED } }));
  });
});
afterAll(async () => {
  await upstream?.close();
});

const stores = [
  { store: 'SQLite', open: () => startGate(upstream) },
  {
    store: 'PostgreSQL',
    open: async () => startGate(upstream, {}, await createStorage({ databaseUrl: await freshDatabase(), fallbackDir: tempDir(), keyCacheTtlMs: 0, logger: quietLogger() })),
  },
];

async function ask(key: string, model = 'gpt-4o'): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }> {
  const response = await fetch(`${gate.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ model }) });
  return { status: response.status, headers: response.headers, body: (await response.json()) as Record<string, unknown> };
}

describe.each(stores)('on $store', ({ open }) => {
  beforeAll(async () => {
    gate = await open();
  });
  afterAll(async () => {
    await gate?.close();
  });

  describe('a 5-hour and a weekly limit on one key', () => {
    it('admits until the 5-hour limit, again after 5 hours, then refuses by the weekly limit with a Retry-After pointing at its window', async () => {
      const hits = upstream.hits;
      const { key, record } = await gate.storage.createKey({ name: 'plan', limits: limits('5h=1000', '7d=1500'), expiresAt: gate.clock.now() + 30 * 24 * HOUR }, gate.clock.now());
      expect(record.tokenLimit).toBe(1000);
      let settled = 0;
      const admitted = async (): Promise<void> => {
        const answer = await ask(key);
        expect(answer.status).toBe(200);
        expect(answer.headers.get('ratelimit-policy')).toBe('"tokens-5h";q=1000;qu="tokens";w=18000, "tokens-7d";q=1500;qu="tokens";w=604800');
        await gate.settled(record.id, ++settled);
      };
      for (let i = 0; i < 4; i++) await admitted();
      const five = await ask(key);
      expect(five.status).toBe(429);
      expect(five.body).toMatchObject({ error: { type: 'rate_limit_exceeded', limit: '5h', tokens_used: 1000, tokens_limit: 1000 } });
      expect(Number(five.headers.get('retry-after'))).toBeGreaterThan(4 * 3600);
      expect(Number(five.headers.get('retry-after'))).toBeLessThanOrEqual(5 * 3600);
      expect(five.headers.get('ratelimit')).toMatch(/^"tokens-5h";r=0;t=\d+, "tokens-7d";r=500;t=\d+$/);
      expect(five.headers.get('x-ratelimit-remaining-tokens')).toBe('0');

      gate.clock.advance(5 * HOUR + 60_000);
      await admitted();
      await admitted();
      const weekly = await ask(key);
      expect(weekly.status).toBe(429);
      expect(weekly.body).toMatchObject({ error: { limit: '7d', tokens_used: 1500, tokens_limit: 1500 } });
      const retryAfter = Number(weekly.headers.get('retry-after'));
      // The first usage leaves the weekly window 7 days after it was recorded, 5 h 1 min ago.
      expect(retryAfter).toBeGreaterThan(7 * 24 * 3600 - 5 * 3600 - 120);
      expect(retryAfter).toBeLessThanOrEqual(7 * 24 * 3600 - 5 * 3600);
      expect(weekly.headers.get('x-should-retry')).toBe('false');
      // Six admitted, and neither refusal reached the upstream.
      expect(upstream.hits).toBe(hits + 6);
    });
  });

  describe('a limit scoped to models', () => {
    it('refuses only matching requests; the unscoped limit counts all of them', async () => {
      const hits = upstream.hits;
      const { key, record } = await gate.storage.createKey({ name: 'scoped', limits: limits('5h=100000', 'glm:5h=500@glm-4.7*'), expiresAt: gate.clock.now() + 24 * HOUR }, gate.clock.now());
      for (let i = 1; i <= 2; i++) {
        expect((await ask(key, 'glm-4.7-flash')).status).toBe(200);
        await gate.settled(record.id, i);
      }
      // Written another way, the model is still the one the limit is for.
      const refused = await ask(key, ' GLM-4.7');
      expect(refused.status).toBe(429);
      expect(refused.body).toMatchObject({ error: { limit: 'glm' } });
      // A body whose model the gate cannot read meets every limit, the scoped one included.
      const hidden = await fetch(`${gate.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'text/plain' }, body: 'model=glm-4.7' });
      expect(hidden.status).toBe(429);
      expect(await hidden.json()).toMatchObject({ error: { limit: 'glm' } });
      const other = await ask(key, 'glm-4.6');
      expect(other.status).toBe(200);
      expect(other.headers.get('ratelimit-policy')).toBe('"tokens-5h";q=100000;qu="tokens";w=18000');
      await gate.settled(record.id, 3);
      expect(upstream.hits).toBe(hits + 3);
      const used = await gate.storage.limitsUsage!(record.id, limits('5h=100000', 'glm:5h=500@glm-4.7*'), gate.clock.now());
      expect(used.map((seen) => [seen.limit.name, seen.used])).toEqual([
        ['5h', 3 * USED],
        ['glm', 2 * USED],
      ]);
    });
  });

  describe('/stats of a key with several limits', () => {
    it('lists every limit with its usage, and keeps token_limit_per_5h as the 5h limit', async () => {
      const { key, record } = await gate.storage.createKey({ name: 'stats', limits: limits('5h=1000', 'weekly:7d=9000'), expiresAt: gate.clock.now() + 24 * HOUR }, gate.clock.now());
      await ask(key);
      await gate.settled(record.id, 1);
      const app = express();
      app.get('/stats', statsHandler({ storage: gate.storage, now: gate.clock.now, logger: quietLogger() }));
      const server = app.listen(0, '127.0.0.1');
      await new Promise((resolve) => server.once('listening', resolve));
      try {
        const stats = (await (await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/stats`, { headers: { authorization: `Bearer ${key}` } })).json()) as Record<string, unknown>;
        expect(stats).toMatchObject({
          token_limit_per_5h: 1000,
          current_usage: { tokens_used_in_current_window: USED, remaining_tokens: 1000 - USED },
          limits: [
            { name: '5h', tokens: 1000, window: '5h', window_seconds: 18_000, used: USED, reserved: 0, remaining: 1000 - USED },
            { name: 'weekly', tokens: 9000, window: '7d', window_seconds: 604_800, used: USED, reserved: 0, remaining: 9000 - USED },
          ],
        });
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
    });
  });

});

describe('a limit scoped to models, when the key\'s model goes upstream (keyModelWins, OVERRIDE_MODEL)', () => {
  it("matches the key's model, not the one the client wrote", async () => {
    const overriding = await startGate(upstream, { keyModelWins: true });
    onTestFinished(() => overriding.close());
    const { key, record } = await overriding.storage.createKey({ name: 'pinned', model: 'glm-4.7', limits: limits('5h=100000', 'glm:5h=500@glm-4.7*'), expiresAt: overriding.clock.now() + HOUR }, overriding.clock.now());
    const send = (model: string) => fetch(`${overriding.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ model }) });
    for (let i = 1; i <= 2; i++) {
      expect((await send('gpt-4o')).status).toBe(200);
      await overriding.settled(record.id, i);
    }
    const refused = await send('gpt-4o');
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({ error: { limit: 'glm' } });
  });
});

describe('PostgreSQL rows of a request on several limits', () => {
  it('holds a reservation row per limit, takes a retried admission as the same, and records a bucket per limit', async () => {
    const url = await freshDatabase();
    const storage = await createStorage({ databaseUrl: url, fallbackDir: tempDir(), keyCacheTtlMs: 0, logger: quietLogger() });
    onTestFinished(() => storage.close());
    const database = postgres(url, { max: 1, onnotice: () => undefined });
    onTestFinished(() => database.end());
    const at = Date.now();
    const plan = limits('5h=1000', '7d=1500');
    const { record } = await storage.createKey({ name: 'plan', limits: plan, expiresAt: at + 30 * 24 * HOUR }, at);
    // A lease the key held before it had several limits still counts against its 5h limit.
    await database`insert into reservations (id, key_id, tokens, partial, expires_at) values ('lease:old:1', ${record.id}, 900, false, ${at + 60_000})`;
    const request = { keyId: record.id, tokenLimit: 1000, limits: plan, estimate: 200, requestId: 'r1', now: at, windowMs: 5 * HOUR };
    const first = await storage.admit(request);
    const again = await storage.admit(request);
    if (!first.admitted || !again.admitted) throw new Error('not admitted');
    expect(first.reservation.meters?.map((meter) => [meter.limit, meter.tokens, meter.partial])).toEqual([
      ['5h', 100, true],
      ['7d', 200, false],
    ]);
    expect(again.reservation).toEqual(first.reservation);
    expect(await database`select id, limit_name, tokens::int, partial from reservations where key_id = ${record.id} order by id`).toEqual([
      { id: 'lease:old:1', limit_name: '5h', tokens: 900, partial: false },
      { id: 'r1:5h', limit_name: '5h', tokens: 100, partial: true },
      { id: 'r1:7d', limit_name: '7d', tokens: 200, partial: false },
    ]);
    // The 5h limit's partial reservation admits nothing else of the key meanwhile.
    const refused = await storage.admit({ ...request, requestId: 'r2', estimate: 1 });
    expect(refused).toMatchObject({ admitted: false, refusedBy: '5h' });
    // Settled as a replay of the journal does: a stand-in reservation, the record's buckets naming its limits.
    const journaled = { id: 'r1', keyId: record.id, tokens: 150, at, buckets: first.reservation.meters!.map((meter) => [meter.limit, bucketStartFor(at, meter.windowMs)] as const) };
    await storage.settle({ id: 'r1', keyId: record.id, tokens: 0, partial: false }, journaled);
    expect(await database`select id from reservations where key_id = ${record.id}`).toEqual([{ id: 'lease:old:1' }]);
    expect(await database`select limit_name, bucket_start::float8 as start, tokens::int from usage_buckets where key_id = ${record.id} order by limit_name`).toEqual([
      { limit_name: '5h', start: Math.floor(at / 60_000) * 60_000, tokens: 150 },
      { limit_name: '7d', start: Math.floor(at / 1_800_000) * 1_800_000, tokens: 150 },
    ]);
    expect((await storage.limitsUsage!(record.id, plan, at)).map((seen) => [seen.limit.name, seen.used, seen.reserved])).toEqual([
      ['5h', 150, 900],
      ['7d', 150, 0],
    ]);
  });
});

describe('a key with two limits while PostgreSQL is down', () => {
  it('is decided by each limit from the fallback, and the replay records each limit\'s usage once', async () => {
    const pg = await startPostgres();
    onTestFinished(() => pg.close());
    const storage = await createStorage({ databaseUrl: pg.url, fallbackDir: tempDir(), fallbackTimeoutMs: 500, keyCacheTtlMs: 0, logger: quietLogger() });
    // Real time: the fallback's snapshot keeps the buckets that count now.
    const onPostgres = await startGate(upstream, { now: () => Date.now() }, storage);
    onTestFinished(() => onPostgres.close());
    const plan = limits('5h=1000', '7d=1500');
    const { key, record } = await storage.createKey({ name: 'plan', limits: plan, expiresAt: Date.now() + 30 * 24 * HOUR });
    const send = async () => {
      const response = await fetch(`${onPostgres.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: '{"model":"m"}' });
      return { status: response.status, body: (await response.json()) as Record<string, unknown> };
    };
    for (let i = 1; i <= 2; i++) {
      expect((await send()).status).toBe(200);
      await onPostgres.settled(record.id, i);
    }
    await pg.stop();
    for (let i = 3; i <= 4; i++) {
      expect((await send()).status).toBe(200);
      await onPostgres.settled(record.id, i);
    }
    expect(storage.health().mode).toBe('fallback');
    // The mirror counted the usage recorded before the outage in each limit.
    expect(await send()).toMatchObject({ status: 429, body: { error: { limit: '5h', tokens_used: 1000 } } });
    expect((await storage.limitsUsage!(record.id, plan, Date.now())).map((seen) => [seen.limit.name, seen.used])).toEqual([
      ['5h', 1000],
      ['7d', 1000],
    ]);
    await pg.start();
    await expect.poll(() => storage.health(), { timeout: 20_000, interval: 100 }).toMatchObject({ mode: 'primary', journalPendingRecords: 0 });
    const database = postgres(pg.url, { max: 1, onnotice: () => undefined });
    onTestFinished(() => database.end());
    const used = await database`select limit_name, sum(tokens)::int as tokens from usage_buckets where key_id = ${record.id} group by limit_name order by limit_name`;
    expect(used.map((row) => [row.limit_name, row.tokens])).toEqual([
      ['5h', 4 * USED],
      ['7d', 4 * USED],
    ]);
    expect(await database`select id from reservations where key_id = ${record.id} and not starts_with(id, 'lease:')`).toEqual([]);
    // Back on the database, the key is refused by the limit the outage's usage spent.
    expect(await send()).toMatchObject({ status: 429, body: { error: { limit: '5h' } } });
  }, 60_000);
});

describe('pruning the buckets of several limits', () => {
  it("keeps each limit's buckets for its own window, and drops them once they left it", async () => {
    const path = tempDbPath();
    const storage = await createStorage({ databasePath: path, logger: quietLogger(), prune: false });
    const at = Date.UTC(2026, 10, 28, 12);
    try {
      const { record } = await storage.createKey({ name: 'plan', limits: limits('5h=1000', '7d=1500'), expiresAt: at + 30 * 24 * HOUR }, at);
      const admission = await storage.admit({ keyId: record.id, tokenLimit: 1000, limits: limits('5h=1000', '7d=1500'), estimate: 10, requestId: 'r1', now: at, windowMs: 5 * HOUR });
      if (!admission.admitted) throw new Error('not admitted');
      await storage.settle(admission.reservation, { id: 'r1', keyId: record.id, tokens: 300, at });
    } finally {
      await storage.close();
    }
    const sqlite = new Database(path);
    try {
      const names = () => sqlite.prepare('select limit_name from usage_buckets order by limit_name').pluck().all();
      expect(names()).toEqual(['5h', '7d']);
      const prune = (now: number) => new Pruner(sqliteTarget(sqlite), { recordRetentionMs: 30 * 24 * HOUR, windowMs: 5 * HOUR, now: () => now }).run();
      await prune(at + 6 * HOUR);
      expect(names()).toEqual(['7d']);
      await prune(at + 7 * 24 * HOUR - HOUR);
      expect(names()).toEqual(['7d']);
      await prune(at + 7 * 24 * HOUR + HOUR);
      expect(names()).toEqual([]);
    } finally {
      sqlite.close();
    }
  });
});
