// What the JavaScript projects run (gate.mjs imports tokengate, gate.cjs requires it): a real request through tokenGate and proxy on the embedded SQLite default, then what was recorded.
const express = require('express');

/** Serves `app` on a free loopback port; resolves with the server and its base URL. */
function serve(app) {
  return new Promise((resolve) => {
    const server = app.listen(0, '127.0.0.1', () => resolve({ server, base: `http://127.0.0.1:${server.address().port}` }));
  });
}

/** Runs the scenario with the package's exports and prints one JSON line of what happened. */
module.exports = async function scenario({ tokenGate, createStorage, proxy, StorageError, ConfigError, statsHandler }) {
  const upstreamApp = express();
  upstreamApp.post('/v1/chat/completions', (_req, res) => {
    res.json({ id: 'chatcmpl-1', object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: 'hello' } }], usage: { prompt_tokens: 30, completion_tokens: 12, total_tokens: 42 } });
  });
  const upstream = await serve(upstreamApp);

  const storage = await createStorage(); // no DATABASE_URL: SQLite at ./data/tokengate.db
  const gate = tokenGate({ storage });
  const forward = proxy({ target: upstream.base });
  const app = express();
  app.get('/stats', statsHandler({ storage }));
  app.use('/v1', gate, forward);
  const proxied = await serve(app);

  const { key, record } = await storage.createKey({ name: 'fresh', tokenLimit: 1000, expiresAt: Date.now() + 86_400_000 });
  const chat = (headers) =>
    fetch(`${proxied.base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 20 }),
    });
  const admitted = await chat({ authorization: `Bearer ${key}` });
  const answer = await admitted.json();
  const refused = await chat({});
  await refused.arrayBuffer();
  await gate.settled(); // the usage of the responses is written
  const stats = await (await fetch(`${proxied.base}/stats`, { headers: { authorization: `Bearer ${key}` } })).json();

  await new Promise((resolve) => proxied.server.close(resolve));
  await forward.close();
  await new Promise((resolve) => upstream.server.close(resolve));
  await storage.close();
  console.log(
    JSON.stringify({
      backend: storage.backend,
      keyId: record.id,
      status: admitted.status,
      reported: answer.usage.total_tokens,
      refused: refused.status,
      used: stats.current_usage.tokens_used_in_current_window,
      requests: stats.total_requests,
      errors: [new StorageError('down', true) instanceof Error, new ConfigError('bad').code],
    }),
  );
};
