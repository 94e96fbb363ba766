// A PostgreSQL server that stops and starts again (its own, not the run's shared one).
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import { StorageError } from '../../src/errors.js';
import { createLogger } from '../../src/ops/logger.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { startPostgres, type PostgresServer } from '../helpers/postgres.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

describe('PostgreSQL going away and coming back', () => {
  let pg: PostgresServer;
  let storage: Storage;
  let upstream: Upstream;
  let server: Server;
  let url: string;

  beforeAll(async () => {
    pg = await startPostgres();
    storage = await createStorage({ databaseUrl: pg.url, connectTimeoutSeconds: 2 });
    upstream = await startUpstream(json({ usage: { total_tokens: 7 } }));
    const app = createProxyApp({ storage, upstreamUrl: upstream.url, gate: { logger: createLogger(new PassThrough()) } });
    server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/chat/completions`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    await storage.close();
    await upstream.close();
    await pg.close();
  });

  it('answers 503 with Retry-After while the database is down, never reaching the upstream, and recovers', async () => {
    const { key, record } = await storage.createKey({ name: 'outage', tokenLimit: 1000, expiresAt: Date.now() + 3600_000 });
    const call = () => fetch(url, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}' });
    expect((await call()).status).toBe(200);

    await pg.stop();
    const hits = upstream.hits;
    const down = await call();
    expect(down.status).toBe(503);
    expect(down.headers.get('retry-after')).toBe('1');
    expect(((await down.json()) as { error: { type: string } }).error.type).toBe('service_unavailable');
    expect(upstream.hits).toBe(hits);
    const error = await storage.listKeys().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StorageError);
    expect((error as StorageError).transient).toBe(true);

    await pg.start();
    await expect.poll(async () => (await call()).status, { timeout: 10_000, interval: 200 }).toBe(200);
    await expect.poll(async () => (await storage.getKey(record.id))?.totalLifetimeTokens).toBeGreaterThanOrEqual(14);
  });
});
