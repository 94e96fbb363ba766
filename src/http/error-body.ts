// The error envelope every refusal and failure is answered with, in OpenAI's or Anthropic's dialect.
import type { IncomingMessage } from 'node:http';

/** The gate's own refusals. */
export type RejectionType = 'authentication_error' | 'permission_error' | 'rate_limit_exceeded' | 'service_unavailable' | 'invalid_request_error';

/** Error types beyond the gate's own refusals: the sidecar's proxy and admin API answer with these too. */
export type ErrorType = RejectionType | 'not_found_error' | 'conflict_error' | 'upstream_error' | 'api_error';

export interface ErrorBody {
  error: { message: string; type: ErrorType; code: string } & Record<string, unknown>;
}

/** The fields of an error body: those of a Rejection, or of any other error tokengate answers with. */
export interface ErrorFields {
  type: ErrorType;
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

export function errorBody(error: ErrorFields): ErrorBody {
  return { error: { message: error.message, type: error.type, code: error.code, ...error.details } };
}

/** Anthropic's error body: what its SDK and its clients expect from a request that names an `anthropic-version`. */
export interface AnthropicErrorBody {
  type: 'error';
  error: { type: string; message: string } & Record<string, unknown>;
}

/** Anthropic's name for each error (https://docs.anthropic.com/en/api/errors). */
function anthropicType({ type, code }: ErrorFields): string {
  if (type === 'rate_limit_exceeded') return 'rate_limit_error';
  if (code === 'overloaded') return 'overloaded_error';
  if (code === 'request_too_large') return 'request_too_large';
  if (type === 'service_unavailable' || type === 'upstream_error') return 'api_error';
  if (type === 'conflict_error') return 'invalid_request_error';
  return type;
}

/** The error body in the dialect of the request: Anthropic's when it carries `anthropic-version`, else OpenAI's. */
export function errorBodyFor(req: IncomingMessage, error: ErrorFields): ErrorBody | AnthropicErrorBody {
  if (req.headers['anthropic-version'] === undefined) return errorBody(error);
  return { type: 'error', error: { type: anthropicType(error), message: error.message, ...error.details } };
}
