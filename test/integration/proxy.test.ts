// proxy() in a user's own app, with no gate in front or behind a body parser: it forwards safely and never crashes.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import request from 'supertest';
import { afterEach, describe, expect, it } from 'vitest';
import { proxy, type ProxyHandler } from '../../src/sidecar/proxy.js';
import { quietLogger } from '../helpers/gate.js';
import { rawRequest } from '../helpers/raw-http.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

let upstream: Upstream;
let server: http.Server | undefined;
let forward: ProxyHandler | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise((resolve) => server?.close(resolve) ?? resolve(undefined));
  await forward?.close();
  await upstream?.close();
  server = forward = undefined;
});

async function serve(app: express.Express): Promise<string> {
  server = await new Promise<http.Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

describe('proxy() on its own', () => {
  it('answers 413 to a body over its limit while the upload is still coming, and the process lives on', async () => {
    upstream = await startUpstream(json({ ok: true }));
    forward = proxy({ target: upstream.url, includeStreamUsage: true, bodyLimit: 1000, logger: quietLogger() });
    const app = express();
    app.use(forward);
    const url = await serve(app);
    const answer = await rawRequest(url, 'POST /v1/chat/completions HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n', { body: Buffer.alloc(5000, 0x20), trickle: Buffer.alloc(1000, 0x20) });
    expect(answer.status).toBe(413);
    await answer.closed;
    // Still serving: the linger close found no socket to pause, and did not throw.
    expect((await fetch(`${url}/v1/models`)).status).toBe(200);
    expect(upstream.hits).toBe(1);
  });

  it('forwards the body a parser mounted before it already read, instead of an empty one', async () => {
    upstream = await startUpstream(json({ ok: true }));
    forward = proxy({ target: upstream.url, logger: quietLogger() });
    const app = express();
    app.use(express.json(), forward);
    expect((await request(app).post('/v1/embeddings').send({ model: 'e', input: 'héllo' })).status).toBe(200);
    expect(JSON.parse(upstream.last!.body.toString('utf8'))).toEqual({ model: 'e', input: 'héllo' });
    expect(Number(upstream.last!.headers['content-length'])).toBe(upstream.last!.body.length);
  });
});
