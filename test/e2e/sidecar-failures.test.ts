// `tokengate serve` under bad input and bad upstreams: right status, no reservation left, still serving.
import net from 'node:net';
import type http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../helpers/sidecar.js';
import { hang, json, reset, startUpstream, type Upstream } from '../helpers/upstream.js';

const BODY_LIMIT = 1024;
let upstream: Upstream;
let sidecar: Sidecar;

beforeAll(async () => {
  upstream = await startUpstream();
  sidecar = await startSidecar({ UPSTREAM_URL: upstream.url, UPSTREAM_TIMEOUT_MS: '1000', BODY_LIMIT: String(BODY_LIMIT), ALLOW_QUERY_KEY: 'true' });
});
afterAll(async () => {
  await sidecar?.stop();
  await upstream?.close();
});

function chat(target: Sidecar, key: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${target.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: '{"model":"m","messages":[]}',
    ...init,
  });
}

/** After a failure: nothing reserved, and the same key is served normally again. */
async function expectRecoveredAfter(target: Sidecar, key: string, requests: number): Promise<void> {
  const stats = await target.settled(key, requests);
  expect(stats.current_usage.reserved_tokens).toBe(0);
  upstream.respond = json({ usage: { total_tokens: 1 } });
  const again = await chat(target, key);
  expect(again.status).toBe(200);
  await again.text();
  expect(target.process.exitCode).toBeNull();
}

async function expectUpstreamError(response: Response, status: number, code: string): Promise<void> {
  expect(response.status).toBe(status);
  expect(((await response.json()) as { error: Record<string, unknown> }).error).toMatchObject({ type: 'upstream_error', code });
}

describe('oversized request bodies', () => {
  it('get 413 whether declared or chunked, and never reach the upstream', async () => {
    const { key } = await sidecar.createKey();
    const hits = upstream.hits;
    const declared = await chat(sidecar, key, { body: JSON.stringify({ model: 'm', pad: 'x'.repeat(BODY_LIMIT) }) });
    expect(declared.status).toBe(413);
    expect(((await declared.json()) as { error: { code: string } }).error.code).toBe('request_too_large');
    const big = Buffer.alloc(BODY_LIMIT * 4, 0x61);
    const chunked = await chat(sidecar, key, {
      body: new ReadableStream({
        start(controller) {
          controller.enqueue(big);
          controller.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    expect(chunked.status).toBe(413);
    expect(upstream.hits).toBe(hits);
    expect((await sidecar.stats(key)).current_usage.reserved_tokens).toBe(0);
  });
});

describe('a client that disconnects mid-stream', () => {
  it('aborts the upstream request, is charged what streamed, and leaves no reservation', async () => {
    let upstreamClosed!: () => void;
    const closed = new Promise<void>((resolve) => (upstreamClosed = resolve));
    upstream.respond = (_req, _body, res: http.ServerResponse) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const timer = setInterval(() => res.write(`data: ${JSON.stringify({ choices: [{ delta: { content: 'tick' } }] })}\n\n`), 20);
      res.write('data: {"choices":[{"delta":{"content":"first"}}]}\n\n');
      res.on('close', () => {
        clearInterval(timer);
        upstreamClosed();
      });
    };
    const { key } = await sidecar.createKey();
    const abort = new AbortController();
    const response = await chat(sidecar, key, { signal: abort.signal });
    const reader = response.body!.getReader();
    await reader.read();
    abort.abort();
    await closed; // the upstream saw its request end: the sidecar aborted it
    const stats = await sidecar.settled(key, 1);
    expect(stats.total_lifetime_tokens).toBeGreaterThan(0);
    await expectRecoveredAfter(sidecar, key, 1);
  });
});

describe('upstream failures', () => {
  it('a reset connection gives 502 and charges nothing', async () => {
    upstream.respond = reset;
    const { key } = await sidecar.createKey();
    await expectUpstreamError(await chat(sidecar, key), 502, 'bad_gateway');
    expect((await sidecar.settled(key, 1)).total_lifetime_tokens).toBe(0);
    await expectRecoveredAfter(sidecar, key, 1);
  });

  it('a reset after the headers went out ends the client connection', async () => {
    upstream.respond = (req, _body, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {}\n\n', () => setTimeout(() => req.socket.resetAndDestroy(), 50));
    };
    const { key } = await sidecar.createKey();
    const response = await chat(sidecar, key);
    expect(response.status).toBe(200);
    await expect(response.text()).rejects.toThrow();
    await expectRecoveredAfter(sidecar, key, 1);
  });

  it('an upstream that does not answer within UPSTREAM_TIMEOUT_MS gives 504', async () => {
    upstream.respond = hang;
    const { key } = await sidecar.createKey();
    await expectUpstreamError(await chat(sidecar, key), 504, 'upstream_timeout');
    await expectRecoveredAfter(sidecar, key, 1);
  });

  it('an unreachable upstream gives 502', async () => {
    const closedPort = await new Promise<number>((resolve) => {
      const server = net.createServer().listen(0, '127.0.0.1', () => {
        const { port } = server.address() as net.AddressInfo;
        server.close(() => resolve(port));
      });
    });
    const nowhere = await startSidecar({ UPSTREAM_URL: `http://127.0.0.1:${closedPort}` });
    try {
      const { key } = await nowhere.createKey();
      await expectUpstreamError(await chat(nowhere, key), 502, 'bad_gateway');
      const stats = await nowhere.settled(key, 1);
      expect(stats.current_usage.reserved_tokens).toBe(0);
      expect((await chat(nowhere, key)).status).toBe(502); // still serving
    } finally {
      await nowhere.stop();
    }
  });
});

describe('credentials', () => {
  it('without UPSTREAM_API_KEY no credentials reach the upstream, and an api_key query parameter is removed', async () => {
    upstream.respond = json({ ok: true });
    const { key } = await sidecar.createKey();
    const response = await fetch(`${sidecar.url}/v1/models?a=1&api_key=${key}&b=%20`);
    expect(response.status).toBe(200);
    expect(upstream.last!.url).toBe('/v1/models?a=1&b=%20');
    expect(upstream.last!.headers.authorization).toBeUndefined();
    expect(upstream.last!.headers['x-api-key']).toBeUndefined();
  });
});
