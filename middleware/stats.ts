// statsHandler(): the caller's own key, its window and its totals, in the /stats shape.
import type { RequestHandler } from 'express';
import { digestKey } from '../src/keys/secret.js';
import { statsView } from '../src/keys/view.js';
import { defaultLogger } from '../src/logger.js';
import { lookupKey } from './gate.js';
import { windowFor, type TokenGateOptions } from './options.js';
import { rejections, type Rejection } from './reject.js';
import { errorBodyFor } from '../src/http/error-body.js';

export type StatsOptions = Pick<TokenGateOptions, 'storage' | 'windowMs' | 'getKey' | 'allowQueryKey' | 'now' | 'logger'>;

/** Answers with the caller's key stats; an expired key still sees its stats (`is_expired: true`). */
export function statsHandler(options: StatsOptions): RequestHandler {
  const { storage, getKey, allowQueryKey = false, now = Date.now } = options;
  const windowMs = windowFor(storage, options.windowMs, 'statsHandler');
  const logger = options.logger ?? defaultLogger();
  return async (req, res) => {
    const send = (rejection: Rejection): void => {
      if (rejection.retryAfter !== undefined) res.setHeader('Retry-After', String(rejection.retryAfter));
      res.status(rejection.status).json(errorBodyFor(req, rejection));
    };
    const found = lookupKey(req, { getKey, allowQueryKey });
    if (found.kind === 'missing') return send(rejections.missingKey());
    if (found.kind === 'invalid') return send(rejections.invalidKey(found.reason));
    try {
      const known = await storage.findKeyByDigest(digestKey(found.key));
      // Read by id too: a lookup by digest may be a few seconds old, and these are the totals.
      const key = known && (await storage.getKey(known.id));
      if (!key) return send(rejections.invalidKey());
      const at = now();
      res.json(statsView(key, await storage.windowUsage(key.id, at, windowMs), at, windowMs));
    } catch (error) {
      logger.error({ err: error }, 'stats lookup failed');
      send(rejections.unavailable());
    }
  };
}
