// `tokengate serve` as a child process: admin-made keys enforced, exact /stats, streaming, byte-exact forwarding.
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSidecar, type Sidecar } from '../helpers/sidecar.js';
import { heldStream, json, sse, startUpstream, type Respond, type Upstream } from '../helpers/upstream.js';

const UPSTREAM_KEY = 'sk-upstream-secret';
const okUsage = json({ id: 'x', usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } });

let upstream: Upstream;
let sidecar: Sidecar;

beforeAll(async () => {
  upstream = await startUpstream(okUsage);
  sidecar = await startSidecar({ UPSTREAM_URL: `${upstream.url}/base/`, UPSTREAM_API_KEY: UPSTREAM_KEY, OVERRIDE_MODEL: 'true', INCLUDE_STREAM_USAGE: 'true' });
});
afterAll(async () => {
  await sidecar?.stop();
  await upstream?.close();
});

function chat(key: string | undefined, body: unknown = { model: 'm', messages: [] }, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${sidecar.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key === undefined ? {} : { authorization: `Bearer ${key}` }), ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

function answering(respond: Respond): void {
  upstream.respond = respond;
}

describe('keys created through the admin API', () => {
  it('are enforced: 401 unknown, 403 expired, 200 within the limit, 429 over it; refusals never reach the upstream', async () => {
    answering(json({ usage: { total_tokens: 50 } }));
    const hits = upstream.hits;
    expect((await chat('tg-not-a-key-that-exists')).status).toBe(401);
    expect((await chat(undefined)).status).toBe(401);
    const expired = await sidecar.createKey();
    expect((await sidecar.admin('PATCH', `/admin/keys/${expired.id}`, { expiry_date: '2020-01-01T00:00:00Z' })).status).toBe(200);
    const refused = await chat(expired.key);
    expect(refused.status).toBe(403);
    expect(((await refused.json()) as { error: { type: string } }).error.type).toBe('permission_error');
    expect(upstream.hits).toBe(hits);

    const small = await sidecar.createKey({ token_limit_per_5h: 10 });
    const ok = await chat(small.key);
    expect(ok.status).toBe(200);
    expect(ok.headers.get('x-ratelimit-limit-tokens')).toBe('10');
    await ok.text();
    expect(upstream.hits).toBe(hits + 1);
    await sidecar.settled(small.key, 1);
    const limited = await chat(small.key);
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(((await limited.json()) as { error: { type: string; tokens_used: number } }).error).toMatchObject({ type: 'rate_limit_exceeded', tokens_used: 50 });
    expect(upstream.hits).toBe(hits + 1);
  });
});

describe('/stats matches the usage the upstream reports', () => {
  const openAiChunk = (content: string) => ({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content } }], usage: null });
  const cases: [string, Respond, 'authorization' | 'x-api-key', number][] = [
    ['OpenAI JSON', json({ choices: [], usage: { prompt_tokens: 120, completion_tokens: 37, total_tokens: 157 } }), 'authorization', 157],
    [
      'OpenAI SSE',
      sse([openAiChunk('Hel'), openAiChunk('lo'), { object: 'chat.completion.chunk', choices: [], usage: { prompt_tokens: 11, completion_tokens: 2, total_tokens: 13 } }, '[DONE]']),
      'authorization',
      13,
    ],
    ['Anthropic JSON', json({ type: 'message', content: [], usage: { input_tokens: 10, output_tokens: 20, cache_creation_input_tokens: 5, cache_read_input_tokens: 100 } }), 'x-api-key', 135],
    [
      'Anthropic SSE',
      sse([
        { type: 'message_start', message: { id: 'msg', usage: { input_tokens: 25, output_tokens: 1, cache_creation_input_tokens: 7, cache_read_input_tokens: 3 } } },
        { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hi' } },
        { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 15 } },
        { type: 'message_delta', delta: {}, usage: { output_tokens: 42 } },
        { type: 'message_stop' },
      ]),
      'x-api-key',
      25 + 42 + 7 + 3,
    ],
  ];

  it.each(cases)('%s', async (_name, respond, header, tokens) => {
    answering(respond);
    const { key } = await sidecar.createKey();
    const response = await chat(undefined, { model: 'm', messages: [] }, header === 'x-api-key' ? { 'x-api-key': key } : { authorization: `Bearer ${key}` });
    expect(response.status).toBe(200);
    await response.text();
    const stats = await sidecar.settled(key, 1);
    expect(stats.current_usage.tokens_used_in_current_window).toBe(tokens);
    expect(stats.total_lifetime_tokens).toBe(tokens);
    expect(stats.current_usage.reserved_tokens).toBe(0);
  });
});

describe('streaming', () => {
  it('delivers a 1 MB stream intact, its first bytes before the upstream has finished', async () => {
    const head = Buffer.from('data: first chunk\n\n');
    const rest = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < rest.length; i++) rest[i] = (i * 31 + 7) % 256;
    let release!: () => void;
    // The upstream sends the rest only after this test has read the head through the sidecar.
    answering(heldStream(head, rest, new Promise<void>((resolve) => (release = resolve))));
    const { key } = await sidecar.createKey();
    const response = await chat(key);
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    const received: Buffer[] = [];
    let size = 0;
    while (size < head.length) {
      const { value, done } = await reader.read();
      if (done) throw new Error('the stream ended before its head arrived');
      received.push(Buffer.from(value));
      size += value.length;
    }
    expect(Buffer.concat(received).subarray(0, head.length).equals(head)).toBe(true);
    release();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      received.push(Buffer.from(value));
    }
    expect(Buffer.concat(received).equals(Buffer.concat([head, rest]))).toBe(true);
    const stats = await sidecar.settled(key, 1);
    expect(stats.total_lifetime_tokens).toBeGreaterThan(0); // no usage in the body: an estimate, never zero
  });
});

describe('forwarding', () => {
  it('keeps method, path, query and a binary body byte for byte; swaps the key for UPSTREAM_API_KEY in Bearer style', async () => {
    answering(json({ ok: true }));
    const { key } = await sidecar.createKey();
    const body = Buffer.alloc(4096);
    for (let i = 0; i < body.length; i++) body[i] = i % 256;
    const path = '/v1/files/a%2Fb/x%20y?b=2&a=%20x&x=y+z&empty=&dup=1&dup=2&%E2%9C%93=%F0%9D%84%9E';
    const response = await fetch(`${sidecar.url}${path}`, { method: 'PUT', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/octet-stream', 'x-custom': 'kept' }, body });
    expect(response.status).toBe(200);
    const seen = upstream.last!;
    expect(seen.method).toBe('PUT');
    expect(seen.url).toBe(`/base${path}`);
    expect(seen.body.equals(body)).toBe(true);
    expect(seen.headers['x-custom']).toBe('kept');
    expect(seen.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
    expect(seen.headers['x-api-key']).toBeUndefined();
    expect(JSON.stringify(seen.headers)).not.toContain(key);
  });

  it('keeps a unicode JSON body byte for byte, and sends UPSTREAM_API_KEY as x-api-key when the client used x-api-key', async () => {
    answering(json({ ok: true }));
    const { key } = await sidecar.createKey();
    const text = '{ "model" : "m",\n "messages": [{"role":"user","content":"héllo ✓ 𝄞 \\u00e9"}] }';
    // Not a completions path: INCLUDE_STREAM_USAGE re-serializes those.
    const response = await fetch(`${sidecar.url}/v1/responses`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': key }, body: text });
    expect(response.status).toBe(200);
    const seen = upstream.last!;
    expect(seen.body.equals(Buffer.from(text, 'utf8'))).toBe(true);
    expect(seen.headers['x-api-key']).toBe(UPSTREAM_KEY);
    expect(seen.headers.authorization).toBeUndefined();
  });

  it('drops hop-by-hop headers both ways, including those the Connection header names', async () => {
    answering((_req, _body, res) => {
      res.writeHead(200, {
        'content-type': 'application/json',
        connection: 'x-response-hop',
        'x-response-hop': 'dropped',
        'proxy-authenticate': 'Basic realm="x"',
        trailer: 'x-checksum',
        'x-response-kept': 'kept',
      });
      res.end('{}');
    });
    const { key } = await sidecar.createKey();
    const answer = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const request = http.request(`${sidecar.url}/v1/echo`, {
        method: 'POST',
        agent: false,
        headers: {
          authorization: `Bearer ${key}`,
          'content-type': 'application/json',
          connection: 'close, x-request-hop',
          'x-request-hop': 'dropped',
          'keep-alive': 'timeout=5',
          'proxy-authorization': 'Basic eDp5',
          te: 'trailers',
          trailer: 'x-checksum',
          'x-request-kept': 'kept',
        },
      });
      request.on('response', resolve).on('error', reject);
      request.end('{}');
    });
    answer.resume();
    expect(answer.statusCode).toBe(200);
    const sent = upstream.last!.headers;
    for (const name of ['x-request-hop', 'keep-alive', 'proxy-authorization', 'te', 'trailer']) expect(sent[name], name).toBeUndefined();
    expect(sent['x-request-kept']).toBe('kept');
    for (const name of ['x-response-hop', 'proxy-authenticate', 'trailer', 'keep-alive']) expect(answer.headers[name], name).toBeUndefined();
    expect(answer.headers['x-response-kept']).toBe('kept');
  });
});

describe('body rewrites', () => {
  it('OVERRIDE_MODEL replaces the model with the key model and fixes Content-Length', async () => {
    answering(json({ usage: { total_tokens: 1 } }));
    const { key } = await sidecar.createKey({ model: 'forced-model' });
    expect((await chat(key, { model: 'something-else', messages: [{ role: 'user', content: 'é' }] })).status).toBe(200);
    const seen = upstream.last!;
    expect(JSON.parse(seen.body.toString('utf8'))).toEqual({ model: 'forced-model', messages: [{ role: 'user', content: 'é' }] });
    expect(Number(seen.headers['content-length'])).toBe(seen.body.length);
  });

  it('INCLUDE_STREAM_USAGE asks streaming chat completions for usage, whatever the client chose', async () => {
    answering(sse(['[DONE]']));
    const { key } = await sidecar.createKey();
    await (await chat(key, { model: 'm', stream: true, messages: [] })).text();
    expect(JSON.parse(upstream.last!.body.toString('utf8'))).toEqual({ model: 'm', stream: true, messages: [], stream_options: { include_usage: true } });
    for (const chosen of [false, null]) {
      await (await chat(key, { model: 'm', stream: true, stream_options: { include_usage: chosen }, messages: [] })).text();
      expect(JSON.parse(upstream.last!.body.toString('utf8'))).toEqual({ model: 'm', stream: true, stream_options: { include_usage: true }, messages: [] });
    }
  });
});
