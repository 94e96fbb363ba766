// Responses cut short: what a key is charged when the client leaves mid-stream, recorded in SQLite.
import http from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { startProxyGate, type ProxyGate } from '../helpers/proxy-gate.js';
import { startUpstream, type Respond, type Upstream } from '../helpers/upstream.js';

let upstream: Upstream | undefined;
let gate: ProxyGate | undefined;
afterEach(async () => {
  await gate?.close();
  await upstream?.close();
  gate = upstream = undefined;
});

async function setup(respond: Respond): Promise<ProxyGate> {
  upstream = await startUpstream(respond);
  gate = await startProxyGate(upstream.url);
  return gate;
}

const TEXT = 'The quick brown fox jumps over the lazy dog. '.repeat(20); // 900 characters per event

/** Streams `first`, then `event(i)` until `limit` events or the client leaves; never the final events. */
function endless(contentType: string, first: string[], event: (i: number) => string, limit = 5000): Respond {
  return (_req, _body, res) => {
    res.writeHead(200, { 'content-type': contentType });
    for (const line of first) res.write(line);
    let i = 0;
    const next = (): void => {
      while (!res.destroyed && i < limit) {
        if (!res.write(event(i++))) return void res.once('drain', next);
      }
    };
    next();
  };
}

const sseLine = (event: Record<string, unknown>): string => `event: ${String(event.type ?? 'message')}\ndata: ${JSON.stringify(event)}\n\n`;

interface Received {
  bytes: number;
  text: number;
}

/**
 * POSTs `body` and reads the event stream, adding up the generated text it carries (`textOf`, per
 * event), until `stopAt` characters arrived; then destroys the connection.
 */
function readThenLeave(gateUrl: string, key: string, path: string, body: string, textOf: (event: Record<string, unknown>) => number, stopAt: number): Promise<Received> {
  return new Promise((resolve, reject) => {
    const request = http.request(`${gateUrl}${path}`, { method: 'POST', agent: false, headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' } }, (response) => {
      const received = { bytes: 0, text: 0 };
      let pending = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        received.bytes += Buffer.byteLength(chunk);
        pending += chunk;
        const events = pending.split('\n\n');
        pending = events.pop() ?? '';
        for (const event of events) {
          const data = event.split('\n').find((line) => line.startsWith('data: '));
          if (data) received.text += textOf(JSON.parse(data.slice(6)) as Record<string, unknown>);
        }
        if (received.text >= stopAt) {
          request.destroy();
          resolve(received);
        }
      });
      response.on('end', () => reject(new Error('the stream ended before the client left')));
    });
    request.on('error', () => undefined);
    request.end(body);
  });
}

describe('a stream the client leaves', () => {
  it('Anthropic, before message_delta, after 200 kB of text: charged at least the text received / 4 (message_start usage does not end the count)', async () => {
    const start = { type: 'message_start', message: { id: 'msg', usage: { input_tokens: 25, output_tokens: 1 } } };
    const { url, key, charged } = await setup(
      endless('text/event-stream', [sseLine(start)], () => sseLine({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: TEXT } })),
    );
    const body = JSON.stringify({ model: 'claude', max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'hi' }] });
    const received = await readThenLeave(url, key, '/v1/messages', body, (event) => ((event.delta as { text?: string } | undefined)?.text ?? '').length, 200_000);
    expect(received.text).toBeGreaterThanOrEqual(200_000);
    const tokens = await charged();
    expect(tokens).toBeGreaterThanOrEqual(Math.ceil(received.text / 4) + Math.ceil(body.length / 4));
    // Text the client did not get (still in the upstream or the socket buffers) is charged within bounds.
    expect(tokens).toBeLessThan(Math.ceil((5000 * TEXT.length) / 4));
  });

  it('OpenAI chat with include_usage, before its usage chunk, after 200 kB of text: charged at least the text received / 4', async () => {
    const chunk = { id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: TEXT } }], usage: null };
    const { url, key, charged } = await setup(endless('text/event-stream', [], () => `data: ${JSON.stringify(chunk)}\n\n`));
    const body = JSON.stringify({ model: 'gpt', stream: true, stream_options: { include_usage: true }, messages: [] });
    const textOf = (event: Record<string, unknown>): number => ((event.choices as { delta: { content: string } }[])[0]?.delta.content ?? '').length;
    const received = await readThenLeave(url, key, '/v1/chat/completions', body, textOf, 200_000);
    expect(await charged()).toBeGreaterThanOrEqual(Math.ceil(received.text / 4) + Math.ceil(body.length / 4));
  });

  it('OpenAI Responses API, before response.completed, after 200 kB of output_text deltas: charged at least the text received / 4', async () => {
    const created = { type: 'response.created', response: { id: 'r', status: 'in_progress', usage: null } };
    const { url, key, charged } = await setup(
      endless('text/event-stream', [sseLine(created)], (i) => sseLine({ type: 'response.output_text.delta', item_id: 'm', output_index: 0, content_index: 0, sequence_number: i, delta: TEXT })),
    );
    const body = JSON.stringify({ model: 'gpt', stream: true, input: 'hi' });
    const textOf = (event: Record<string, unknown>): number => (event.type === 'response.output_text.delta' ? String(event.delta).length : 0);
    const received = await readThenLeave(url, key, '/v1/responses', body, textOf, 200_000);
    expect(await charged()).toBeGreaterThanOrEqual(Math.ceil(received.text / 4) + Math.ceil(body.length / 4));
  });

  it('right after the response headers, with a 40 kB prompt: charged at least the prompt estimate', async () => {
    const { url, key, charged } = await setup((_req, _body, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.flushHeaders();
    });
    const body = JSON.stringify({ model: 'gpt', stream: true, messages: [{ role: 'user', content: 'x'.repeat(40_000) }] });
    await new Promise<void>((resolve) => {
      const request = http.request(`${url}/v1/chat/completions`, { method: 'POST', agent: false, headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' } }, (response) => {
        expect(response.statusCode).toBe(200);
        request.destroy();
        resolve();
      });
      request.on('error', () => undefined);
      request.end(body);
    });
    expect(body.length).toBeGreaterThan(40_000);
    expect(await charged()).toBeGreaterThanOrEqual(10_000);
  });
});

describe('garbage from the upstream', () => {
  it.each([
    ['truncated SSE', 'text/event-stream', 'data: {"type":"message_start","message":{"usage":{"input_tokens":3,'],
    ['malformed JSON', 'application/json', '{"id": "x", "usage": {"total_tokens": 12,,}'],
    ['binary noise as JSON', 'application/json', '\u0000\u00ff\u0010garbage'],
  ])('%s: charged an estimate, never zero', async (_name, type, payload) => {
    const { url, key, charged } = await setup((_req, _body, res) => {
      res.writeHead(200, { 'content-type': type });
      res.end(payload);
    });
    const response = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: '{"model":"m"}' });
    expect(response.status).toBe(200);
    await response.text();
    expect(await charged()).toBe(Math.ceil(('{"model":"m"}'.length + Buffer.byteLength(payload)) / 4));
  });
});
