// @ts-check
// One proxy under test, in a process of its own: `bare` (no gate) or the gated proxy on the store the
// environment names (DATABASE_URL, DATABASE_PATH, FALLBACK_DIR); prints {"port"} when it listens and
// answers GET /bench/storage with the store deciding now. `seed` only creates the bench keys and exits
// (the sidecar's database).
import express from 'express';
import { createLogger, createStorage, proxy } from 'tokengate';
import { createProxyApp } from '../examples/express-proxy/app.js';
import { benchKeys } from './keys.js';

const [variant = 'gated'] = process.argv.slice(2);
const upstreamUrl = /** @type {string} */ (process.env.UPSTREAM_URL);
const logger = createLogger();
logger.level = 'warn';

/** @type {import('tokengate').Storage | undefined} */
let storage;
/** @type {import('express').Express} */
let app;
if (variant === 'bare') {
  app = express();
  app.use('/v1', proxy({ target: upstreamUrl, logger }));
} else {
  storage = await createStorage({ logger });
  for (const key of benchKeys()) {
    await storage.createKey({ name: 'bench', key, tokenLimit: 1e12, expiresAt: Date.now() + 24 * 3600_000 }).catch(() => undefined); // already there
  }
  if (variant === 'seed') {
    await storage.close();
    process.exit(0);
  }
  app = createProxyApp({ storage, upstreamUrl, gate: { logger } }).app;
  app.get('/bench/storage', (_req, res) => void res.json({ backend: storage?.backend }));
}
const server = app.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: /** @type {import('node:net').AddressInfo} */ (server.address()).port })}\n`);
});
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => void (storage?.close() ?? Promise.resolve()).then(() => process.exit(0)));
});
