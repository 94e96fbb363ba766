// PostgreSQL stopped and started under a gate with metrics and health: what operators see, and what logs never hold.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import { monitorStorage, type StorageMonitor } from '../../src/ops/health.js';
import { createLogger } from '../../src/logger.js';
import { createMetrics, type TokenGateMetrics } from '../../src/ops/metrics.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { tempDir } from '../helpers/gate.js';
import { scrape } from '../helpers/metrics.js';
import { startPostgres, type PostgresServer } from '../helpers/postgres.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('observing a database outage', () => {
  let pg: PostgresServer;
  let storage: Storage;
  let metrics: TokenGateMetrics;
  let monitor: StorageMonitor;
  let upstream: Upstream;
  let server: Server;
  let base: string;
  /** Every log line anything wrote, from the start of the store on, at level debug. */
  const lines: string[] = [];
  /** Every /metrics text scraped. */
  const scrapes: string[] = [];
  /** Every key issued (created before the outages: key changes need the database). */
  const keys: string[] = [];
  let main: string;
  let bearer: string;
  let header: string;
  let query: string;

  beforeAll(async () => {
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter((line) => line.trim()));
        done();
      },
    });
    const logger = createLogger(sink, 'debug');
    pg = await startPostgres();
    storage = await createStorage({ databaseUrl: pg.url, fallbackDir: tempDir(), logger });
    metrics = createMetrics({ perKeyLabels: true });
    monitor = monitorStorage(storage, { metrics, logger });
    upstream = await startUpstream(json({ usage: { total_tokens: 9 } }));
    const { app } = createProxyApp({ storage, upstreamUrl: upstream.url, gate: { metrics, logger, allowQueryKey: true }, monitor });
    server = await new Promise((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    main = await newKey();
    bearer = await newKey();
    header = await newKey();
    query = await newKey();
  });
  afterAll(async () => {
    monitor.stop();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await storage.close();
    await upstream.close();
    await pg.close();
  });

  const health = async () => {
    const response = await fetch(`${base}/healthz`);
    const text = await response.text();
    return { status: response.status, text, body: JSON.parse(text) as { status: string; mode: string; backend: string; database: { up: boolean }; journalPendingRecords: number } };
  };
  const metricsNow = async () => {
    const m = await scrape(`${base}/metrics`);
    scrapes.push(m.text);
    return m;
  };
  const call = (headers: Record<string, string>, query = '') =>
    fetch(`${base}/v1/chat/completions${query}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ model: 'm', max_tokens: 5 }) });
  async function newKey(): Promise<string> {
    const { key } = await storage.createKey({ name: 'ops', tokenLimit: 1_000_000, expiresAt: Date.now() + 3600_000 });
    keys.push(key);
    return key;
  }

  it('answers degraded within 1 s of the database stopping, counts the journal, and is ok again after it returns', async () => {
    const key = main;
    await expect.poll(async () => (await health()).body.status, { timeout: 10_000 }).toBe('ok');
    const reported = async (): Promise<number> => (await metricsNow()).value('tokengate_tokens_total', { source: 'reported' }) ?? 0;
    const reportedBefore = await reported();
    expect((await call({ authorization: `Bearer ${key}` })).status).toBe(200);
    // Its usage is in the database before it stops: a record still on its way would be journaled
    // after the count below is read, and the journal would hold one more than the three counted.
    await expect.poll(reported, { timeout: 5_000 }).toBeGreaterThan(reportedBefore);

    await pg.stop();
    const stoppedAt = Date.now();
    let seen = await health();
    while (seen.body.status !== 'degraded' && Date.now() - stoppedAt < 1000) {
      await sleep(20);
      seen = await health();
    }
    expect(seen.status).toBe(200);
    expect(seen.body).toMatchObject({ status: 'degraded', mode: 'fallback', backend: 'file', database: { up: false } });
    expect(seen.text).not.toContain(new URL(pg.url).password);

    const during = await metricsNow();
    expect(during.value('tokengate_fallback_active')).toBe(1);
    expect(during.value('tokengate_storage_up', { backend: 'postgres' })).toBe(0);
    const pendingBefore = during.value('tokengate_journal_pending_records') ?? -1;
    for (let i = 0; i < 3; i++) expect((await call({ authorization: `Bearer ${key}` })).status).toBe(200);
    await expect.poll(async () => (await metricsNow()).value('tokengate_journal_pending_records'), { timeout: 5_000 }).toBe(pendingBefore + 3);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);

    await pg.start();
    await expect.poll(async () => (await health()).body.status, { timeout: 30_000, interval: 100 }).toBe('ok');
    const after = await metricsNow();
    expect(after.value('tokengate_fallback_active')).toBe(0);
    expect(after.value('tokengate_journal_pending_records')).toBe(0);
    expect(after.value('tokengate_storage_up', { backend: 'postgres' })).toBe(1);
    expect((await health()).body).toMatchObject({ mode: 'primary', backend: 'postgres', database: { up: true }, journalPendingRecords: 0 });
  });

  it('never writes a plaintext key to any log line or to /metrics, through errors, an outage and scrapes', async () => {
    const unknown = `tg-never-issued-${Date.now()}`;
    keys.push(unknown);
    expect((await call({ authorization: `Bearer ${bearer}` })).status).toBe(200);
    expect((await call({ 'x-api-key': header })).status).toBe(200);
    expect((await call({}, `?api_key=${query}`)).status).toBe(200);
    expect((await call({ authorization: `Bearer ${unknown}` })).status).toBe(401);
    upstream.respond = json({ usage: { total_tokens: 'many' } }); // unreadable usage: a warning
    expect((await call({ authorization: `Bearer ${bearer}` })).status).toBe(200);
    upstream.respond = json({ usage: { total_tokens: 9 } });
    await metricsNow();

    await pg.stop();
    await expect.poll(async () => (await health()).body.status, { timeout: 5_000 }).toBe('degraded');
    expect((await call({ 'x-api-key': header })).status).toBe(200);
    expect((await call({ authorization: `Bearer ${unknown}` })).status).toBe(503); // unknown to the snapshot: logged as an error
    await metricsNow();
    await pg.start();
    await expect.poll(async () => (await health()).body.status, { timeout: 30_000, interval: 100 }).toBe('ok');
    await metricsNow();

    const messages = lines.map((line) => (JSON.parse(line) as { msg: string }).msg);
    // The sequence really went through every path that logs (so the check below is not vacuous) ...
    expect(messages).toEqual(
      expect.arrayContaining(['database migrations applied', 'database unreachable: deciding from the file store', 'database back: journal replayed, deciding from the database again', 'upstream usage could not be read exactly', 'key lookup failed']),
    );
    // ... with one line per state change: two outages, two recoveries.
    expect(messages.filter((msg) => msg === 'database unreachable: deciding from the file store')).toHaveLength(2);
    expect(messages.filter((msg) => msg === 'database back: journal replayed, deciding from the database again')).toHaveLength(2);
    for (const key of keys) {
      for (const line of lines) expect(line).not.toContain(key);
      for (const text of scrapes) expect(text).not.toContain(key);
    }
    expect(scrapes.at(-1)).toMatch(/tokengate_key_requests_total\{key_id="key_/);
    for (const line of lines) expect(line).not.toContain(new URL(pg.url).password);
  });
});
