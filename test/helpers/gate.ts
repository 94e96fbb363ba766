// Starts the example proxy (the real one users copy) on loopback, gated by tokenGate on a temp SQLite file.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import { createStorage } from '../../src/storage/create.js';
import { createLogger } from '../../src/logger.js';
import type { Storage, KeyRecord } from '../../src/storage/types.js';
import type { TokenGateOptions } from '../../middleware/options.js';
import { tempDbPath } from './temp.js';
import type { Upstream } from './upstream.js';

export interface Clock {
  now(): number;
  advance(ms: number): void;
}

export function manualClock(start = Date.UTC(2026, 10, 28, 12, 0, 0)): Clock {
  let t = start;
  return { now: () => t, advance: (ms) => void (t += ms) };
}

export interface Gate {
  url: string;
  storage: Storage;
  dbPath: string;
  clock: Clock;
  /** Every log line the gate wrote, parsed. */
  logs: Record<string, unknown>[];
  createKey(tokenLimit: number, expiresInMs?: number): Promise<{ key: string; record: KeyRecord }>;
  /** Waits until the key has `count` recorded requests (usage is settled after the response ends). */
  settled(keyId: string, count: number): Promise<KeyRecord>;
  close(): Promise<void>;
}

// Most test files take their temp directories from here, next to the gate that uses them.
export { tempDbPath, tempDir } from './temp.js';

/** A logger that keeps its lines to itself (for tests that do not read them). */
export const quietLogger = () => createLogger(new Writable({ write: (_chunk, _encoding, done) => done() }));

/** Serves the example proxy on a new temp SQLite file, or on `store` when given (its `dbPath` is then ''). */
export async function startGate(upstream: Upstream, gate: Partial<TokenGateOptions> = {}, store?: Storage): Promise<Gate> {
  const dbPath = store ? '' : tempDbPath();
  const storage = store ?? (await createStorage({ databasePath: dbPath }));
  const clock = manualClock();
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) logs.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  const logger = createLogger(sink);
  const { app, proxy } = createProxyApp({ storage, upstreamUrl: upstream.url, gate: { now: clock.now, logger, ...gate } });
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    storage,
    dbPath,
    clock,
    logs,
    createKey: (tokenLimit, expiresInMs = 24 * 3600_000) => storage.createKey({ name: 'test', tokenLimit, expiresAt: clock.now() + expiresInMs }, clock.now()),
    async settled(keyId, count) {
      for (let i = 0; i < 400; i++) {
        const record = await storage.getKey(keyId);
        if (record && record.totalRequests >= count) return record;
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      throw new Error(`key ${keyId} did not reach ${count} recorded requests`);
    },
    async close() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
      await proxy.close();
      await storage.close();
    },
  };
}

/** POSTs a chat-completions style JSON body with the key as a Bearer token. */
export function post(gate: Gate, key: string | undefined, body: unknown = { model: 'm', messages: [] }, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${gate.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key === undefined ? {} : { authorization: `Bearer ${key}` }), ...headers },
    body: JSON.stringify(body),
  });
}
