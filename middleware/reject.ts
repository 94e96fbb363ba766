// Rejections: the status, OpenAI-style error body and Retry-After of every refused request.
import type { NextFunction, Request, Response } from 'express';

export type RejectionType = 'authentication_error' | 'permission_error' | 'rate_limit_exceeded' | 'service_unavailable' | 'invalid_request_error';

export interface Rejection {
  status: 401 | 403 | 413 | 429 | 503;
  type: RejectionType;
  code: string;
  message: string;
  /** Extra fields of the error object (the 429 carries tokens_used, tokens_limit, window_ends_at). */
  details?: Record<string, unknown>;
  /** Seconds, for 429 and 503 (also set as the Retry-After header before the handler runs). */
  retryAfter?: number;
}

/** Sends a rejection; replace it with the `handler` option. Headers are already set when it runs. */
export type RejectionHandler = (req: Request, res: Response, next: NextFunction, rejection: Rejection) => void;

export interface ErrorBody {
  error: { message: string; type: RejectionType; code: string } & Record<string, unknown>;
}

export function errorBody(rejection: Rejection): ErrorBody {
  return { error: { message: rejection.message, type: rejection.type, code: rejection.code, ...rejection.details } };
}

export const sendRejection: RejectionHandler = (_req, res, _next, rejection) => {
  res.status(rejection.status).json(errorBody(rejection));
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
  rateLimited: (used: number, limit: number, windowEndsAt: number, retryAfter: number): Rejection => ({
    status: 429,
    type: 'rate_limit_exceeded',
    code: 'rate_limit_exceeded',
    message: `Token limit of ${limit} per window reached; retry in ${retryAfter}s.`,
    details: { tokens_used: used, tokens_limit: limit, window_ends_at: new Date(windowEndsAt).toISOString() },
    retryAfter,
  }),
  unavailable: (): Rejection => ({
    status: 503,
    type: 'service_unavailable',
    code: 'service_unavailable',
    message: 'The quota store is unavailable; the request could not be decided.',
    retryAfter: 1,
  }),
  tooLarge: (limit: number): Rejection => ({
    status: 413,
    type: 'invalid_request_error',
    code: 'request_too_large',
    message: `Request body is larger than ${limit} bytes.`,
  }),
};
