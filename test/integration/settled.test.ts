// gate.settled(): resolves only once the usage of every ended response is recorded in the store.
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tokenGate } from '../../middleware/gate.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDbPath } from '../helpers/gate.js';

let storage: Storage;

beforeAll(async () => {
  storage = await createStorage({ databasePath: tempDbPath(), logger: quietLogger() });
});
afterAll(async () => {
  await storage?.close();
});

describe('gate.settled()', () => {
  it('waits for recordings that start when responses finish', async () => {
    const gate = tokenGate({ storage, logger: quietLogger() });
    const seenAfterSettled: Promise<number>[] = [];
    const app = express();
    app.use(gate, (_req, res) => {
      // Recording starts on 'finish' and is still under way when this listener runs.
      res.once('finish', () => seenAfterSettled.push(gate.settled().then(async () => (await storage.getKey(id))?.totalRequests ?? -1)));
      // A compressed body is decoded off the main thread, so recording takes more than a few microtasks.
      res.setHeader('content-type', 'application/json');
      res.setHeader('content-encoding', 'gzip');
      res.end(gzipSync(JSON.stringify({ usage: { total_tokens: 9 } })));
    });
    const { record, key } = await storage.createKey({ name: 't', tokenLimit: 1000, expiresAt: Date.now() + 3600_000 });
    const id = record.id;
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
      const responses = await Promise.all([1, 2, 3].map(() => fetch(url, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}' })));
      for (const response of responses) expect(response.status).toBe(200);
      const counts = await Promise.all(seenAfterSettled);
      // Each finish saw at least its own request recorded once settled() resolved.
      expect(counts.every((count) => count >= 1)).toBe(true);
      expect(Math.max(...counts)).toBe(3);
      await gate.settled();
      expect((await storage.getKey(id))?.totalLifetimeTokens).toBe(27);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
