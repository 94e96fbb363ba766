// tokenGate() options, each documented where it is declared, and their defaults.
import type { Request, Response } from 'express';
import { formatDuration } from '../src/config.js';
import { ConfigError } from '../src/errors.js';
import { openedWindow } from '../src/storage/opened-window.js';
import type { Storage } from '../src/storage/types.js';
import type { Logger } from '../src/types.js';
import { defaultLogger } from '../src/logger.js';
import type { TokenGateMetrics } from '../src/ops/metrics.js';
import { DEFAULT_WINDOW_MS } from '../src/quota/window.js';
import { estimateRequestTokens } from '../src/usage/estimate.js';
import { checkWeights, parseWeights, weightsResolver, type ResolvedWeights, type TokenWeights } from '../src/usage/weights.js';
import { DEFAULT_BODY_LIMIT, DEFAULT_BODY_TIMEOUT_MS, defaultBodyMemoryLimit } from '../src/http/request-body.js';
import type { RequestBody } from './body.js';
import { sendRejection, type RejectionHandler } from './reject.js';

export interface TokenGateOptions {
  /** The store that holds keys and usage: `await createStorage()`. */
  storage: Storage;
  /**
   * Length of the rolling window, in milliseconds. Default: the `windowMs` the storage was opened
   * with (`createStorage({ windowMs })`), 5 hours unless told otherwise; a longer one is a ConfigError.
   */
  windowMs?: number;
  /**
   * Reads the key from a request, replacing the default (`Authorization: Bearer`, then `x-api-key`,
   * then `?api_key=` when `allowQueryKey` is set). Return undefined when the request carries none.
   */
  getKey?: (req: Request) => string | undefined;
  /** Also accept the key in the `api_key` query parameter. Default: false (query strings end up in logs). */
  allowQueryKey?: boolean;
  /** Requests for which this returns true pass ungated and uncounted (health checks, say). */
  skip?: (req: Request, res: Response) => boolean;
  /** Sends refusals (401, 403, 408, 413, 429, 503). Status, quota headers and Retry-After are set before it runs. */
  handler?: RejectionHandler;
  /** Tokens to reserve at admission. Default: ceil(body bytes / 4) + the body's max_tokens / max_completion_tokens. */
  estimate?: (req: Request, body: RequestBody) => number;
  /**
   * Tokens a finished response used, for upstreams that report usage their own way. Return
   * undefined to fall back to the usage header, then the body's usage, then an estimate.
   */
  getUsage?: (req: Request, res: Response) => number | undefined;
  /** Response header carrying a token count, for non-LLM upstreams. Default: `x-tokengate-usage`. */
  usageHeader?: string;
  /** Charge non-2xx responses too. Default: false, only 2xx responses are charged. */
  chargeFailedResponses?: boolean;
  /** Largest request body accepted, in bytes; a larger one gets 413 before any lookup. Default: 10 MiB. */
  bodyLimit?: number;
  /**
   * Longest time a request body may take to arrive once its key is known, in milliseconds; a slower
   * one gets 408 and its connection is closed. Default: 60 s.
   */
  bodyTimeoutMs?: number;
  /**
   * Bytes of request bodies being read at once, all requests together (a declared Content-Length
   * counts in full from the start). A body that does not fit gets 503 with Retry-After: 1 and its
   * connection is closed. At least `bodyLimit`. Default: 100 MiB, or `bodyLimit` when that is larger.
   */
  bodyMemoryLimit?: number;
  /**
   * What a token of each kind is charged by default: `{ cache_read: 0.1 }`, or the same as text,
   * `input=1,output=1,cache_creation=1.25,cache_read=0.1` (the sidecar's `TOKEN_WEIGHTS`). A key's
   * own weights override these kind by kind. The charge is the weighted sum, rounded up; usage
   * without a split (a header, `getUsage`, `total_tokens` alone, an estimate) is input. A weight
   * above 1 scales the reservation too. Default: every kind weighs 1, the exact count.
   */
  weights?: TokenWeights | string;
  /**
   * The upstream gets the key's model in place of the request's, when the key has one (what the
   * sidecar's OVERRIDE_MODEL does, or your own handler): limits scoped to models then match the
   * key's model. Default: false, they match the request body's `model`.
   */
  keyModelWins?: boolean;
  /** The clock, in milliseconds since the epoch. Default: Date.now. */
  now?: () => number;
  /** Where warnings (unreadable upstream usage) and errors go; any pino logger. Default: JSON on stdout. */
  logger?: Logger;
  /**
   * Prometheus metrics to keep: `createMetrics()`. Counts each decision's outcome (a 413 is not a
   * decision and is not counted), charged tokens by source, tokens reserved in flight, and the
   * duration of each storage call. Default: none, and no metrics work at all.
   */
  metrics?: TokenGateMetrics;
}

/** setTimeout's largest delay. */
const MAX_TIMER_MS = 2_147_483_647;

type Unset = 'getKey' | 'skip' | 'getUsage' | 'metrics';
export type GateConfig = Required<Omit<TokenGateOptions, Unset | 'weights'>> &
  Pick<TokenGateOptions, Unset> & {
    /** A key's weights (its own over the defaults), from its `tokenWeights`. */
    weightsOf: (own: string | null) => ResolvedWeights;
  };

/**
 * The window a gate (or /stats) on `storage` uses: `windowMs`, else the one the storage was opened
 * with. A longer one than the storage keeps is refused: its older usage would be pruned, or never
 * kept by the file store, while it still counts.
 */
export function windowFor(storage: Storage, windowMs: number | undefined, caller: string): number {
  const kept = openedWindow(storage);
  const window = windowMs ?? kept ?? DEFAULT_WINDOW_MS;
  if (kept !== undefined && window > kept) {
    throw new ConfigError(`${caller}: \`windowMs\` (${formatDuration(window)}) is longer than the window its storage keeps (${formatDuration(kept)}): pass the same windowMs to createStorage()`);
  }
  return window;
}

function defaultWeights(weights: TokenWeights | string | undefined): TokenWeights {
  try {
    if (weights === undefined) return {};
    return typeof weights === 'string' ? parseWeights(weights, 'weights') : checkWeights(weights, 'weights');
  } catch (error) {
    throw new TypeError(`tokenGate: ${(error as Error).message}`);
  }
}

export function resolveOptions(options: TokenGateOptions): GateConfig {
  if (!options?.storage) throw new TypeError('tokenGate: the `storage` option is required (await createStorage())');
  const windowMs = windowFor(options.storage, options.windowMs, 'tokenGate');
  if (!Number.isSafeInteger(windowMs) || windowMs < 60_000) throw new TypeError('tokenGate: `windowMs` must be an integer of at least 60000');
  const bodyLimit = options.bodyLimit ?? DEFAULT_BODY_LIMIT;
  if (!Number.isSafeInteger(bodyLimit) || bodyLimit < 0) throw new TypeError('tokenGate: `bodyLimit` must be a non-negative integer');
  const bodyTimeoutMs = options.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS;
  if (!Number.isSafeInteger(bodyTimeoutMs) || bodyTimeoutMs < 1 || bodyTimeoutMs > MAX_TIMER_MS) throw new TypeError(`tokenGate: \`bodyTimeoutMs\` must be an integer from 1 to ${MAX_TIMER_MS}`);
  const bodyMemoryLimit = options.bodyMemoryLimit ?? defaultBodyMemoryLimit(bodyLimit);
  if (!Number.isSafeInteger(bodyMemoryLimit) || bodyMemoryLimit < bodyLimit) throw new TypeError('tokenGate: `bodyMemoryLimit` must be an integer of at least `bodyLimit`');
  const { weights, ...rest } = options;
  return {
    ...rest,
    weightsOf: weightsResolver(defaultWeights(weights)),
    windowMs,
    bodyLimit,
    bodyTimeoutMs,
    bodyMemoryLimit,
    allowQueryKey: options.allowQueryKey ?? false,
    handler: options.handler ?? sendRejection,
    estimate: options.estimate ?? ((_req, body) => estimateRequestTokens(body.bytes, body.json)),
    usageHeader: (options.usageHeader ?? 'x-tokengate-usage').toLowerCase(),
    chargeFailedResponses: options.chargeFailedResponses ?? false,
    keyModelWins: options.keyModelWins ?? false,
    now: options.now ?? Date.now,
    logger: options.logger ?? defaultLogger(),
  };
}
