// The gate reads the body for its estimate and leaves it intact for whatever runs after it.
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import express from 'express';
import request from 'supertest';
import { afterEach, describe, expect, it } from 'vitest';
import { tokenGate } from '../../middleware/gate.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { post, startGate, tempDbPath, type Gate } from '../helpers/gate.js';
import { rawRequest } from '../helpers/raw-http.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function listen(app: express.Express): Promise<string> {
  const server = await new Promise<http.Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function newStorage(): Promise<Storage> {
  const storage = await createStorage({ databasePath: tempDbPath() });
  cleanups.push(() => storage.close());
  return storage;
}

/** Sends a body in several chunks with Transfer-Encoding: chunked. */
function sendChunked(url: string, key: string, parts: Buffer[]): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' } }, (res) => {
      let body = '';
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    let i = 0;
    const next = (): void => {
      if (i === parts.length) return void req.end();
      req.write(parts[i++]);
      setTimeout(next, 5);
    };
    next();
  });
}

describe('request body', () => {
  let upstream: Upstream;
  let gate: Gate;
  afterEach(async () => {
    await gate?.close();
    await upstream?.close();
  });

  it('reaches the upstream byte for byte through the proxy, sent chunked or whole', async () => {
    upstream = await startUpstream(json({ usage: { total_tokens: 1 } }));
    gate = await startGate(upstream);
    const { key } = await gate.createKey(1_000_000);
    const text = JSON.stringify({ messages: [{ role: 'user', content: 'héllo 🌍 '.repeat(5000) }], max_tokens: 10 });
    const raw = Buffer.from(text);
    const parts = [raw.subarray(0, 7), raw.subarray(7, 40_001), raw.subarray(40_001)];
    expect((await sendChunked(`${gate.url}/v1/chat/completions`, key, parts)).status).toBe(200);
    expect(upstream.last?.body.equals(raw)).toBe(true);
    const whole = await post(gate, key, JSON.parse(text));
    expect(whole.status).toBe(200);
    expect(upstream.last?.body.equals(raw)).toBe(true);
  });

  it('answers 413 before any lookup when the declared or streamed body is over the limit', async () => {
    upstream = await startUpstream(json({ usage: { total_tokens: 1 } }));
    gate = await startGate(upstream, { bodyLimit: 1000 });
    const { key } = await gate.createKey(1_000_000);
    const big = { messages: [{ content: 'x'.repeat(2000) }] };
    const declared = await post(gate, 'tg-unknown-key-but-too-large', big);
    expect(declared.status).toBe(413);
    expect(((await declared.json()) as { error: { code: string } }).error.code).toBe('request_too_large');
    const streamed = await sendChunked(`${gate.url}/v1/chat/completions`, key, [Buffer.from('{"a":"'), Buffer.alloc(1500, 0x61), Buffer.from('"}')]);
    expect(streamed.status).toBe(413);
    expect(upstream.hits).toBe(0);
  });
});

describe('with body parsers', () => {
  it('leaves the raw stream for express.json() mounted after the gate', async () => {
    const storage = await newStorage();
    const { key } = await storage.createKey({ name: 'a', tokenLimit: 10_000, expiresAt: Date.now() + 3600_000 });
    const app = express();
    app.use(tokenGate({ storage }), express.json(), (req, res) => res.json({ echoed: req.body as unknown, gate: req.tokenGate?.usage.reserved }));
    const url = await listen(app);
    const body = { messages: [{ content: 'ünïcode' }], max_tokens: 50 };
    const response = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(await response.json()).toEqual({ echoed: body, gate: Math.ceil(Buffer.byteLength(JSON.stringify(body)) / 4) + 50 });
    const chunked = await sendChunked(url, key, [Buffer.from('{"max_tokens":'), Buffer.from('7}')]);
    expect(JSON.parse(chunked.body)).toEqual({ echoed: { max_tokens: 7 }, gate: Math.ceil(15 / 4) + 7 });
  });

  it('does not hang a later parser on an empty chunked body', async () => {
    const storage = await newStorage();
    const { key } = await storage.createKey({ name: 'a', tokenLimit: 10_000, expiresAt: Date.now() + 3600_000 });
    const app = express();
    app.use(tokenGate({ storage }), express.json(), (req, res) => res.json({ body: (req.body as unknown) ?? null }));
    const url = await listen(app);
    const response = await sendChunked(url, key, []);
    expect(response.status).toBe(200);
    expect(JSON.parse(response.body)).toEqual({ body: {} });
  });

  it('leaves an empty chunked body readable by data/end listeners', async () => {
    const storage = await newStorage();
    const { key } = await storage.createKey({ name: 'a', tokenLimit: 10_000, expiresAt: Date.now() + 3600_000 });
    const app = express();
    app.use(tokenGate({ storage }), (req, res) => {
      let bytes = 0;
      req.on('data', (chunk: Buffer) => (bytes += chunk.length));
      req.on('end', () => res.json({ bytes }));
    });
    const url = await listen(app);
    expect(JSON.parse((await sendChunked(url, key, [])).body)).toEqual({ bytes: 0 });
    expect(JSON.parse((await sendChunked(url, key, [Buffer.from('abc'), Buffer.from('de')])).body)).toEqual({ bytes: 5 });
  });

  it('does not wait for a body an earlier middleware already read without setting req.body', async () => {
    const storage = await newStorage();
    const { key } = await storage.createKey({ name: 'a', tokenLimit: 10_000, expiresAt: Date.now() + 3600_000 });
    const app = express();
    app.use(
      (req, _res, next) => {
        req.on('data', () => undefined);
        req.on('end', () => next());
      },
      tokenGate({ storage }),
      (req, res) => res.json({ reserved: req.tokenGate?.usage.reserved }),
    );
    const response = await request(app).post('/').set('authorization', `Bearer ${key}`).send('x'.repeat(100)).timeout(5000);
    expect(response.body).toEqual({ reserved: 1 });
  });

  it('uses req.body parsed by express.json() mounted before the gate', async () => {
    const storage = await newStorage();
    const { key } = await storage.createKey({ name: 'a', tokenLimit: 10_000, expiresAt: Date.now() + 3600_000 });
    const app = express();
    app.use(express.json(), tokenGate({ storage }), (req, res) => res.json({ echoed: req.body as unknown, reserved: req.tokenGate?.usage.reserved }));
    const body = { prompt: 'p'.repeat(400), max_completion_tokens: 100 };
    const response = await request(app).post('/').set('authorization', `Bearer ${key}`).send(body);
    expect(response.body).toEqual({ echoed: body, reserved: Math.ceil(JSON.stringify(body).length / 4) + 100 });
  });
});

describe('uploads from clients that cannot or will not finish', () => {
  let upstream: Upstream;
  let gate: Gate;
  afterEach(async () => {
    await gate?.close();
    await upstream?.close();
  });

  const upload = (key: string, length: number | 'chunked'): string =>
    `POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\n${length === 'chunked' ? 'Transfer-Encoding: chunked' : `Content-Length: ${length}`}\r\n\r\n`;
  const chunk = (bytes: number): Buffer => Buffer.concat([Buffer.from(`${bytes.toString(16)}\r\n`), Buffer.alloc(bytes, 0x20), Buffer.from('\r\n')]);

  it('answers an unknown or expired key before reading its body, and closes the connection while the body is still coming', async () => {
    upstream = await startUpstream(json({ usage: { total_tokens: 1 } }));
    gate = await startGate(upstream);
    const expired = await gate.createKey(1000, 1);
    gate.clock.advance(10);
    for (const [key, status] of [['tg-unknown-key', 401], [expired.key, 403]] as const) {
      const answer = await rawRequest(gate.url, upload(key, 9 * 1024 * 1024), { body: Buffer.alloc(1000, 0x20), trickle: Buffer.alloc(1000, 0x20) });
      expect(answer.status).toBe(status);
      await answer.closed;
    }
    expect(upstream.hits).toBe(0);
  });

  it('gives a body slower than bodyTimeoutMs 408, closes its connection and reserves nothing', async () => {
    upstream = await startUpstream(json({ usage: { total_tokens: 1 } }));
    gate = await startGate(upstream, { bodyTimeoutMs: 300 });
    const { key, record } = await gate.createKey(1000);
    const answer = await rawRequest(gate.url, upload(key, 5000), { body: Buffer.from('{"model":'), trickle: Buffer.from(' ') });
    expect(answer.status).toBe(408);
    expect(answer.answeredAfterMs).toBeGreaterThanOrEqual(290);
    expect(JSON.parse(answer.body)).toMatchObject({ error: { type: 'invalid_request_error', code: 'request_timeout' } });
    await answer.closed;
    expect(upstream.hits).toBe(0);
    expect(await gate.storage.windowUsage(record.id, gate.clock.now(), 5 * 3600_000)).toMatchObject({ used: 0, reserved: 0 });
  });

  it('holds at most bodyMemoryLimit bytes of bodies at once, declared or chunked, and gives them back', async () => {
    upstream = await startUpstream(json({ usage: { total_tokens: 1 } }));
    gate = await startGate(upstream, { bodyLimit: 60_000, bodyMemoryLimit: 100_000, bodyTimeoutMs: 5000 });
    const { key } = await gate.createKey(1_000_000_000);
    // One upload declares 60 000 bytes and stalls: 40 000 are left for everyone else.
    const stalled = net.connect(Number(new URL(gate.url).port), '127.0.0.1');
    stalled.on('error', () => undefined);
    stalled.write(upload(key, 60_000) + ' '.repeat(100));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const declared = await rawRequest(gate.url, upload(key, 50_000), { trickle: Buffer.alloc(100, 0x20) });
    expect(declared.status).toBe(503);
    expect(declared.head).toMatch(/\r\nretry-after: 1/i);
    expect(JSON.parse(declared.body)).toMatchObject({ error: { type: 'service_unavailable', code: 'overloaded' } });
    const chunked = await rawRequest(gate.url, upload(key, 'chunked'), { body: Buffer.concat([chunk(30_000), chunk(30_000)]), trickle: chunk(100) });
    expect(chunked.status).toBe(503);
    await Promise.all([declared.closed, chunked.closed]);
    // Bodies that fit pass, one after another, each giving its bytes back when done.
    for (let i = 0; i < 5; i++) expect((await post(gate, key, { model: 'm', pad: ' '.repeat(30_000) })).status).toBe(200);
    // The stalled upload ends with the budget it held returned: two bodies of 45 000 bytes at once fit again.
    stalled.destroy();
    await new Promise((resolve) => setTimeout(resolve, 100));
    const both = await Promise.all([0, 1].map(() => post(gate, key, { model: 'm', pad: ' '.repeat(45_000) })));
    expect(both.map((response) => response.status)).toEqual([200, 200]);
    expect(upstream.hits).toBe(7);
  });
});
