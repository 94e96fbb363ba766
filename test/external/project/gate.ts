// A TypeScript project's use of tokengate, type-checked against the installed types in CommonJS and ES module mode, then run.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { tokenGate, createStorage, proxy, StorageError, ConfigError, statsHandler, type Storage, type StatsView } from 'tokengate';

function serve(app: express.Express): Promise<{ server: Server; base: string }> {
  return new Promise((resolve) => {
    const server = app.listen(0, '127.0.0.1', () => resolve({ server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }));
  });
}

// Never called: it fails to type-check (and @ts-expect-error with it) unless the package's types are the real ones.
export function misuse(storage: Storage): void {
  // @ts-expect-error tokenGate() takes options with a storage, not the storage itself
  tokenGate(storage);
}

async function main(): Promise<void> {
  const upstreamApp = express();
  upstreamApp.post('/v1/chat/completions', (_req, res) => {
    res.json({ id: 'chatcmpl-1', object: 'chat.completion', choices: [], usage: { prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 } });
  });
  const upstream = await serve(upstreamApp);

  const storage: Storage = await createStorage(); // no DATABASE_URL: SQLite at ./data/tokengate.db
  const gate = tokenGate({ storage });
  const forward = proxy({ target: upstream.base });
  let admittedAs: string | undefined;
  const app = express();
  app.get('/stats', statsHandler({ storage }));
  app.use('/v1', gate, (req, _res, next) => {
    admittedAs = req.tokenGate?.key.name; // typed by the package's augmentation of Express's Request
    next();
  }, forward);
  const proxied = await serve(app);

  const { key, record } = await storage.createKey({ name: 'typed', tokenLimit: 1000, expiresAt: Date.now() + 86_400_000 });
  const admitted = await fetch(`${proxied.base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 20 }),
  });
  await admitted.arrayBuffer();
  await gate.settled();
  const stats = (await (await fetch(`${proxied.base}/stats`, { headers: { authorization: `Bearer ${key}` } })).json()) as StatsView;

  await new Promise((resolve) => proxied.server.close(resolve));
  await forward.close();
  await new Promise((resolve) => upstream.server.close(resolve));
  await storage.close();
  const errors: [boolean, string] = [new StorageError('down', true).transient, new ConfigError('bad').code];
  console.log(JSON.stringify({ backend: storage.backend, keyId: record.id, status: admitted.status, admittedAs, used: stats.current_usage.tokens_used_in_current_window, requests: stats.total_requests, errors }));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
