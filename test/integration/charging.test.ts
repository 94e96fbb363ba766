// Exact charging: what the upstream reports, in each format, is what the key is charged.
import { gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { post, startGate, type Gate } from '../helpers/gate.js';
import { json, sse, startUpstream, type Respond, type Upstream } from '../helpers/upstream.js';

let upstream: Upstream;
let gate: Gate;

async function setup(respond: Respond, options: Parameters<typeof startGate>[1] = {}): Promise<{ key: string; id: string }> {
  upstream = await startUpstream(respond);
  gate = await startGate(upstream, options);
  const { key, record } = await gate.createKey(1_000_000);
  return { key, id: record.id };
}

afterEach(async () => {
  await gate?.close();
  await upstream?.close();
});

async function charged(id: string, requests = 1): Promise<{ window: number; lifetime: number }> {
  const record = await gate.settled(id, requests);
  const window = await gate.storage.windowUsage(id, gate.clock.now(), 5 * 3600_000);
  expect(window.reserved).toBe(0);
  return { window: window.used, lifetime: record.totalLifetimeTokens };
}

const openAiChunk = (content: string) => ({ object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content } }], usage: null });
const anthropicEvents = [
  { type: 'message_start', message: { id: 'msg', usage: { input_tokens: 25, output_tokens: 1, cache_creation_input_tokens: 7, cache_read_input_tokens: 3 } } },
  { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hi' } },
  { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 15 } },
  { type: 'message_delta', delta: {}, usage: { output_tokens: 42 } },
  { type: 'message_stop' },
];

describe('exact charging', () => {
  it('charges OpenAI JSON usage.total_tokens', async () => {
    const { key, id } = await setup(json({ choices: [], usage: { prompt_tokens: 120, completion_tokens: 37, total_tokens: 157 } }));
    expect((await post(gate, key)).status).toBe(200);
    expect(await charged(id)).toEqual({ window: 157, lifetime: 157 });
  });

  it('charges OpenAI SSE from the usage chunk', async () => {
    const events = [openAiChunk('Hel'), openAiChunk('lo'), { object: 'chat.completion.chunk', choices: [], usage: { prompt_tokens: 11, completion_tokens: 2, total_tokens: 13 } }, '[DONE]'];
    const { key, id } = await setup(sse(events));
    const response = await post(gate, key, { stream: true, messages: [] });
    expect(await response.text()).toContain('data: [DONE]');
    expect(await charged(id)).toEqual({ window: 13, lifetime: 13 });
  });

  it('charges Anthropic JSON with its cache fields', async () => {
    const usage = { input_tokens: 10, output_tokens: 20, cache_creation_input_tokens: 5, cache_read_input_tokens: 100 };
    const { key, id } = await setup(json({ type: 'message', content: [], usage }));
    expect((await post(gate, undefined, {}, { 'x-api-key': key })).status).toBe(200);
    expect(await charged(id)).toEqual({ window: 135, lifetime: 135 });
  });

  it('charges Anthropic SSE: message_start, then the latest cumulative message_delta values', async () => {
    const { key, id } = await setup((req, body, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const event of anthropicEvents) res.write(`event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`);
      res.end();
    });
    await (await post(gate, undefined, {}, { 'x-api-key': key })).text();
    expect(await charged(id)).toEqual({ window: 25 + 42 + 7 + 3, lifetime: 77 });
  });

  it('charges usage from a gzip-compressed JSON response', async () => {
    const { key, id } = await setup((_req, _body, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      res.end(gzipSync(JSON.stringify({ usage: { total_tokens: 4321 } })));
    });
    expect(await (await post(gate, key)).json()).toEqual({ usage: { total_tokens: 4321 } });
    expect(await charged(id)).toEqual({ window: 4321, lifetime: 4321 });
  });

  it.each([400, 404, 429, 500, 503])('charges nothing for an upstream %i, but counts the request', async (status) => {
    const { key, id } = await setup(json({ error: { message: 'no' }, usage: { total_tokens: 999 } }, status));
    expect((await post(gate, key)).status).toBe(status);
    expect(await charged(id)).toEqual({ window: 0, lifetime: 0 });
    expect((await gate.storage.getKey(id))?.totalRequests).toBe(1);
  });

  it('charges a failed response when chargeFailedResponses is set', async () => {
    const { key, id } = await setup(json({ usage: { total_tokens: 31 } }, 500), { chargeFailedResponses: true });
    expect((await post(gate, key)).status).toBe(500);
    expect(await charged(id)).toEqual({ window: 31, lifetime: 31 });
  });

  it('charges the estimate, never zero, for a 2xx without usage', async () => {
    const responseBody = JSON.stringify({ result: 'x'.repeat(397) });
    const { key, id } = await setup((_req, _body, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(responseBody);
    });
    const requestBody = { prompt: 'y'.repeat(100) };
    await (await post(gate, key, requestBody)).text();
    const expected = Math.ceil((JSON.stringify(requestBody).length + responseBody.length) / 4);
    expect(await charged(id)).toEqual({ window: expected, lifetime: expected });
  });

  it('takes a numeric usage header for non-LLM upstreams', async () => {
    const { key, id } = await setup((_req, _body, res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'x-tokengate-usage': '77' });
      res.end('done');
    });
    await (await post(gate, key)).text();
    expect(await charged(id)).toEqual({ window: 77, lifetime: 77 });
  });

  it('prefers the getUsage function over the header and the body', async () => {
    const { key, id } = await setup(
      (_req, _body, res) => {
        res.writeHead(200, { 'content-type': 'application/json', 'x-cost': '9' });
        res.end(JSON.stringify({ usage: { total_tokens: 5 } }));
      },
      { getUsage: (_req, res) => Number(res.getHeader('x-cost')) * 2 },
    );
    await (await post(gate, key)).text();
    expect(await charged(id)).toEqual({ window: 18, lifetime: 18 });
  });

  it('streams chunk by chunk: the first chunk reaches the client before the upstream has finished', async () => {
    let upstreamDone = false;
    const events = [openAiChunk('a'), openAiChunk('b'), openAiChunk('c'), { choices: [], usage: { total_tokens: 9 } }, '[DONE]'];
    const stream = sse(events, 150);
    const { key, id } = await setup((req, body, res) => {
      res.on('finish', () => (upstreamDone = true));
      stream(req, body, res);
    });
    const response = await post(gate, key, { stream: true });
    const reader = response.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toContain('"content":"a"');
    expect(upstreamDone).toBe(false);
    while (!(await reader.read()).done);
    expect(upstreamDone).toBe(true);
    expect(await charged(id)).toEqual({ window: 9, lifetime: 9 });
  });

  it('sets last_used, and counts every request once', async () => {
    const { key, id } = await setup(json({ usage: { total_tokens: 10 } }));
    for (let i = 0; i < 3; i++) await (await post(gate, key)).text();
    const record = await gate.settled(id, 3);
    expect(record).toMatchObject({ totalRequests: 3, totalLifetimeTokens: 30, lastUsedAt: gate.clock.now() });
  });
});

describe('when the usage cannot be worked out at all', () => {
  it('charges the reserved estimate, never nothing', async () => {
    let calls = 0;
    const now = () => {
      // Admission reads the clock once; the record's time is read once the response ended, and fails.
      if (++calls > 1) throw new Error('clock unavailable');
      return gate.clock.now();
    };
    const { key, id } = await setup(json({ choices: [], usage: { total_tokens: 5 } }), { now });
    const body = { model: 'm', messages: [], max_tokens: 100 };
    const response = await post(gate, key, body);
    expect(response.status).toBe(200);
    const record = await gate.settled(id, 1);
    expect(record.totalLifetimeTokens).toBe(Math.ceil(Buffer.byteLength(JSON.stringify(body)) / 4) + 100);
    expect(gate.logs.some((line) => line.msg === 'reading usage failed: charging the reserved estimate')).toBe(true);
  });
});
