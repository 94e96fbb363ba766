// /healthz and /readyz over HTTP for each state of a real store, read from the background monitor.
import { rmSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterEach, describe, expect, it } from 'vitest';
import { healthHandler, readyHandler } from '../../middleware/ops.js';
import { monitorStorage, type StorageMonitor } from '../../src/ops/health.js';
import { createMetrics } from '../../src/ops/metrics.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDbPath, tempDir } from '../helpers/gate.js';
import { parseExposition } from '../helpers/metrics.js';

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

async function serve(monitor: StorageMonitor): Promise<string> {
  const app = express();
  app.get('/healthz', healthHandler(monitor));
  app.get('/readyz', readyHandler(monitor));
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  cleanup.push(() => new Promise((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function get(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(url);
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

function watch(storage: Storage, metrics = createMetrics({ defaultMetrics: false })) {
  const monitor = monitorStorage(storage, { metrics, intervalMs: 50 });
  cleanup.push(() => monitor.stop());
  return { monitor, metrics };
}

describe('health of a SQLite store', () => {
  it('is ok and ready while the file answers', async () => {
    const storage = await createStorage({ databasePath: tempDbPath(), logger: quietLogger() });
    cleanup.push(() => storage.close());
    const { monitor, metrics } = watch(storage);
    await monitor.probe();
    const base = await serve(monitor);
    const health = await get(`${base}/healthz`);
    expect(health.status).toBe(200);
    expect(health.body).toMatchObject({ status: 'ok', mode: 'primary', backend: 'sqlite', database: { backend: 'sqlite', up: true, lastError: null }, journalPendingRecords: 0, lastFailure: null, lastReplay: null });
    expect(typeof (health.body.database as { latencyMs: unknown }).latencyMs).toBe('number');
    expect(await get(`${base}/readyz`)).toEqual({ status: 200, body: { ready: true, status: 'ok' } });
    expect(parseExposition(await metrics.registry.metrics()).value('tokengate_storage_up', { backend: 'sqlite' })).toBe(1);
  });

  it('is unhealthy and not ready once the store is closed', async () => {
    const storage = await createStorage({ databasePath: tempDbPath(), logger: quietLogger() });
    const { monitor, metrics } = watch(storage);
    await monitor.probe();
    await storage.close();
    const base = await serve(monitor);
    await expect.poll(async () => (await get(`${base}/healthz`)).status, { timeout: 5_000 }).toBe(503);
    const health = await get(`${base}/healthz`);
    expect(health.body).toMatchObject({ status: 'unhealthy', database: { up: false } });
    expect(String((health.body.database as { lastError: unknown }).lastError)).toMatch(/not open/);
    expect(await get(`${base}/readyz`)).toEqual({ status: 503, body: { ready: false, status: 'unhealthy' } });
    expect(parseExposition(await metrics.registry.metrics()).value('tokengate_storage_up', { backend: 'sqlite' })).toBe(0);
  });

  it('is unhealthy when the database file was removed under it', async () => {
    const path = tempDbPath();
    const storage = await createStorage({ databasePath: path, logger: quietLogger() });
    cleanup.push(() => storage.close());
    const { monitor } = watch(storage);
    await monitor.probe();
    const base = await serve(monitor);
    expect((await get(`${base}/readyz`)).status).toBe(200);
    for (const file of [path, `${path}-wal`, `${path}-shm`]) rmSync(file, { force: true });
    await expect.poll(async () => (await get(`${base}/readyz`)).status, { timeout: 5_000 }).toBe(503);
    const health = await get(`${base}/healthz`);
    expect(health.status).toBe(503);
    expect(String((health.body.database as { lastError: unknown }).lastError)).toMatch(/was removed/);
  });
});

describe('health of the file store alone', () => {
  it('is ok, with its journal counted', async () => {
    const storage = await createStorage({ storage: 'file', fallbackDir: tempDir(), logger: quietLogger() });
    cleanup.push(() => storage.close());
    const { monitor } = watch(storage);
    await monitor.probe();
    const base = await serve(monitor);
    expect(await get(`${base}/healthz`)).toMatchObject({ status: 200, body: { status: 'ok', backend: 'file', mode: 'primary' } });
  });
});
