// @ts-check
// An Express proxy to any OpenAI-compatible upstream, gated by one app.use(tokenGate(...)).
import http from 'node:http';
import https from 'node:https';
import { pipeline } from 'node:stream';
import express from 'express';
import { tokenGate, statsHandler, metricsHandler, healthHandler, readyHandler } from 'tokengate';

// Connection-level headers, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'host']);

/**
 * @param {object} options
 * @param {import('tokengate').Storage} options.storage
 * @param {string} options.upstreamUrl  e.g. https://api.openai.com
 * @param {string} [options.upstreamApiKey]  sent upstream instead of the client's key
 * @param {Partial<import('tokengate').TokenGateOptions>} [options.gate]  more tokenGate() options; with `metrics`, also GET /metrics
 * @param {import('tokengate').StorageMonitor} [options.monitor]  from monitorStorage(): GET /healthz and /readyz
 */
export function createProxyApp({ storage, upstreamUrl, upstreamApiKey, gate = {}, monitor }) {
  const app = express();
  if (gate.metrics) app.get('/metrics', metricsHandler(gate.metrics));
  if (monitor) {
    app.get('/healthz', healthHandler(monitor));
    app.get('/readyz', readyHandler(monitor));
  }
  app.get('/stats', statsHandler({ storage, ...gate }));
  app.use('/v1', tokenGate({ storage, ...gate }), proxyTo(upstreamUrl, upstreamApiKey));
  return app;
}

/**
 * Streams the request to the upstream and the response back, chunk by chunk.
 * @param {string} upstreamUrl
 * @param {string} [upstreamApiKey]
 * @returns {import('express').RequestHandler}
 */
export function proxyTo(upstreamUrl, upstreamApiKey) {
  const base = new URL(upstreamUrl);
  const client = base.protocol === 'https:' ? https : http;
  const basePath = base.pathname.replace(/\/$/, '');
  return (req, res) => {
    const headers = forwardable(req.headers, () => false);
    delete headers.authorization; // the client's key stays here
    delete headers['x-api-key'];
    if (upstreamApiKey) headers.authorization = `Bearer ${upstreamApiKey}`;
    const upstream = client.request(
      { protocol: base.protocol, hostname: base.hostname, port: base.port, method: req.method, path: basePath + withoutQueryKey(req.originalUrl), headers },
      (answer) => {
        res.status(answer.statusCode ?? 502);
        // Headers the gate already set (the quota headers) win over the upstream's.
        for (const [name, value] of Object.entries(forwardable(answer.headers, (name) => res.hasHeader(name)))) res.setHeader(name, value);
        pipeline(answer, res, () => undefined);
      },
    );
    upstream.on('error', (error) => {
      if (res.headersSent) return void res.destroy(error);
      res.status(502).json({ error: { message: `upstream request failed: ${error.message}`, type: 'upstream_error', code: 'bad_gateway' } });
    });
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    pipeline(req, upstream, () => undefined);
  };
}

/**
 * The path and query to forward, without an `api_key` query parameter (the client's key).
 * @param {string} url
 */
function withoutQueryKey(url) {
  const query = url.indexOf('?');
  if (query === -1 || !url.includes('api_key=', query)) return url;
  const params = new URLSearchParams(url.slice(query + 1));
  params.delete('api_key');
  const rest = params.toString();
  return url.slice(0, query) + (rest ? `?${rest}` : '');
}

/**
 * @param {import('node:http').IncomingHttpHeaders} headers
 * @param {(name: string) => boolean} skip
 */
function forwardable(headers, skip) {
  /** @type {Record<string, string | string[]>} */
  const out = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name) && !skip(name)) out[name] = value;
  }
  return out;
}
