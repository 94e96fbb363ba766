// @ts-check
// An Express proxy to any OpenAI-compatible upstream, gated by one app.use(tokenGate(...)).
import express from 'express';
import { tokenGate, proxy, statsHandler, dashboardHandler, metricsHandler, healthHandler, readyHandler } from 'tokengate';

/**
 * The app, the gate (await `gate.settled()` on shutdown, before closing the storage) and the
 * proxy (close it once the server has stopped).
 * @param {object} options
 * @param {import('tokengate').Storage} options.storage
 * @param {string} options.upstreamUrl  e.g. https://api.openai.com
 * @param {string} [options.upstreamApiKey]  sent upstream instead of the client's key
 * @param {Partial<import('tokengate').TokenGateOptions>} [options.gate]  more tokenGate() options; with `metrics`, also GET /metrics
 * @param {import('tokengate').StorageMonitor} [options.monitor]  from monitorStorage(): GET /healthz and /readyz
 */
export function createProxyApp({ storage, upstreamUrl, upstreamApiKey, gate: gateOptions = {}, monitor }) {
  const app = express();
  if (gateOptions.metrics) app.get('/metrics', metricsHandler(gateOptions.metrics));
  if (monitor) {
    app.get('/healthz', healthHandler(monitor));
    app.get('/readyz', readyHandler(monitor));
  }
  app.get('/stats', statsHandler({ storage, ...gateOptions }));
  // The key holder's usage page; before the gate, which would otherwise ask the page for a key.
  app.use('/dashboard', dashboardHandler({ storage, logger: gateOptions.logger }));
  const gate = tokenGate({ storage, ...gateOptions });
  // Mounted on /v1, the proxy still forwards the whole path (/v1/chat/completions), under upstreamUrl's own path.
  const forward = proxy({ target: upstreamUrl, apiKey: upstreamApiKey, logger: gateOptions.logger });
  app.use('/v1', gate, forward);
  return { app, gate, proxy: forward };
}
