// @ts-check
// `npm run bench:usage`: the cost of reading `usage` from JSON bodies, in one run, as ratios:
// a typical chat completion read whole (JSON.parse, the fast path) against the streaming parser,
// and a 20 MB embeddings answer streamed against JSON.parse of the whole body (what reading it
// whole would cost, holding it all in memory). Reads the built code: `npm run build` first.
import { JsonUsageReader } from '../dist/src/usage/json.js';

const CHUNK = 16 * 1024;

/** @param {Buffer} body @param {number | undefined} wholeBytes */
function read(body, wholeBytes) {
  const reader = new JsonUsageReader(wholeBytes);
  for (let at = 0; at < body.length; at += CHUNK) reader.push(body.subarray(at, at + CHUNK));
  const reading = reader.result();
  if (!reading || !('tokens' in reading)) throw new Error(`no usage read: ${JSON.stringify(reading)}`);
  return reading.tokens;
}

/** Median time of one call over `rounds` rounds of `n` calls, in microseconds. @param {() => unknown} work @param {number} n */
function time(work, n, rounds = 7) {
  for (let i = 0; i < n; i++) work();
  const samples = [];
  for (let r = 0; r < rounds; r++) {
    const start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) work();
    samples.push(Number(process.hrtime.bigint() - start) / 1000 / n);
  }
  return samples.sort((a, b) => a - b)[Math.floor(rounds / 2)] ?? 0;
}

const chat = Buffer.from(
  JSON.stringify({
    id: 'chatcmpl-1',
    object: 'chat.completion',
    created: 1_760_000_000,
    model: 'gpt-4o-mini',
    choices: [{ index: 0, message: { role: 'assistant', content: 'Sure: here is a short answer to your question. '.repeat(12) }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 120, completion_tokens: 140, total_tokens: 260 },
  }),
);
const item = JSON.stringify({ object: 'embedding', index: 0, embedding: Array.from({ length: 256 }, (_, i) => Math.round(Math.sin(i) * 1e6) / 1e6) });
const items = [];
for (let size = 0; size < 20 * 1024 * 1024; size += item.length + 1) items.push(item);
const big = Buffer.from(`{"object":"list","data":[${items.join(',')}],"usage":{"prompt_tokens":8803,"total_tokens":8803}}`);

const small = { whole: time(() => read(chat, undefined), 20_000), streamed: time(() => read(chat, 0), 20_000) };
const large = { streamed: time(() => read(big, undefined), 1, 3), parsedWhole: time(() => JSON.parse(big.toString('utf8')).usage, 1, 3) };
const mbps = (/** @type {number} */ us) => (big.length / us).toFixed(0);
console.log(`chat completion (${chat.length} B): JSON.parse ${small.whole.toFixed(1)} µs, streaming parser ${small.streamed.toFixed(1)} µs, ratio ${(small.streamed / small.whole).toFixed(1)}x`);
console.log(
  `embeddings (${(big.length / 1e6).toFixed(1)} MB): streamed ${(large.streamed / 1000).toFixed(0)} ms (${mbps(large.streamed)} MB/s), JSON.parse whole ${(large.parsedWhole / 1000).toFixed(0)} ms (${mbps(large.parsedWhole)} MB/s), ratio ${(large.streamed / large.parsedWhole).toFixed(1)}x`,
);
