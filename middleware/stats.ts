// statsHandler() and statsUsageHandler(): the caller's own key, its windows and totals (/stats), its usage over each window (/stats/usage).
import type { RequestHandler } from 'express';
import { digestKey } from '../src/keys/secret.js';
import { limitStats, statsView, type LimitStats, type StatsView } from '../src/keys/view.js';
import { usageView, type UsageView } from '../src/keys/usage-view.js';
import { FIVE_HOURS, limitsOf } from '../src/keys/limits.js';
import { StorageError } from '../src/errors.js';
import type { KeyRecord, LimitWindow, Storage } from '../src/storage/types.js';
import { defaultLogger } from '../src/logger.js';
import { lookupKey } from './gate.js';
import { windowFor, type TokenGateOptions } from './options.js';
import { rejections, type Rejection } from './reject.js';
import { errorBodyFor } from '../src/http/error-body.js';
import { closeUnfinishedUpload } from '../src/http/request-body.js';

export type StatsOptions = Pick<TokenGateOptions, 'storage' | 'windowMs' | 'getKey' | 'allowQueryKey' | 'now' | 'logger'>;

/** The window of each of the key's limits: its one limit's, or each of its own limits'. */
async function windowsOf(storage: Storage, key: KeyRecord, now: number, windowMs: number): Promise<LimitWindow[]> {
  const limits = limitsOf(key, windowMs);
  if (key.limits == null) return [{ limit: limits[0]!, ...(await storage.windowUsage(key.id, now, windowMs)) }];
  if (!storage.limitsUsage) throw new StorageError(`the ${storage.backend} store does not decide keys with several limits`, false);
  return storage.limitsUsage(key.id, limits, now);
}

/** The key's stats: current_usage shows its `5h` limit, else its first. */
async function statsOf(storage: Storage, key: KeyRecord, now: number, windowMs: number): Promise<StatsView> {
  const limits = await windowsOf(storage, key, now, windowMs);
  const shown = limits.find((seen) => seen.limit.name === FIVE_HOURS) ?? limits[0]!;
  return statsView(key, shown, now, shown.limit.windowMs, limits);
}

/** Where each of the key's limits stands, as /stats lists them: the admin list of keys with their usage. */
export async function limitsStatsOf(storage: Storage, key: KeyRecord, now: number, windowMs: number): Promise<LimitStats[]> {
  return (await windowsOf(storage, key, now, windowMs)).map((seen) => limitStats(seen, now));
}

/** The key's usage over each of its limits' windows, in points whose width the server picks. */
export async function usageOf(storage: Storage, key: KeyRecord, now: number, windowMs: number): Promise<UsageView> {
  if (!storage.usageBuckets) throw new StorageError(`the ${storage.backend} store does not show usage over time`, false);
  const limits = limitsOf(key, windowMs);
  const [windows, buckets] = await Promise.all([windowsOf(storage, key, now, windowMs), Promise.all(limits.map((limit) => storage.usageBuckets!(key.id, limit, now)))]);
  return usageView(key, windows, buckets, now);
}

/** Answers with the caller's key stats; an expired key still sees its stats (`is_expired: true`). */
export function statsHandler(options: StatsOptions): RequestHandler {
  return keyHandler(options, 'statsHandler', statsOf);
}

/** Answers with the caller's usage over each window (`GET /stats/usage`); an expired key still sees it. */
export function statsUsageHandler(options: StatsOptions): RequestHandler {
  return keyHandler(options, 'statsUsageHandler', usageOf);
}

/** A handler that finds the caller's key (as the gate does) and answers with what `answer` makes of it. */
function keyHandler(options: StatsOptions, name: string, answer: (storage: Storage, key: KeyRecord, now: number, windowMs: number) => Promise<unknown>): RequestHandler {
  const { storage, getKey, allowQueryKey = false, now = Date.now } = options;
  const windowMs = windowFor(storage, options.windowMs, name);
  const logger = options.logger ?? defaultLogger();
  return async (req, res) => {
    // Nothing of a body is read here: a client still sending one cannot hold the connection with it.
    closeUnfinishedUpload(req, res);
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
      res.json(await answer(storage, key, now(), windowMs));
    } catch (error) {
      logger.error({ err: error }, 'stats lookup failed');
      send(rejections.unavailable());
    }
  };
}
