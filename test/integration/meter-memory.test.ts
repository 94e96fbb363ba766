// A response whose usage waits for its batch to commit is not kept in memory by the gate meanwhile
// (on PostgreSQL that wait is a round trip: long enough to move every response to the old generation).
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import express from 'express';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { tokenGate } from '../../middleware/gate.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDbPath } from '../helpers/gate.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

let storage: Storage | undefined;
let server: Server | undefined;
afterAll(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve));
  await storage?.close();
});

describe('memory while usage is recorded', () => {
  it('lets the request and response go before their record commits', async () => {
    storage = await createStorage({ databasePath: tempDbPath(), logger: quietLogger() });
    const real = storage;
    // The real SQLite store, its settle held back until the test lets it go.
    let letGo!: () => void;
    const held = new Promise<void>((resolve) => (letGo = resolve));
    let waiting = 0;
    const slow: Storage = Object.create(real, {
      settle: {
        value: async (...args: Parameters<Storage['settle']>) => {
          waiting++;
          await held;
          return real.settle(...args);
        },
      },
    }) as Storage;
    const gate = tokenGate({ storage: slow, logger: quietLogger() });
    const refs: WeakRef<object>[] = [];
    const app = express();
    app.use(gate, (req, res) => {
      refs.push(new WeakRef(req), new WeakRef(res));
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ usage: { total_tokens: 7 } }));
    });
    server = await new Promise<Server>((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    const { record, key } = await real.createKey({ name: 'gc', tokenLimit: 1000, expiresAt: Date.now() + 3600_000 });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    for (let i = 0; i < 3; i++) {
      const response = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${key}`, connection: 'close' }, body: '{}' });
      expect(await response.text()).toContain('total_tokens');
    }
    await vi.waitUntil(() => waiting >= 3, { timeout: 5000, interval: 5 });

    for (let i = 0; i < 5 && refs.some((ref) => ref.deref() !== undefined); i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      gc();
    }
    expect(refs.filter((ref) => ref.deref() !== undefined)).toHaveLength(0);

    letGo();
    await gate.settled();
    expect((await real.getKey(record.id))?.totalLifetimeTokens).toBe(21);
  });
});
