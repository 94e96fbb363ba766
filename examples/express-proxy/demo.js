// The demo: a mock upstream, the example proxy on the embedded SQLite store, a fresh key, a real request.
// `npm run demo` keeps serving until Ctrl-C; `npm run demo -- --once` exits after the check.
import { createMetrics, createStorage, monitorStorage, DEFAULT_DATABASE_PATH } from 'tokengate';
import { createProxyApp } from './app.js';
import { startMockUpstream } from './mock-upstream.js';

const once = process.argv.includes('--once');
const upstream = await startMockUpstream();
const upstreamUrl = `http://127.0.0.1:${upstream.address().port}`;
const storage = await createStorage();
const metrics = createMetrics();
const monitor = monitorStorage(storage, { metrics });
const { app, gate, proxy } = createProxyApp({ storage, upstreamUrl, gate: { metrics }, monitor });
const server = await new Promise((resolve) => {
  const s = app.listen(Number(process.env.PORT ?? 8080), '127.0.0.1', () => resolve(s));
});
const base = `http://127.0.0.1:${server.address().port}`;

const { key, record } = await storage.createKey({ name: 'demo', tokenLimit: 10_000, expiresAt: Date.now() + 30 * 24 * 3600 * 1000 });
console.log(`SQLite store: ${process.env.DATABASE_PATH ?? DEFAULT_DATABASE_PATH}`);
console.log(`Created key ${record.id} with 10000 tokens per 5 h: ${key}\n`);

const response = await fetch(`${base}/v1/chat/completions`, {
  method: 'POST',
  headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
  body: JSON.stringify({ model: 'mock-model', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50 }),
});
const answer = await response.json();
console.log(`POST /v1/chat/completions -> ${response.status}: "${answer.choices?.[0]?.message?.content}"`);
for (const name of ['ratelimit-policy', 'ratelimit', 'x-ratelimit-remaining-tokens']) console.log(`  ${name}: ${response.headers.get(name)}`);
await new Promise((resolve) => setTimeout(resolve, 50)); // usage is recorded once the response has ended
const stats = await (await fetch(`${base}/stats`, { headers: { authorization: `Bearer ${key}` } })).json();
console.log(`Upstream reported ${answer.usage?.total_tokens} tokens; /stats shows ${stats.current_usage.tokens_used_in_current_window} used in the window.\n`);

/** Stops taking requests, waits for their usage to be recorded, then closes the store. */
async function stop() {
  monitor.stop();
  await new Promise((resolve) => server.close(resolve));
  await gate.settled();
  await proxy.close();
  upstream.close();
  await storage.close();
}

if (once) {
  await stop();
} else {
  console.log('Try it yourself (Ctrl-C to stop):');
  console.log(`  curl -s ${base}/v1/chat/completions -H 'Authorization: Bearer ${key}' -H 'content-type: application/json' \\`);
  console.log(`    -d '{"model":"mock-model","stream":true,"messages":[{"role":"user","content":"hi"}]}'`);
  console.log(`  curl -s ${base}/stats -H 'Authorization: Bearer ${key}'`);
  console.log(`  curl -s ${base}/healthz; curl -s ${base}/metrics | grep ^tokengate_`);
  process.once('SIGINT', () => void stop());
}
