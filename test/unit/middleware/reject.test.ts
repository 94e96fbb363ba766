// Refusal bodies in each client's dialect, and the retry headers the official SDKs obey.
import type { IncomingMessage } from 'node:http';
import type { Response } from 'express';
import { describe, expect, it } from 'vitest';
import { rejections, setRetryHeaders } from '../../../middleware/reject.js';
import { errorBodyFor } from '../../../src/http/error-body.js';

const request = (headers: Record<string, string> = {}): IncomingMessage => ({ headers }) as IncomingMessage;

function retryHeaders(rejection: Parameters<typeof setRetryHeaders>[1]): Record<string, string> {
  const set: Record<string, string> = {};
  setRetryHeaders({ setHeader: (name: string, value: string) => void (set[name.toLowerCase()] = value) } as unknown as Response, rejection);
  return set;
}

describe('errorBodyFor', () => {
  it("answers OpenAI's shape by default and Anthropic's to a request with anthropic-version", () => {
    const limited = rejections.rateLimited(100, 100, 0, 30);
    expect(errorBodyFor(request(), limited)).toEqual({ error: { message: limited.message, type: 'rate_limit_exceeded', code: 'rate_limit_exceeded', tokens_used: 100, tokens_limit: 100, window_ends_at: '1970-01-01T00:00:00.000Z' } });
    expect(errorBodyFor(request({ 'anthropic-version': '2023-06-01' }), limited)).toEqual({ type: 'error', error: { type: 'rate_limit_error', message: limited.message, tokens_used: 100, tokens_limit: 100, window_ends_at: '1970-01-01T00:00:00.000Z' } });
  });

  it.each([
    [rejections.missingKey(), 'authentication_error'],
    [rejections.expiredKey(0), 'permission_error'],
    [rejections.unavailable(), 'api_error'],
    [rejections.busy(), 'overloaded_error'],
    [rejections.tooLarge(10), 'request_too_large'],
    [rejections.bodyTimeout(1000), 'invalid_request_error'],
  ])('names %j with Anthropic type %s', (rejection, type) => {
    expect(errorBodyFor(request({ 'anthropic-version': '2023-06-01' }), rejection)).toMatchObject({ type: 'error', error: { type } });
  });
});

describe('setRetryHeaders', () => {
  it('tells clients not to retry a quota refusal that lasts over a minute', () => {
    expect(retryHeaders(rejections.rateLimited(1, 1, 0, 60))).toEqual({ 'retry-after': '60' });
    expect(retryHeaders(rejections.rateLimited(1, 1, 0, 61))).toEqual({ 'retry-after': '61', 'x-should-retry': 'false' });
    expect(retryHeaders(rejections.unavailable())).toEqual({ 'retry-after': '1' });
    expect(retryHeaders(rejections.missingKey())).toEqual({});
  });
});
