// `tokengate serve` for operators: /healthz, /readyz and /metrics ungated, scheduled backups, no secret in logs.
import { readdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/gate.js';
import { scrape } from '../helpers/metrics.js';
import { ADMIN_TOKEN, startSidecar, type Sidecar } from '../helpers/sidecar.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

let upstream: Upstream;
let sidecar: Sidecar;
const backupDir = tempDir();

beforeAll(async () => {
  upstream = await startUpstream(json({ usage: { total_tokens: 12 } }));
  sidecar = await startSidecar({ UPSTREAM_URL: upstream.url, BACKUP_SCHEDULE: '*/1 * * * * *', BACKUP_DIR: backupDir, BACKUP_RETAIN: '2', LOG_LEVEL: 'debug' });
});
afterAll(async () => {
  await sidecar?.stop();
  await upstream?.close();
});

describe('the sidecar for operators', () => {
  it('answers /healthz and /readyz without a key, and never proxies them', async () => {
    const hits = upstream.hits;
    const health = await fetch(`${sidecar.url}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ status: 'ok', mode: 'primary', backend: 'sqlite', database: { up: true }, journalPendingRecords: 0 });
    const ready = await fetch(`${sidecar.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ ready: true, status: 'ok' });
    expect(upstream.hits).toBe(hits);
  });

  it('counts what it gated in /metrics, next to the default process metrics and the last backup time', async () => {
    const { key } = await sidecar.createKey({ token_limit_per_5h: 1000 });
    const call = (k?: string) => fetch(`${sidecar.url}/v1/chat/completions`, { method: 'POST', headers: k ? { authorization: `Bearer ${k}` } : {}, body: '{}' });
    expect((await call(key)).status).toBe(200);
    expect((await call(key)).status).toBe(200);
    expect((await call()).status).toBe(401);
    await sidecar.settled(key, 2);

    const metrics = await scrape(`${sidecar.url}/metrics`);
    expect(metrics.value('tokengate_requests_total', { outcome: 'admitted' })).toBe(2);
    expect(metrics.value('tokengate_requests_total', { outcome: 'unauthenticated' })).toBe(1);
    expect(metrics.value('tokengate_tokens_total', { source: 'reported' })).toBe(24);
    expect(metrics.value('tokengate_reserved_tokens')).toBe(0);
    expect(metrics.value('tokengate_storage_up', { backend: 'sqlite' })).toBe(1);
    expect(metrics.value('tokengate_fallback_active')).toBe(0);
    expect(metrics.names()).toContain('process_cpu_user_seconds_total');

    await expect.poll(async () => (await scrape(`${sidecar.url}/metrics`)).value('tokengate_last_backup_timestamp_seconds'), { timeout: 10_000 }).toBeGreaterThan(0);
    const last = (await scrape(`${sidecar.url}/metrics`)).value('tokengate_last_backup_timestamp_seconds')!;
    expect(Math.abs(last - Date.now() / 1000)).toBeLessThan(60);
    // Every second a backup, of which the newest two are kept.
    await expect.poll(() => readdirSync(backupDir).filter((name) => name.endsWith('.json.gz')).length, { timeout: 10_000 }).toBe(2);
    expect(readdirSync(backupDir).every((name) => name.startsWith('tokengate-sqlite-'))).toBe(true);

    const text = sidecar.stdout() + sidecar.stderr() + metrics.text;
    expect(text).not.toContain(key);
    expect(text).not.toContain(ADMIN_TOKEN);
  });
});
