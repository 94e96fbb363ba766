// @ts-check
// The load: autocannon POSTs chat completions (JSON or SSE) spread over the bench keys, each
// connection sending its next request as soon as the last one is answered; reports throughput,
// latency and the CPU time per request of the target (and of its database server, if it has one).
import autocannon from 'autocannon';
import { benchKeys } from './keys.js';

export const REQUEST = JSON.stringify({ model: 'bench-model', messages: [{ role: 'user', content: 'Say hello in five words.' }], max_tokens: 50 });
const STREAM_REQUEST = JSON.stringify({ ...JSON.parse(REQUEST), stream: true, stream_options: { include_usage: true } });

/**
 * @typedef {object} Load
 * @property {boolean} stream SSE responses instead of JSON
 * @property {number} connections
 * @property {number} [seconds] how long to drive; or
 * @property {number} [amount] how many requests to send
 */

/**
 * Drives `target` with `load`; its CPU time (and its database server's) is read before and after.
 * @param {import('./processes.js').BenchProcess} target
 * @param {Load} load
 * @param {{ cpuMicros(): number }} [database] the PostgreSQL server the target uses
 */
export async function drive(target, { stream, connections, seconds, amount }, database) {
  const keys = benchKeys();
  let next = 0;
  /** @type {number[]} */
  const latencies = [];
  const cpuBefore = target.cpuMicros();
  const databaseCpuBefore = database?.cpuMicros();
  // Without a callback, autocannon returns its running instance, an EventEmitter that is also a promise.
  const run = /** @type {Promise<autocannon.Result> & import('node:events').EventEmitter} */ (
    /** @type {unknown} */ (
      autocannon({
        url: `${target.url}/v1/chat/completions`,
        method: 'POST',
        connections,
        ...(amount ? { amount } : { duration: seconds }),
        headers: { 'content-type': 'application/json' },
        body: stream ? STREAM_REQUEST : REQUEST,
        requests: [{ setupRequest: (/** @type {any} */ req) => ({ ...req, headers: { ...req.headers, authorization: `Bearer ${keys[next++ % keys.length]}` } }) }],
      })
    )
  );
  // autocannon's own percentiles are whole milliseconds; its response events carry the exact time.
  run.on('response', (/** @type {unknown} */ _client, /** @type {number} */ status, /** @type {number} */ _bytes, /** @type {number} */ ms) => {
    if (status >= 200 && status < 300) latencies.push(ms);
  });
  const result = await run;
  const cpu = target.cpuMicros() - cpuBefore;
  const databaseCpu = database && databaseCpuBefore !== undefined ? database.cpuMicros() - databaseCpuBefore : null;
  const answered = result['2xx'];
  return {
    requestsPerSecond: Math.round(answered / (result.duration || 1)),
    p50Ms: percentile(latencies, 0.5),
    p99Ms: percentile(latencies, 0.99),
    requests: result.requests.total,
    failures: result.errors + result.timeouts + result.non2xx,
    cpuUsPerRequest: answered > 0 ? Math.round(cpu / answered) : null,
    databaseCpuUsPerRequest: databaseCpu !== null && answered > 0 ? Math.round(databaseCpu / answered) : null,
    cpuBusy: Number((cpu / 1e6 / (result.duration || 1)).toFixed(2)),
  };
}

/**
 * The value below which `fraction` of `values` lie (nearest rank), in ms to two decimals.
 * @param {number[]} values
 * @param {number} fraction
 */
function percentile(values, fraction) {
  if (values.length === 0) return null;
  const sorted = values.toSorted((a, b) => a - b);
  return Number((sorted[Math.min(sorted.length - 1, Math.ceil(fraction * sorted.length) - 1)] ?? Number.NaN).toFixed(2));
}
