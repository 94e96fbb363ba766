// Key extraction and authentication through a real gated proxy on loopback.
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGate, type Gate } from '../helpers/gate.js';
import { rawRequest } from '../helpers/raw-http.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const okBody = { id: 'x', usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } };

describe('authentication', () => {
  let upstream: Upstream;
  let gate: Gate;
  let key: string;
  let other: { key: string; id: string };

  beforeAll(async () => {
    upstream = await startUpstream(json(okBody));
    gate = await startGate(upstream, { allowQueryKey: true });
    key = (await gate.createKey(100_000)).key;
    const created = await gate.createKey(100_000);
    other = { key: created.key, id: created.record.id };
  });
  afterAll(async () => {
    await gate.close();
    await upstream.close();
  });

  const call = (headers: Record<string, string>, query = ''): Promise<Response> =>
    fetch(`${gate.url}/v1/chat/completions${query}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: '{}' });

  const rejected401: [string, Record<string, string>, string][] = [
    ['no key', {}, 'missing_api_key'],
    ['an empty bearer', { authorization: 'Bearer ' }, 'missing_api_key'],
    ['an empty x-api-key', { 'x-api-key': '' }, 'missing_api_key'],
    ['Basic credentials', { authorization: 'Basic x' }, 'missing_api_key'],
    ['a bearer with a space inside', { authorization: 'Bearer a b' }, 'invalid_api_key'],
    ['an unknown key', { authorization: 'Bearer tg-unknownunknownunknown' }, 'invalid_api_key'],
    ['a 10 kB key', { authorization: `Bearer ${'k'.repeat(10_240)}` }, 'invalid_api_key'],
    ['a key with a tab', { 'x-api-key': 'ab\tcd' }, 'invalid_api_key'],
  ];

  it.each(rejected401)('answers 401 for %s, and the upstream never sees it', async (_name, headers, code) => {
    const hits = upstream.hits;
    const response = await call(headers);
    expect(response.status).toBe(401);
    const body = (await response.json()) as { error: Record<string, unknown> };
    expect(body.error).toMatchObject({ type: 'authentication_error', code });
    expect(typeof body.error.message).toBe('string');
    expect(upstream.hits).toBe(hits);
  });

  it.each([
    ['a newline', 'ab%0Acd'],
    ['a NUL', 'ab%00cd'],
  ])('answers 401 for a key with %s (through ?api_key=) without reaching the upstream', async (_name, encoded) => {
    const hits = upstream.hits;
    const response = await call({}, `?api_key=${encoded}`);
    expect(response.status).toBe(401);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe('invalid_api_key');
    expect(upstream.hits).toBe(hits);
  });

  it('never lets a header with a NUL or newline through: the HTTP parser refuses it first', async () => {
    const hits = upstream.hits;
    const port = Number(new URL(gate.url).port);
    for (const raw of ['x-api-key: ab\u0000cd', 'Authorization: Bearer ab\rcd']) {
      const status = await new Promise<string>((resolve) => {
        const socket = net.connect(port, '127.0.0.1', () => {
          socket.end(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n${raw}\r\nContent-Length: 0\r\n\r\n`);
        });
        let text = '';
        socket.on('data', (chunk) => (text += chunk.toString('latin1')));
        socket.on('close', () => resolve(text.split('\r\n')[0] ?? ''));
        socket.on('error', () => resolve('error'));
      });
      expect(status).toMatch(/^HTTP\/1\.1 (400|401)/);
    }
    expect(upstream.hits).toBe(hits);
  });

  it('answers 403 for an expired key, without reaching the upstream', async () => {
    const expired = await gate.storage.createKey({ name: 'old', tokenLimit: 1000, expiresAt: gate.clock.now() - 1 });
    const hits = upstream.hits;
    const response = await call({ authorization: `Bearer ${expired.key}` });
    expect(response.status).toBe(403);
    expect(((await response.json()) as { error: Record<string, unknown> }).error).toMatchObject({ type: 'permission_error', code: 'key_expired' });
    expect(upstream.hits).toBe(hits);
  });

  it.each([
    ['bearer K', (k: string) => ({ authorization: `bearer ${k}` })],
    ['BEARER   K  ', (k: string) => ({ authorization: `BEARER   ${k}  ` })],
    ['x-api-key: K', (k: string) => ({ 'x-api-key': k })],
    ['?api_key=K when allowed', () => ({})],
  ])('admits %s', async (name, headers) => {
    const hits = upstream.hits;
    const response = await call(headers(key), name.startsWith('?') ? `?api_key=${encodeURIComponent(key)}` : '');
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual(okBody);
    expect(upstream.hits).toBe(hits + 1);
  });

  it('takes Authorization over x-api-key', async () => {
    const response = await call({ authorization: `Bearer ${other.key}`, 'x-api-key': 'tg-not-a-real-key' });
    expect(response.status).toBe(200);
    expect((await gate.settled(other.id, 1)).totalRequests).toBe(1);
    const rejected = await call({ authorization: 'Bearer tg-not-a-real-key', 'x-api-key': other.key });
    expect(rejected.status).toBe(401);
    expect((await gate.storage.getKey(other.id))?.totalRequests).toBe(1);
  });

  it('reads x-api-key when the Bearer is empty', async () => {
    expect((await call({ authorization: 'Bearer  ', 'x-api-key': key })).status).toBe(200);
  });

  it('does not forward the client key to the upstream, in headers or query', async () => {
    await call({ authorization: `Bearer ${key}` });
    expect(upstream.last?.headers.authorization).toBeUndefined();
    expect(JSON.stringify(upstream.last?.headers)).not.toContain(key);
    await call({}, `?api_key=${encodeURIComponent(key)}&stream=1`);
    expect(upstream.last?.url).toBe('/v1/chat/completions?stream=1');
  });

  it('does not forward a query key however its name is encoded', async () => {
    for (const name of ['api%5Fkey', 'api%5fkey', '%61pi_key']) {
      const response = await call({}, `?x=%2Fa&${name}=${encodeURIComponent(key)}`);
      expect(response.status).toBe(200);
      expect(upstream.last?.url).toBe('/v1/chat/completions?x=%2Fa');
    }
  });

  it('does not forward the headers the Connection header names, nor hop-by-hop ones', async () => {
    const hits = upstream.hits;
    const answer = await rawRequest(gate.url, `POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer ${key}\r\nConnection: keep-alive, X-Internal-Secret\r\nX-Internal-Secret: s3cret\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\n{}`);
    expect(answer.status).toBe(200);
    expect(upstream.hits).toBe(hits + 1);
    expect(upstream.last?.headers['x-internal-secret']).toBeUndefined();
    expect(upstream.last?.headers['keep-alive']).toBeUndefined();
    expect(upstream.last?.headers['x-kept']).toBe('yes');
  });
});

describe('query keys are off by default', () => {
  it('ignores ?api_key= unless allowQueryKey is set', async () => {
    const upstream = await startUpstream(json(okBody));
    const gate = await startGate(upstream);
    try {
      const { key } = await gate.createKey(1000);
      const response = await fetch(`${gate.url}/v1/chat/completions?api_key=${key}`, { method: 'POST', body: '{}' });
      expect(response.status).toBe(401);
      expect(upstream.hits).toBe(0);
    } finally {
      await gate.close();
      await upstream.close();
    }
  });
});
