// The demo: a mock upstream, the example proxy on the embedded SQLite store, a demo key, a real request.
// `npm run demo` keeps serving until Ctrl-C; `npm run demo -- --once` exits after the check.
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
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
/** Listens on PORT, or 8080; when 8080 is taken (and PORT unset), on any free port. */
function listen(port) {
  return new Promise((resolve, reject) => {
    const s = createServer(app);
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => resolve(s));
  });
}
const server = await listen(Number(process.env.PORT ?? 8080)).catch((error) => {
  if (error.code !== 'EADDRINUSE' || process.env.PORT) throw error;
  return listen(0);
});
const base = `http://127.0.0.1:${server.address().port}`;
console.log(`Example proxy on ${base}, SQLite store ${process.env.DATABASE_PATH ?? DEFAULT_DATABASE_PATH}`);

// The demo's own key, known in advance so that every run uses the same one (never use a known key for real).
const key = 'tg-demo-key-for-this-machine-only';
const expiresAt = Date.now() + 30 * 24 * 3600 * 1000;
const known = await storage.findKeyByDigest(createHash('sha256').update(key).digest('hex')); // keys are stored as their SHA-256
const record = known ? await storage.updateKey(known.id, { expiresAt }) : (await storage.createKey({ name: 'demo', key, tokenLimit: 10_000, expiresAt })).record;
console.log(`${known ? 'Using' : 'Created'} demo key ${record.id} with ${record.tokenLimit} tokens per 5 h: ${key}\n`);

const stats = async () => (await fetch(`${base}/stats`, { headers: { authorization: `Bearer ${key}` } })).json();
const before = (await stats()).current_usage.tokens_used_in_current_window;
const response = await fetch(`${base}/v1/chat/completions`, {
  method: 'POST',
  headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
  body: JSON.stringify({ model: 'mock-model', messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50 }),
});
const answer = await response.json();
console.log(`POST /v1/chat/completions -> ${response.status}: "${answer.choices?.[0]?.message?.content}"`);
for (const name of ['ratelimit-policy', 'ratelimit', 'x-ratelimit-remaining-tokens']) console.log(`  ${name}: ${response.headers.get(name)}`);
await new Promise((resolve) => setTimeout(resolve, 50)); // usage is recorded once the response has ended
const after = (await stats()).current_usage.tokens_used_in_current_window;
console.log(`Upstream reported ${answer.usage?.total_tokens} tokens; /stats shows ${after - before} more used in the window (${after} in all).\n`);

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
  console.log(`  open ${base}/dashboard/ in a browser and enter the key`);
  console.log(`  curl -s ${base}/healthz; curl -s ${base}/metrics | grep ^tokengate_`);
  process.once('SIGINT', () => void stop());
}
