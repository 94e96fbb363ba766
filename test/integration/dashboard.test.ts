// dashboardHandler() mounted in an Express app before the gate, on a real SQLite store: its page, its headers, its two APIs.
import { once } from 'node:events';
import { get, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gunzipSync } from 'node:zlib';
import express from 'express';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dashboardHandler, DASHBOARD_CSP, tokenGate } from '../../dist/src/index.js';
import { createStorage } from '../../dist/src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDbPath, tempDir } from '../helpers/gate.js';

const ADMIN = 'dashboard-admin-token-0123456789';
let storage: Storage;
let app: express.Express;
let key: string;

beforeAll(async () => {
  storage = await createStorage({ databasePath: tempDbPath(), fallbackDir: tempDir(), logger: quietLogger() });
  app = express();
  app.use('/usage', dashboardHandler({ storage, adminToken: ADMIN, logger: quietLogger() }));
  app.use('/bare', dashboardHandler({ storage, logger: quietLogger() }));
  app.use(tokenGate({ storage, logger: quietLogger() }), (_req, res) => res.json({ usage: { total_tokens: 25 } }));
  ({ key } = await storage.createKey({ name: 'frank', tokenLimit: 1000, expiresAt: Date.now() + 86_400_000 }));
});
afterAll(() => storage?.close());

/** The bytes as sent, which supertest and fetch would have decompressed. */
async function rawGet(path: string, encoding: string): Promise<{ status: number; headers: IncomingHttpHeaders; body: Buffer }> {
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const { port } = server.address() as AddressInfo;
    const response = await new Promise<IncomingMessage>((resolve, reject) => get({ host: '127.0.0.1', port, path, headers: { 'accept-encoding': encoding } }, resolve).on('error', reject));
    const chunks: Buffer[] = [];
    for await (const chunk of response) chunks.push(chunk as Buffer);
    return { status: response.statusCode!, headers: response.headers, body: Buffer.concat(chunks) };
  } finally {
    server.close();
  }
}

const withAdmin = (test: request.Test): request.Test => test.set('Authorization', `Bearer ${ADMIN}`);

describe('dashboardHandler', () => {
  it('redirects the bare mount path to the page, which names its hashed script and stylesheet', async () => {
    const redirect = await request(app).get('/usage');
    expect(redirect.status).toBe(308);
    expect(redirect.headers.location).toBe('/usage/');
    const page = await request(app).get('/usage/');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(page.headers['cache-control']).toBe('no-store');
    const assets = [...page.text.matchAll(/(?:src|href)="(app-[0-9a-f]{12}\.(?:js|css))"/g)].map((match) => match[1]);
    expect(assets).toHaveLength(2);
    for (const asset of assets) {
      const served = await rawGet(`/usage/${asset}`, 'gzip');
      expect(served.status).toBe(200);
      expect(served.headers['content-encoding']).toBe('gzip');
      expect(served.headers['cache-control']).toBe('public, max-age=31536000, immutable');
      const plain = await rawGet(`/usage/${asset}`, 'identity');
      expect(plain.headers['content-encoding']).toBeUndefined();
      expect(served.body.length).toBeLessThan(plain.body.length);
      expect(gunzipSync(served.body).equals(plain.body)).toBe(true);
    }
  });

  it('sends its strict Content-Security-Policy and no-cache headers on every answer, its API included', async () => {
    for (const path of ['/usage/', '/usage/api/stats/usage', '/usage/api/admin/keys', '/usage/nothing-here']) {
      const answer = await request(app).get(path);
      expect(answer.headers['content-security-policy']).toBe(DASHBOARD_CSP);
      expect(answer.headers['x-content-type-options']).toBe('nosniff');
      expect(answer.headers['x-frame-options']).toBe('DENY');
      expect(answer.headers['referrer-policy']).toBe('no-referrer');
    }
    expect(DASHBOARD_CSP).toContain("default-src 'none'");
    expect(DASHBOARD_CSP).not.toContain('unsafe');
    expect((await request(app).get('/usage/nothing-here')).status).toBe(404);
  });

  it('answers the caller\'s usage from the header only: a key in the query is not read', async () => {
    await request(app).post('/v1/chat').set('Authorization', `Bearer ${key}`).send({ model: 'm' }).expect(200);
    const usage = await request(app).get('/usage/api/stats/usage').set('Authorization', `Bearer ${key}`);
    expect(usage.status).toBe(200);
    await expect.poll(async () => (await request(app).get('/usage/api/stats/usage').set('Authorization', `Bearer ${key}`)).body.limits[0].used).toBe(25);
    expect((await request(app).get(`/usage/api/stats/usage?key=${key}`)).status).toBe(401);
  });

  it('serves the admin API with the token, and none without a token configured', async () => {
    expect((await request(app).get('/usage/api/admin/keys')).status).toBe(401);
    const listed = await withAdmin(request(app).get('/usage/api/admin/keys?usage=1'));
    expect(listed.status).toBe(200);
    const frank = (listed.body as { keys: { name: string; limits: { name: string; used: number; remaining: number; window_ends_at: string }[] }[] }).keys.find((entry) => entry.name === 'frank')!;
    expect(frank.limits).toMatchObject([{ name: '5h', used: 25, remaining: 975 }]);
    const plain = await withAdmin(request(app).get('/usage/api/admin/keys'));
    expect((plain.body as { keys: { limits: Record<string, unknown>[] }[] }).keys[0]!.limits[0]).not.toHaveProperty('used');
    expect((await withAdmin(request(app).get('/usage/api/admin/keys?usage=yes'))).status).toBe(400);
    expect((await request(app).get('/bare/api/admin/keys').set('Authorization', `Bearer ${ADMIN}`)).status).toBe(404);
    expect((await request(app).get('/bare/')).status).toBe(200);
  });
});
