// A user's gated proxy on PostgreSQL, from the installed package, kept serving until SIGTERM: the test stops the database under it.
import express from 'express';
import { createStorage, healthHandler, monitorStorage, proxy, tokenGate } from 'tokengate';

const upstreamApp = express();
upstreamApp.post('/v1/chat/completions', (_req, res) => void res.json({ choices: [], usage: { total_tokens: 5 } }));
const upstream = await new Promise((resolve) => {
  const server = upstreamApp.listen(0, '127.0.0.1', () => resolve(server));
});

const storage = await createStorage({ databaseUrl: process.env.DATABASE_URL, fallbackDir: process.env.FALLBACK_DIR, fallbackTimeoutMs: 500 });
const monitor = monitorStorage(storage);
const gate = tokenGate({ storage });
const forward = proxy({ target: `http://127.0.0.1:${upstream.address().port}` });
const app = express();
app.get('/healthz', healthHandler(monitor));
app.use('/v1', gate, forward);
const server = await new Promise((resolve) => {
  const s = app.listen(0, '127.0.0.1', () => resolve(s));
});
const { key } = await storage.createKey({ name: 'outage', tokenLimit: 1_000_000, expiresAt: Date.now() + 86_400_000 });
console.log(JSON.stringify({ port: server.address().port, key }));

process.once('SIGTERM', () => {
  server.close(async () => {
    await gate.settled();
    await forward.close();
    monitor.stop();
    await storage.close();
    upstream.close();
    console.log(JSON.stringify({ stopped: true }));
  });
});
