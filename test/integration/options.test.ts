// User callbacks: a custom refusal handler, estimates that are not numbers or that throw, skip.
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import express from 'express';
import { afterEach, describe, expect, it } from 'vitest';
import { tokenGate } from '../../middleware/gate.js';
import type { TokenGateOptions } from '../../middleware/options.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { createLogger } from '../../src/logger.js';
import { PassThrough } from 'node:stream';
import { tempDbPath } from '../helpers/gate.js';

let server: Server | undefined;
let storage: Storage | undefined;
afterEach(async () => {
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  await storage?.close();
});

async function app(options: Partial<TokenGateOptions>): Promise<{ url: string; key: string; keyId: string }> {
  storage = await createStorage({ databasePath: tempDbPath() });
  const { key, record } = await storage.createKey({ name: 'o', tokenLimit: 1000, expiresAt: Date.now() + 3600_000 });
  const express_ = express();
  express_.use(tokenGate({ storage, logger: createLogger(new PassThrough()), ...options }), (req, res) => res.json({ reserved: req.tokenGate?.usage.reserved ?? null }));
  server = await new Promise<Server>((resolve) => {
    const s = express_.listen(0, '127.0.0.1', () => resolve(s));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, key, keyId: record.id };
}

describe('options', () => {
  it('runs a custom handler with the refusal status already set', async () => {
    const { url } = await app({ handler: (_req, res, _next, rejection) => void res.json({ mine: rejection.code }) });
    const response = await fetch(url, { method: 'POST', body: '{}' });
    expect(response.status).toBe(401);
    expect(await response.json()).toEqual({ mine: 'missing_api_key' });
  });

  it.each([Number.NaN, undefined, -3, 'many'])('falls back to the default estimate when estimate() returns %s', async (value) => {
    const { url, key } = await app({ estimate: () => value as number });
    const body = JSON.stringify({ max_tokens: 10 });
    const response = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body });
    expect(await response.json()).toEqual({ reserved: Math.ceil(body.length / 4) + 10 });
  });

  it('answers 500 when estimate() throws, holding no reservation', async () => {
    const { url, key, keyId } = await app({
      estimate: () => {
        throw new Error('bug in estimate');
      },
    });
    expect((await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}' })).status).toBe(500);
    expect((await storage!.windowUsage(keyId, Date.now(), 5 * 3600_000)).reserved).toBe(0);
  });

  it('lets skipped requests through unauthenticated and uncounted', async () => {
    const { url, keyId } = await app({ skip: (req) => req.path === '/health' });
    expect(await (await fetch(`${url}/health`)).json()).toEqual({ reserved: null });
    expect((await fetch(`${url}/other`)).status).toBe(401);
    expect((await storage!.getKey(keyId))?.totalRequests).toBe(0);
  });
});
