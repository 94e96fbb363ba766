// Chaos: PostgreSQL stopped mid-traffic and started again; every token lands in it exactly once.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDir } from '../helpers/gate.js';
import { startPostgres, type PostgresServer } from '../helpers/postgres.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('the database goes away under load', () => {
  let pg: PostgresServer;
  let storage: Storage;
  let upstream: Upstream;
  let server: Server;
  let base: string;

  beforeAll(async () => {
    pg = await startPostgres();
    storage = await createStorage({ databaseUrl: pg.url, fallbackDir: tempDir(), fallbackTimeoutMs: 1000, logger: quietLogger() });
    // The upstream reports a different, known usage for every request: 10 + (n % 13).
    upstream = await startUpstream((_req, body, res) => {
      const n = (JSON.parse(body.toString()) as { n: number }).n;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ usage: { total_tokens: 10 + (n % 13) } }));
    });
    const { app } = createProxyApp({ storage, upstreamUrl: upstream.url, gate: { logger: quietLogger() } });
    server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await storage.close();
    await upstream.close();
    await pg.close();
  });

  it('answers every request with a 2xx or a correct 429, and after recovery the database holds exactly what the upstream reported', async () => {
    const keys = await Promise.all([
      storage.createKey({ name: 'big-a', tokenLimit: 10_000_000, expiresAt: Date.now() + 3600_000 }),
      storage.createKey({ name: 'big-b', tokenLimit: 10_000_000, expiresAt: Date.now() + 3600_000 }),
      storage.createKey({ name: 'small', tokenLimit: 2_000, expiresAt: Date.now() + 3600_000 }),
    ]);
    const reported = new Map<string, { tokens: number; requests: number }>(keys.map((k) => [k.record.id, { tokens: 0, requests: 0 }]));
    const statuses = new Map<number, number>();
    const modes = new Set<string>();
    let n = 0;
    let running = true;
    const worker = async (): Promise<void> => {
      while (running) {
        const i = n++;
        const key = keys[i % keys.length]!;
        const response = await fetch(`${base}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key.key}`, 'content-type': 'application/json' },
          body: JSON.stringify({ n: i, max_tokens: 30 }),
        });
        const body = (await response.json()) as { usage?: { total_tokens: number }; error?: { type: string } };
        statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
        modes.add(storage.health().mode);
        if (response.status === 200) {
          const sum = reported.get(key.record.id)!;
          sum.tokens += body.usage!.total_tokens;
          sum.requests += 1;
        } else {
          expect(response.status).toBe(429);
          expect(body.error?.type).toBe('rate_limit_exceeded');
          expect(Number(response.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
        }
      }
    };
    const load = Promise.all(Array.from({ length: 8 }, worker));

    await sleep(1000);
    await pg.stop();
    await sleep(3000);
    const duringOutage = storage.health();
    await pg.start();
    await sleep(1500);
    running = false;
    await load;

    expect(duringOutage.mode).toBe('fallback');
    expect(duringOutage.journalPendingRecords).toBeGreaterThan(0);
    expect([...statuses.keys()].sort()).toEqual(statuses.has(429) ? [200, 429] : [200]);
    expect(modes).toEqual(new Set(['primary', 'fallback']));
    await expect.poll(() => storage.health(), { timeout: 20_000, interval: 100 }).toMatchObject({ mode: 'primary', journalPendingRecords: 0 });
    expect(storage.health().lastReplay?.records).toBeGreaterThan(0);

    const sql = postgres(pg.url, { max: 1 });
    try {
      for (const { record } of keys) {
        const [row] = await sql`select total_lifetime_tokens::int as tokens, total_requests::int as requests,
          (select coalesce(sum(tokens), 0)::int from usage_buckets where key_id = ${record.id}) as window,
          (select coalesce(json_agg(json_build_object('id', id, 'tokens', tokens, 'expiresAt', expires_at)), '[]') from reservations
            where key_id = ${record.id} and not starts_with(id, 'lease:')) as reservations
          from api_keys where id = ${record.id}`;
        const expected = reported.get(record.id)!;
        // Leftover reservations are listed whole: their ids (UUIDv7, so their time) tell which request left them.
        expect({ key: record.name, ...row }).toEqual({ key: record.name, tokens: expected.tokens, requests: expected.requests, window: expected.tokens, reservations: [] });
      }
    } finally {
      await sql.end();
    }
  });
});
