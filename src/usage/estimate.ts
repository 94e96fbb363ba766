// Token estimates from byte counts: what to reserve before a request, and what to charge when usage is missing.

// The usual rule of thumb for English text and code: about four bytes per token.
const BYTES_PER_TOKEN = 4;
const DECLARED_LIMITS = ['max_tokens', 'max_completion_tokens', 'max_output_tokens'] as const;
// Larger declared limits are no real model's and would lock a key out, so they are ignored.
const MAX_DECLARED = 10_000_000;

/** Tokens to reserve for a request: ceil(body bytes / 4) + the declared max_tokens / max_completion_tokens / max_output_tokens (first present valid one), at least 1. `body` is the parsed JSON body or undefined. Invalid declared values (negative, non-integer, huge > 10_000_000, strings) are ignored. */
export function estimateRequestTokens(bodyBytes: number, body: unknown): number {
  return Math.max(1, bytesToTokens(bodyBytes) + declaredLimit(body));
}

/** Tokens charged when a response carries no usable usage: ceil((request bytes + response bytes) / 4), at least 1. */
export function estimateFromBytes(requestBytes: number, responseBytes: number): number {
  return Math.max(1, bytesToTokens(Math.max(0, requestBytes) + Math.max(0, responseBytes)));
}

/** ceil(bytes / 4), 0 for nothing (or anything not a positive number). */
export function bytesToTokens(bytes: number): number {
  return Number.isFinite(bytes) && bytes > 0 ? Math.ceil(bytes / BYTES_PER_TOKEN) : 0;
}

function declaredLimit(body: unknown): number {
  if (typeof body !== 'object' || body === null) return 0;
  for (const name of DECLARED_LIMITS) {
    const value: unknown = (body as Record<string, unknown>)[name];
    if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= MAX_DECLARED) return value;
  }
  return 0;
}
