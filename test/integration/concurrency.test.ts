// Many requests at once against one key: the limit holds, and aborted requests never stay reserved.
import postgres from 'postgres';
import { afterEach, describe, expect, it } from 'vitest';
import { createStorage } from '../../src/storage/create.js';
import { post, quietLogger, startGate, type Gate } from '../helpers/gate.js';
import { freshDatabase } from '../helpers/postgres.js';
import { json, sse, startUpstream, type Upstream } from '../helpers/upstream.js';

const WINDOW = 5 * 3600_000;
let upstream: Upstream;
let gate: Gate;

afterEach(async () => {
  await gate?.close();
  await upstream?.close();
});

const window = (id: string) => gate.storage.windowUsage(id, gate.clock.now(), WINDOW);

describe('concurrency', () => {
  it('with limit L and 50 concurrent requests within their estimates, records at most L plus one partial request', async () => {
    const actual = 70; // each request's estimate is ceil(bytes / 4) + max_tokens 100 > 70
    upstream = await startUpstream((_req, _body, res) => {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ usage: { total_tokens: actual } }));
      }, 30);
    });
    gate = await startGate(upstream);
    const limit = 1000;
    const { key, record } = await gate.createKey(limit);
    const responses = await Promise.all(Array.from({ length: 50 }, () => post(gate, key, { model: 'm', messages: [], max_tokens: 100 })));
    const statuses = responses.map((r) => r.status);
    await Promise.all(responses.map((r) => r.text()));
    expect(statuses.every((s) => s === 200 || s === 429)).toBe(true);
    const admitted = statuses.filter((s) => s === 200).length;
    expect(admitted).toBeGreaterThan(0);
    expect(statuses).toContain(429);
    const settled = await gate.settled(record.id, admitted);
    expect(settled.totalRequests).toBe(admitted);
    expect(settled.totalLifetimeTokens).toBe(admitted * actual);
    // The contract's bound: over the limit by at most the one request admitted on a partial
    // reservation (when early responses settle before later requests arrive, one may be).
    expect(settled.totalLifetimeTokens).toBeLessThanOrEqual(limit + actual);
    expect(upstream.hits).toBe(admitted);
    expect((await window(record.id)).reserved).toBe(0);
  });

  it('admits one request on a partial reservation, and nothing else while it is in flight', async () => {
    let release: () => void = () => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    upstream = await startUpstream((_req, _body, res) => {
      void held.then(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ usage: { total_tokens: 40 } }));
      });
    });
    gate = await startGate(upstream);
    const { key, record } = await gate.createKey(100);
    const big = post(gate, key, { messages: [], max_tokens: 5000 });
    await expect.poll(async () => (await window(record.id)).reserved).toBe(100);
    const second = await post(gate, key, { messages: [], max_tokens: 1 });
    expect(second.status).toBe(429);
    // What holds the budget is a request in flight, not recorded usage: retry in a second, not hours.
    expect(second.headers.get('retry-after')).toBe('1');
    release();
    expect((await big).status).toBe(200);
    await gate.settled(record.id, 1);
    expect(await window(record.id)).toMatchObject({ used: 40, reserved: 0 });
    expect((await post(gate, key, { messages: [], max_tokens: 1 })).status).toBe(200);
  });
});

describe('aborted requests', () => {
  const slowStream = (events: unknown[]) => sse(events, 100);

  it('charges an aborted stream the usage seen so far and releases the rest', async () => {
    const start = { type: 'message_start', message: { usage: { input_tokens: 25, output_tokens: 1, cache_read_input_tokens: 3 } } };
    const delta = { type: 'content_block_delta', delta: { type: 'text_delta', text: 'x' } };
    upstream = await startUpstream(slowStream([start, ...Array.from({ length: 30 }, () => delta)]));
    gate = await startGate(upstream);
    const { key, record } = await gate.createKey(100_000);
    const response = await post(gate, undefined, { messages: [], max_tokens: 4000 }, { 'x-api-key': key });
    const reader = response.body!.getReader();
    await reader.read();
    await reader.cancel();
    const settled = await gate.settled(record.id, 1);
    expect(settled.totalLifetimeTokens).toBe(29);
    expect(await window(record.id)).toMatchObject({ used: 29, reserved: 0 });
  });

  it('charges an aborted stream without usage an estimate of what streamed, never zero', async () => {
    const chunk = { choices: [{ delta: { content: 'hello world' } }], usage: null };
    upstream = await startUpstream(slowStream(Array.from({ length: 30 }, () => chunk)));
    gate = await startGate(upstream);
    const { key, record } = await gate.createKey(100_000);
    const response = await post(gate, key, { messages: [], max_tokens: 4000 });
    const reader = response.body!.getReader();
    await reader.read();
    await reader.cancel();
    const settled = await gate.settled(record.id, 1);
    expect(settled.totalLifetimeTokens).toBeGreaterThan(0);
    expect(settled.totalLifetimeTokens).toBeLessThan(4000);
    expect((await window(record.id)).reserved).toBe(0);
  });

  it('charges nothing and releases everything when the client leaves before any byte', async () => {
    upstream = await startUpstream((_req, _body, res) => {
      setTimeout(() => {
        if (!res.destroyed) res.end(JSON.stringify({ usage: { total_tokens: 5 } }));
      }, 300);
    });
    gate = await startGate(upstream);
    const { key, record } = await gate.createKey(100_000);
    const controller = new AbortController();
    const pending = fetch(`${gate.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}', signal: controller.signal });
    await expect.poll(async () => (await window(record.id)).reserved).toBeGreaterThan(0);
    controller.abort();
    await expect(pending).rejects.toThrow();
    const settled = await gate.settled(record.id, 1);
    expect(settled.totalLifetimeTokens).toBe(0);
    expect((await window(record.id)).reserved).toBe(0);
  });
});

describe('a client that leaves while its admission is decided', () => {
  it('gets its reservation released, and nothing is sent upstream', async () => {
    const url = await freshDatabase();
    const storage = await createStorage({ databaseUrl: url, fallback: false, logger: quietLogger() });
    upstream = await startUpstream(json({ usage: { total_tokens: 5 } }));
    gate = await startGate(upstream, {}, storage);
    const { key, record } = await gate.createKey(100_000);
    // Another session holds the key's row: the admission waits for it.
    const blocker = postgres(url, { max: 1, onnotice: () => undefined });
    let unlock!: () => void;
    const unlocked = new Promise<void>((resolve) => (unlock = resolve));
    let locked!: () => void;
    const lockTaken = new Promise<void>((resolve) => (locked = resolve));
    const holding = blocker.begin(async (tx) => {
      await tx`select id from api_keys where id = ${record.id} for update`;
      locked();
      await unlocked;
    });
    await lockTaken;
    const controller = new AbortController();
    const pending = fetch(`${gate.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}', signal: controller.signal });
    await expect.poll(async () => (await count(url, "pg_stat_activity where wait_event_type = 'Lock'"))).toBeGreaterThan(0);
    controller.abort();
    await expect(pending).rejects.toThrow();
    unlock();
    await holding;
    await blocker.end();
    // The key's lease (this instance's spare share of the budget) may stay; the request's estimate may not.
    await expect.poll(() => count(url, "reservations where not starts_with(id, 'lease:')")).toBe(0);
    expect((await window(record.id)).reserved).toBe(0);
    expect(upstream.hits).toBe(0);
  });
});

/** Rows of a table (or a `table where …` clause), on a connection of its own. */
async function count(url: string, from: string): Promise<number> {
  const sql = postgres(url, { max: 1, onnotice: () => undefined });
  try {
    const [row] = await sql.unsafe(`select count(*)::int as n from ${from}`);
    return row?.n as number;
  } finally {
    await sql.end();
  }
}
