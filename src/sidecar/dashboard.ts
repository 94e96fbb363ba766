// dashboardHandler(): the usage page for key holders and the admin, with the two APIs it calls, mountable at any path.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import express, { type RequestHandler, type Response, type Router } from 'express';
import { packageRoot } from '../package-root.js';
import { adminRouter } from './admin.js';
import { errorBody } from '../http/error-body.js';
import { defaultLogger } from '../logger.js';
import type { Logger } from '../types.js';
import type { Storage } from '../storage/types.js';
import { statsUsageHandler } from '../../middleware/stats.js';

export interface DashboardOptions {
  storage: Storage;
  /** The admin view's token, as for the admin API; without one the page is the key holder's only. */
  adminToken?: string;
  logger?: Logger;
}

/**
 * Nothing but the page's own files and its own API: no inline script or style, no other origin, no
 * framing, no form posted anywhere (the page sends JSON with fetch).
 */
export const DASHBOARD_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

interface Asset {
  type: string;
  body: Buffer;
  gzip: Buffer;
  /** The page itself is never cached; the scripts and styles it names carry their hash and never change. */
  cacheControl: string;
}

/** The built page: dist/dashboard holds index.html, the hashed app-*.js and app-*.css, each with its .gz. */
function loadAssets(): Map<string, Asset> {
  const dir = join(packageRoot(), 'dist/dashboard');
  let manifest: { files: string[] };
  try {
    manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { files: string[] };
  } catch (error) {
    throw new Error(`the dashboard is not built (${dir}/manifest.json: ${(error as Error).message}); run \`npm run build\``);
  }
  const assets = new Map<string, Asset>();
  for (const file of manifest.files) {
    const type = file.endsWith('.js') ? 'text/javascript; charset=utf-8' : file.endsWith('.css') ? 'text/css; charset=utf-8' : 'text/html; charset=utf-8';
    const cacheControl = file === 'index.html' ? 'no-store' : 'public, max-age=31536000, immutable';
    assets.set(`/${file === 'index.html' ? '' : file}`, { type, body: readFileSync(join(dir, file)), gzip: readFileSync(join(dir, `${file}.gz`)), cacheControl });
  }
  return assets;
}

/** The headers every dashboard response carries: its API answers hold keys, so nothing is cached but the hashed files. */
const securityHeaders: RequestHandler = (_req, res, next) => {
  res.setHeader('Content-Security-Policy', DASHBOARD_CSP);
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Referrer-Policy', 'no-referrer');
  res.setHeader('X-Frame-Options', 'DENY');
  res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
  res.setHeader('Cache-Control', 'no-store');
  next();
};

function sendAsset(res: Response, asset: Asset, gzip: boolean): void {
  res.setHeader('Content-Type', asset.type);
  res.setHeader('Cache-Control', asset.cacheControl);
  res.setHeader('Vary', 'Accept-Encoding');
  if (gzip) res.setHeader('Content-Encoding', 'gzip');
  res.end(gzip ? asset.gzip : asset.body);
}

/**
 * The dashboard of CONTRACT section 10 with, under it, `api/stats/usage` (the caller's key) and
 * `api/admin` (the admin API, when `adminToken` is given). Mount it before the gate:
 * `app.use('/dashboard', dashboardHandler({ storage }))`. Keys reach it only in the Authorization
 * header, never in a query.
 */
export function dashboardHandler(options: DashboardOptions): Router {
  const { storage } = options;
  const logger = options.logger ?? defaultLogger();
  const assets = loadAssets();
  const router = express.Router({ strict: true });
  router.use(securityHeaders);
  router.get('/', (req, res, next) => {
    // Relative links resolve under the mount only from a path ending in '/': /dashboard → /dashboard/.
    if (!req.originalUrl.split('?', 1)[0]!.endsWith('/')) return res.redirect(308, `${req.baseUrl}/`);
    next();
  });
  router.get('/api/stats/usage', statsUsageHandler({ storage, logger }));
  router.use('/api/admin', adminRouter({ storage, adminToken: options.adminToken, logger }));
  router.get(/^\/[^/]*$/, (req, res, next) => {
    const asset = assets.get(req.path);
    if (!asset) return next();
    sendAsset(res, asset, req.acceptsEncodings('gzip') === 'gzip');
  });
  router.use((req, res) => {
    res.status(404).json(errorBody({ type: 'not_found_error', code: 'not_found', message: `No route ${req.method} ${req.originalUrl.split('?', 1)[0]}.` }));
  });
  return router;
}
