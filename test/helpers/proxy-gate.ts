// tokenGate in front of the sidecar's proxy, in this process, on a temp SQLite file, with /metrics.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type RequestHandler } from 'express';
import { tokenGate, type TokenGateMiddleware } from '../../middleware/gate.js';
import { metricsHandler } from '../../middleware/ops.js';
import { createMetrics } from '../../src/ops/metrics.js';
import { proxy as createProxy } from '../../src/sidecar/proxy.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDbPath } from './gate.js';
import { scrape, type Scrape } from './metrics.js';

export interface ProxyGate {
  url: string;
  storage: Storage;
  gate: TokenGateMiddleware;
  key: string;
  keyId: string;
  /** Tokens recorded for the key once its `requests` responses are settled. */
  charged(requests?: number): Promise<number>;
  metrics(): Promise<Scrape>;
  close(): Promise<void>;
}

/** Serves tokenGate + `handler` (default: the sidecar's proxy to `upstreamUrl`) with one key of a large limit. */
export async function startProxyGate(upstreamUrl: string, handler?: RequestHandler): Promise<ProxyGate> {
  const storage = await createStorage({ databasePath: tempDbPath(), logger: quietLogger() });
  const metrics = createMetrics({ defaultMetrics: false });
  const gate = tokenGate({ storage, metrics, logger: quietLogger() });
  const proxy = createProxy({ target: upstreamUrl, timeoutMs: 30_000, logger: quietLogger() });
  const app = express();
  app.get('/metrics', metricsHandler(metrics));
  app.use('/v1', gate, handler ?? proxy);
  const server = await new Promise<http.Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  const { key, record } = await storage.createKey({ name: 'aborts', tokenLimit: 100_000_000, expiresAt: Date.now() + 3600_000 });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    storage,
    gate,
    key,
    keyId: record.id,
    async charged(requests = 1) {
      for (let i = 0; i < 1000; i++) {
        await gate.settled();
        const found = await storage.getKey(record.id);
        if (found && found.totalRequests >= requests) return found.totalLifetimeTokens;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      throw new Error('the request was never recorded');
    },
    metrics: () => scrape(`${url}/metrics`),
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await proxy.close();
      await storage.close();
    },
  };
}
