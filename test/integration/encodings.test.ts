// Content codings through the sidecar's proxy, and JSON bodies of tens of MB: usage read exactly, in bounded memory.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { brotliCompressSync, constants, createGzip, gzipSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { startProxyGate, type ProxyGate } from '../helpers/proxy-gate.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

let upstream: Upstream | undefined;
let gate: ProxyGate | undefined;
afterEach(async () => {
  await gate?.close();
  await upstream?.close();
  gate = upstream = undefined;
});

const USAGE = { prompt_tokens: 1200, completion_tokens: 34, total_tokens: 1234 };
const answer = Buffer.from(JSON.stringify({ id: 'c', choices: [{ message: { content: 'hello' } }], usage: USAGE }));

/** Answers in the first coding it is offered: zstd (a marker body: Node 20 cannot compress it), br, gzip, else identity. */
function honoursAcceptEncoding(_req: IncomingMessage, _body: Buffer, res: ServerResponse): void {
  const offered = String(_req.headers['accept-encoding'] ?? '');
  const coding = ['zstd', 'br', 'gzip'].find((name) => offered.includes(name));
  const body = coding === 'br' ? brotliCompressSync(answer) : coding === 'gzip' ? gzipSync(answer) : coding === 'zstd' ? Buffer.from('(zstd frame)') : answer;
  res.writeHead(200, { 'content-type': 'application/json', ...(coding ? { 'content-encoding': coding } : {}) });
  res.end(body);
}

const post = (g: ProxyGate, headers: Record<string, string> = {}, body = '{"model":"m"}') =>
  fetch(`${g.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${g.key}`, 'content-type': 'application/json', ...headers }, body });

describe('content codings', () => {
  it('offers the upstream no zstd when the client does, and charges the answer exactly', async () => {
    upstream = await startUpstream(honoursAcceptEncoding);
    gate = await startProxyGate(upstream.url);
    const response = await post(gate, { 'accept-encoding': 'zstd, br;q=0.9, gzip;q=0.8' });
    expect(response.headers.get('content-encoding')).toBe('br');
    expect(await response.json()).toMatchObject({ usage: USAGE });
    expect(upstream.last?.headers['accept-encoding']).toBe('br;q=0.9, gzip;q=0.8');
    expect(await gate.charged()).toBe(1234);
    expect((await gate.metrics()).value('tokengate_usage_unreadable_total', { reason: 'encoding' })).toBe(0);
  });

  it('charges an answer in zstd anyway the estimate, and counts it as unreadable by encoding', async () => {
    upstream = await startUpstream((_req, _body, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'zstd' });
      res.end(Buffer.from('(zstd frame)'));
    });
    gate = await startProxyGate(upstream.url);
    const before = await gate.metrics();
    for (const reason of ['encoding', 'malformed', 'oversized', 'no_usage']) expect(before.value('tokengate_usage_unreadable_total', { reason })).toBe(0);
    const response = await post(gate, { 'accept-encoding': 'zstd' });
    expect(upstream.last?.headers['accept-encoding']).toBe('identity');
    await response.arrayBuffer();
    expect(await gate.charged()).toBe(Math.ceil(('{"model":"m"}'.length + '(zstd frame)'.length) / 4));
    expect((await gate.metrics()).value('tokengate_usage_unreadable_total', { reason: 'encoding' })).toBe(1);
  });
});

const ITEM = Buffer.from(`${JSON.stringify({ object: 'embedding', index: 0, embedding: Array.from({ length: 64 }, (_, i) => Math.round(Math.sin(i) * 1e6) / 1e6) })},`);
const BIG = 20 * 1024 * 1024;
const BIG_USAGE = { prompt_tokens: 8803, total_tokens: 8803 };

/** Streams a ~20 MB embeddings answer, usage last, generated chunk by chunk with backpressure (never held whole). */
function bigEmbeddings(gzip: boolean) {
  return (_req: IncomingMessage, _body: Buffer, res: ServerResponse): void => {
    res.writeHead(200, { 'content-type': 'application/json', ...(gzip ? { 'content-encoding': 'gzip' } : {}) });
    const out = gzip ? createGzip({ level: constants.Z_BEST_SPEED }) : res;
    if (gzip) out.pipe(res);
    out.write('{"object":"list","data":[');
    let sent = 0;
    const next = (): void => {
      while (sent < BIG) {
        sent += ITEM.length;
        if (!out.write(ITEM)) return void out.once('drain', next);
      }
      out.end(`{}],"model":"e","usage":${JSON.stringify(BIG_USAGE)}}`);
    };
    next();
  };
}

describe('a 20 MB JSON answer', () => {
  it.each([
    ['identity', false],
    ['gzip', true],
  ])('%s: charged exactly, with peak RSS growth below the body size', async (_name, gzip) => {
    upstream = await startUpstream(bigEmbeddings(gzip));
    const g = (gate = await startProxyGate(upstream.url));
    const fetchAll = async (): Promise<number> => {
      const response = await post(g, { 'accept-encoding': gzip ? 'gzip' : 'identity' });
      let bytes = 0;
      // The client drops the body as it comes (fetch decodes gzip): only the gate's reader could hold it.
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) bytes += chunk.length;
      return bytes;
    };
    // A first request warms up what every request shares (connection pools, compiled code).
    await fetchAll();
    expect(await gate.charged(1)).toBe(8803);
    const base = process.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 5);
    const bytes = await fetchAll();
    clearInterval(sampler);
    expect(bytes).toBeGreaterThan(BIG);
    expect(await gate.charged(2)).toBe(2 * 8803);
    const growth = peak - base;
    console.log(`20 MB JSON (${_name}): ${bytes} bytes, peak RSS growth ${(growth / 1e6).toFixed(1)} MB`);
    // Measured 1.7 to 6.4 MB alone, up to 13 MB with the rest of the suite running beside it
    // (garbage the young generation has not collected yet); a reader that kept the body would hold
    // 20 MB of copies, then a 20 MB string and its parse: over 40 MB.
    expect(growth).toBeLessThan(BIG);
  });
});
