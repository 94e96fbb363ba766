// Rejections: the status, OpenAI-style error body and Retry-After of every refused request.
import type { NextFunction, Request, Response } from 'express';
import { errorBodyFor, type RejectionType } from '../src/http/error-body.js';

export interface Rejection {
  status: 401 | 403 | 408 | 413 | 429 | 503;
  type: RejectionType;
  code: string;
  message: string;
  /** Extra fields of the error object (the 429 carries tokens_used, tokens_limit, window_ends_at). */
  details?: Record<string, unknown>;
  /** Seconds, for 429 and 503 (also set as the Retry-After header before the handler runs). */
  retryAfter?: number;
}

/**
 * Sends a rejection; replace it with the `handler` option. Headers are already set when it runs.
 * A request whose body is still arriving has its connection closed shortly after the answer.
 */
export type RejectionHandler = (req: Request, res: Response, next: NextFunction, rejection: Rejection) => void;

/** A quota refusal whose wait is longer than this tells clients not to retry (the official SDKs would sleep for hours). */
const LONGEST_RETRY_SECONDS = 60;

/** `Retry-After`, and `x-should-retry: false` (which the OpenAI and Anthropic SDKs obey) when the wait is too long to be worth it. */
export function setRetryHeaders(res: Response, rejection: Rejection): void {
  if (rejection.retryAfter === undefined) return;
  res.setHeader('Retry-After', String(rejection.retryAfter));
  if (rejection.status === 429 && rejection.retryAfter > LONGEST_RETRY_SECONDS) res.setHeader('x-should-retry', 'false');
}

export const sendRejection: RejectionHandler = (req, res, _next, rejection) => {
  res.status(rejection.status).json(errorBodyFor(req, rejection));
};

export const rejections = {
  missingKey: (): Rejection => ({
    status: 401,
    type: 'authentication_error',
    code: 'missing_api_key',
    message: 'No API key provided. Send it as "Authorization: Bearer <key>" or "x-api-key: <key>".',
  }),
  invalidKey: (reason?: string): Rejection => ({
    status: 401,
    type: 'authentication_error',
    code: 'invalid_api_key',
    message: reason ? `Invalid API key: ${reason}.` : 'Invalid API key.',
  }),
  expiredKey: (expiredAt: number): Rejection => ({
    status: 403,
    type: 'permission_error',
    code: 'key_expired',
    message: `This API key expired at ${new Date(expiredAt).toISOString()}.`,
  }),
  /** `name`: the limit that refused, when the key has several. */
  rateLimited: (used: number, limit: number, windowEndsAt: number, retryAfter: number, name?: string): Rejection => ({
    status: 429,
    type: 'rate_limit_exceeded',
    code: 'rate_limit_exceeded',
    message: name === undefined ? `Token limit of ${limit} per window reached; retry in ${retryAfter}s.` : `Token limit "${name}" of ${limit} reached; retry in ${retryAfter}s.`,
    details: { tokens_used: used, tokens_limit: limit, window_ends_at: new Date(windowEndsAt).toISOString(), ...(name === undefined ? {} : { limit: name }) },
    retryAfter,
  }),
  unavailable: (): Rejection => ({
    status: 503,
    type: 'service_unavailable',
    code: 'service_unavailable',
    message: 'The quota store is unavailable; the request could not be decided.',
    retryAfter: 1,
  }),
  busy: (): Rejection => ({
    status: 503,
    type: 'service_unavailable',
    code: 'overloaded',
    message: 'The gate is holding as many request bodies as it may; retry shortly.',
    retryAfter: 1,
  }),
  bodyTimeout: (timeoutMs: number): Rejection => ({
    status: 408,
    type: 'invalid_request_error',
    code: 'request_timeout',
    message: `The request body did not arrive within ${timeoutMs / 1000}s.`,
  }),
  tooLarge: (limit: number): Rejection => ({
    status: 413,
    type: 'invalid_request_error',
    code: 'request_too_large',
    message: `Request body is larger than ${limit} bytes.`,
  }),
};
