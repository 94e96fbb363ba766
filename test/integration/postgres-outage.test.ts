// A PostgreSQL server that stops and starts again (its own, not the run's shared one).
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import postgres from 'postgres';
import { StorageError } from '../../src/errors.js';
import { digestKey } from '../../src/keys/secret.js';
import { createLogger } from '../../src/logger.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { tempDir, quietLogger } from '../helpers/gate.js';
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
    storage = await createStorage({ fallbackDir: tempDir(), logger: quietLogger(), databaseUrl: pg.url, connectTimeoutSeconds: 2 });
    upstream = await startUpstream(json({ usage: { total_tokens: 7 } }));
    const { app } = createProxyApp({ storage, upstreamUrl: upstream.url, gate: { logger: createLogger(new PassThrough()) } });
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

  it('decides known keys from the file fallback while the database is down, 503 only for keys it cannot know, then recovers', async () => {
    const { key, record } = await storage.createKey({ name: 'outage', tokenLimit: 1000, expiresAt: Date.now() + 3600_000 });
    // A key written to the database behind the gate's back: its fallback snapshot cannot know it.
    const sql = postgres(pg.url, { max: 1, onnotice: () => undefined });
    await sql`insert into api_keys (id, key_hash, key_prefix, name, token_limit_per_5h, expiry_date, created_at)
              values ('key_unseen', ${digestKey('tg-unseen-key')}, 'tg', 'unseen', 1000, ${Date.now() + 3600_000}, ${Date.now()})`;
    await sql.end();
    const call = (k: string) => fetch(url, { method: 'POST', headers: { authorization: `Bearer ${k}` }, body: '{}' });
    expect((await call(key)).status).toBe(200);
    await expect.poll(async () => (await storage.getKey(record.id))?.totalRequests).toBe(1); // recorded before the outage

    await pg.stop();
    const hits = upstream.hits;
    expect((await call(key)).status).toBe(200);
    await expect.poll(() => storage.health()).toMatchObject({ mode: 'fallback', journalPendingRecords: 1 });
    const unknown = await call('tg-unseen-key');
    expect(unknown.status).toBe(503);
    expect(unknown.headers.get('retry-after')).toBe('1');
    expect(((await unknown.json()) as { error: { type: string } }).error.type).toBe('service_unavailable');
    expect(upstream.hits).toBe(hits + 1);
    const error = await storage.createKey({ name: 'x', tokenLimit: 1, expiresAt: Date.now() + 1000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StorageError);
    expect((error as StorageError).transient).toBe(true);

    await pg.start();
    await expect.poll(() => storage.health(), { timeout: 15_000, interval: 100 }).toMatchObject({ mode: 'primary', journalPendingRecords: 0, lastReplay: { records: 1 } });
    expect(await storage.getKey(record.id)).toMatchObject({ totalRequests: 2, totalLifetimeTokens: 14 });
    expect((await call('tg-unseen-key')).status).toBe(200);
  });
});
