// Runs the example proxy: UPSTREAM_URL (required), UPSTREAM_API_KEY, PORT, DATABASE_PATH; /metrics, /healthz, /readyz.
import { createMetrics, createStorage, monitorStorage } from 'tokengate';
import { createProxyApp } from './app.js';

const upstreamUrl = process.env.UPSTREAM_URL;
if (!upstreamUrl) {
  console.error('UPSTREAM_URL is required, e.g. UPSTREAM_URL=https://api.openai.com node examples/express-proxy/server.js');
  process.exit(1);
}
const storage = await createStorage().catch((error) => {
  console.error(`cannot start: ${error.message}`);
  process.exit(1);
});
const metrics = createMetrics();
const monitor = monitorStorage(storage, { metrics });
const { app, gate, proxy } = createProxyApp({ storage, upstreamUrl, upstreamApiKey: process.env.UPSTREAM_API_KEY, gate: { metrics }, monitor });
const server = app.listen(Number(process.env.PORT ?? 8080), () => {
  console.log(`tokengate example proxy on http://localhost:${server.address().port}/v1 -> ${upstreamUrl}`);
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    monitor.stop();
    // In-flight requests finish, their usage is recorded, then the store closes.
    server.close(async () => {
      await gate.settled();
      await proxy.close();
      await storage.close();
    });
  });
}
