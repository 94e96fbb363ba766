// tokenGate(): authenticate the key, admit on a reservation or refuse, then meter the response.
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { digestKey } from '../src/keys/secret.js';
import { remainingTokens } from '../src/quota/admission.js';
import { msUntilLeaves, toSeconds } from '../src/quota/window.js';
import { windowStart } from '../src/keys/view.js';
import type { KeyRecord, Limit, WindowUsage } from '../src/types.js';
import { BodyMemory, BodyMemoryError, BodyTimeoutError, BodyTooLargeError, declaredTooLarge, readRequestBody, type BodyRules, type RequestBody } from './body.js';
import { closeUnfinishedUpload } from '../src/http/request-body.js';
import { estimateRequestTokens } from '../src/usage/estimate.js';
import { newRecordId } from '../src/usage/record-id.js';
import { reservationFor } from '../src/usage/weights.js';
import { checkKey, extractKey, type KeyLookup } from './extract-key.js';
import { setLimitHeaders, setQuotaHeaders } from './headers.js';
import { applicableLimits, leastRemaining, type LimitQuota } from '../src/quota/limits.js';
import { limitsOf } from '../src/keys/limits.js';
import { installMeter, meterResponse } from './meter.js';
import { resolveOptions, type GateConfig, type TokenGateOptions } from './options.js';
import { rejections, setRetryHeaders, type Rejection } from './reject.js';
import type { RequestOutcome } from '../src/ops/metrics.js';
import { storageCall } from './storage-call.js';
import './request.js';

/** The middleware, and a way to wait for the usage of finished responses to be recorded. */
export interface TokenGateMiddleware extends RequestHandler {
  /**
   * Resolves once the usage of every response that has ended so far is recorded (recording runs
   * after a response ends). Await it on shutdown, after the server has closed, before closing the storage.
   */
  settled(): Promise<void>;
}

/** The Express middleware. Mount it before the handler that proxies to the upstream. */
export function tokenGate(options: TokenGateOptions): TokenGateMiddleware {
  const config = resolveOptions(options);
  config.metrics?.watch(config.storage);
  installMeter();
  const recording = new Set<Promise<void>>();
  const track = (settling: Promise<void>): void => {
    recording.add(settling);
    void settling.finally(() => recording.delete(settling));
  };
  const bodyRules: BodyRules = { limit: config.bodyLimit, timeoutMs: config.bodyTimeoutMs, memory: new BodyMemory(config.bodyMemoryLimit) };
  const middleware: RequestHandler = (req, res, next) => {
    gate(req, res, next, config, bodyRules, track).catch(next);
  };
  return Object.assign(middleware, {
    async settled(): Promise<void> {
      while (recording.size > 0) await Promise.allSettled([...recording]);
    },
  });
}

/** Tokens to reserve: the configured estimate, or the default one when that is not a usable number. */
function estimateFor(req: Request, body: RequestBody, config: GateConfig): number {
  const estimate = config.estimate(req, body);
  if (typeof estimate === 'number' && Number.isFinite(estimate) && estimate >= 0) return Math.max(1, Math.ceil(estimate));
  config.logger.warn({ estimate: String(estimate) }, 'the estimate option returned no usable number; using the default estimate');
  return estimateRequestTokens(body.bytes, body.json);
}

/**
 * The key's limits that apply to the request: those scoped to models match `pinned` (the key's
 * model, when it goes upstream in place of the request's), else the body's JSON `model`. When no
 * model can be read (a body not JSON, compressed, without one), every limit applies: a client
 * cannot step around a scoped limit by hiding the model from the gate.
 */
function limitsFor(key: KeyRecord, windowMs: number, pinned: string | null, json: unknown): readonly Limit[] {
  const limits = limitsOf(key, windowMs);
  const written = typeof json === 'object' && json !== null ? (json as { model?: unknown }).model : undefined;
  const model = pinned ?? (typeof written === 'string' ? written : undefined);
  return model === undefined ? limits : applicableLimits(limits, model);
}

interface Shown extends LimitQuota {
  window: WindowUsage;
  windowEndsAt: number;
}

/** Where one limit stands for the headers and the 429 body. */
function quotaOf(window: WindowUsage, tokens: number, windowMs: number, now: number, limit?: Limit): Shown {
  return {
    limit: limit ?? { name: '5h', tokens, windowMs },
    window,
    remaining: remainingTokens({ limit: tokens, used: window.used, reserved: window.reserved }),
    resetSeconds: toSeconds(msUntilLeaves(window.oldestBucketStart, now, windowMs)),
    windowEndsAt: windowStart(window, now) + windowMs,
  };
}

/** The key a request carries, by the configured means. */
export function lookupKey(req: Request, config: Pick<GateConfig, 'getKey' | 'allowQueryKey'>): KeyLookup {
  return config.getKey ? checkKey(config.getKey(req)) : extractKey(req, config.allowQueryKey);
}

async function gate(req: Request, res: Response, next: NextFunction, config: GateConfig, bodyRules: BodyRules, track: (settling: Promise<void>) => void): Promise<void> {
  const { metrics } = config;
  const reject = (rejection: Rejection, outcome?: RequestOutcome, keyId?: string): void => {
    if (outcome) metrics?.countRequest(outcome, keyId);
    // A client refused before its body arrived cannot hold the connection by sending it slowly.
    closeUnfinishedUpload(req, res);
    res.status(rejection.status);
    setRetryHeaders(res, rejection);
    config.handler(req, res, next, rejection);
  };
  if (config.skip?.(req, res)) return next();
  if (declaredTooLarge(req, config.bodyLimit)) return reject(rejections.tooLarge(config.bodyLimit));

  // The key is known before a byte of the body is read: nobody without one can make the gate hold memory.
  const found = lookupKey(req, config);
  if (found.kind === 'missing') return reject(rejections.missingKey(), 'unauthenticated');
  if (found.kind === 'invalid') return reject(rejections.invalidKey(found.reason), 'unauthenticated');
  let key: KeyRecord | undefined;
  try {
    const digest = digestKey(found.key);
    key = await storageCall(config, 'findKey', () => config.storage.findKeyByDigest(digest));
  } catch (error) {
    config.logger.error({ err: error }, 'key lookup failed');
    return reject(rejections.unavailable(), 'unavailable');
  }
  if (!key) return reject(rejections.invalidKey(), 'unauthenticated');
  const now = config.now();
  if (key.expiresAt <= now) return reject(rejections.expiredKey(key.expiresAt), 'expired', key.id);

  let body;
  try {
    body = await readRequestBody(req, bodyRules);
  } catch (error) {
    if (error instanceof BodyTooLargeError) return reject(rejections.tooLarge(config.bodyLimit));
    if (error instanceof BodyTimeoutError) return reject(rejections.bodyTimeout(error.timeoutMs));
    if (error instanceof BodyMemoryError) return reject(rejections.busy(), 'unavailable', key.id);
    return; // the client went away while sending: there is no one to answer
  }

  const { windowMs } = config;
  const weights = config.weightsOf(key.tokenWeights);
  const estimate = reservationFor(estimateFor(req, body, config), weights);
  let admission;
  try {
    // A key with limits of its own is admitted on those that apply to the request's model.
    const limits = key.limits == null ? undefined : limitsFor(key, windowMs, config.keyModelWins ? key.model : null, body.json);
    const request = { keyId: key.id, tokenLimit: key.tokenLimit, estimate, requestId: newRecordId(), now, windowMs, ...(limits ? { limits } : {}) };
    admission = await storageCall(config, 'admit', () => config.storage.admit(request));
  } catch (error) {
    config.logger.error({ err: error, keyId: key.id }, 'admission failed');
    return reject(rejections.unavailable(), 'unavailable');
  }
  if (admission.admitted && (res.destroyed || req.socket?.destroyed)) {
    // The client left while the admission was decided (req.destroyed only says the body was read):
    // its 'close' has fired already, so nothing would ever settle this reservation. Nothing was
    // sent upstream: give it all back.
    const { reservation } = admission;
    track(storageCall(config, 'release', () => config.storage.release(reservation)).catch((error: unknown) => config.logger.error({ err: error, keyId: key.id }, 'releasing a reservation failed')));
    return;
  }
  const { window } = admission;
  // The window the single-valued figures describe: the key's one limit, or the one with least remaining (or that refused).
  const quotas = admission.limits?.map((seen) => quotaOf(seen, seen.limit.tokens, seen.limit.windowMs, now, seen.limit));
  const shown: Shown = quotas ? (admission.admitted ? leastRemaining(quotas)! : quotas.find((quota) => quota.limit.name === admission.refusedBy)!) : quotaOf(window, key.tokenLimit, windowMs, now);
  if (quotas) setLimitHeaders(res, quotas);
  else setQuotaHeaders(res, { limit: key.tokenLimit, remaining: shown.remaining, resetSeconds: shown.resetSeconds, windowMs });
  const { remaining, windowEndsAt } = shown;

  if (!admission.admitted) {
    const retryAfter = Math.max(1, toSeconds(admission.retryAfterMs));
    return reject(rejections.rateLimited(shown.window.used, shown.limit.tokens, windowEndsAt, retryAfter, quotas ? shown.limit.name : undefined), 'rate_limited', key.id);
  }
  metrics?.countRequest('admitted', key.id);
  metrics?.reservedTokens.inc(admission.reservation.tokens);
  req.tokenGate = {
    key: { id: key.id, name: key.name, model: key.model, tokenLimit: key.tokenLimit },
    usage: { used: shown.window.used, reserved: shown.window.reserved, remaining, windowEndsAt: new Date(windowEndsAt) },
  };
  meterResponse(req, res, config, admission.reservation, body.bytes, weights, track);
  next();
}
