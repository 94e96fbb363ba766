// statsHandler(): the caller's own key, its window and its totals, in the /stats shape.
import type { RequestHandler } from 'express';
import { digestKey } from '../src/keys/secret.js';
import { statsView, type StatsView } from '../src/keys/view.js';
import { FIVE_HOURS, limitsOf } from '../src/keys/limits.js';
import { StorageError } from '../src/errors.js';
import type { KeyRecord, Storage } from '../src/storage/types.js';
import { defaultLogger } from '../src/logger.js';
import { lookupKey } from './gate.js';
import { windowFor, type TokenGateOptions } from './options.js';
import { rejections, type Rejection } from './reject.js';
import { errorBodyFor } from '../src/http/error-body.js';

export type StatsOptions = Pick<TokenGateOptions, 'storage' | 'windowMs' | 'getKey' | 'allowQueryKey' | 'now' | 'logger'>;

/** The key's stats: its one limit's window, or each of its limits' (current_usage shows the `5h` one, else the first). */
async function statsOf(storage: Storage, key: KeyRecord, now: number, windowMs: number): Promise<StatsView> {
  if (key.limits == null) {
    const window = await storage.windowUsage(key.id, now, windowMs);
    return statsView(key, window, now, windowMs, [{ limit: limitsOf(key, windowMs)[0]!, ...window }]);
  }
  if (!storage.limitsUsage) throw new StorageError(`the ${storage.backend} store does not decide keys with several limits yet`, false);
  const limits = await storage.limitsUsage(key.id, limitsOf(key, windowMs), now);
  const shown = limits.find((seen) => seen.limit.name === FIVE_HOURS) ?? limits[0]!;
  return statsView(key, shown, now, shown.limit.windowMs, limits);
}

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
      res.json(await statsOf(storage, key, at, windowMs));
    } catch (error) {
      logger.error({ err: error }, 'stats lookup failed');
      send(rejections.unavailable());
    }
  };
}
