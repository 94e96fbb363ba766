// Tests of the byte-based token estimates.
import { describe, expect, it } from 'vitest';
import { estimateFromBytes, estimateRequestTokens } from '../../../src/usage/estimate.js';

describe('estimateRequestTokens', () => {
  it('adds a quarter of the body bytes to max_tokens', () => {
    expect(estimateRequestTokens(400, { max_tokens: 100 })).toBe(200);
  });

  it('rounds the byte part up', () => {
    expect(estimateRequestTokens(401, undefined)).toBe(101);
  });

  it('reads max_completion_tokens and max_output_tokens', () => {
    expect(estimateRequestTokens(400, { max_completion_tokens: 50 })).toBe(150);
    expect(estimateRequestTokens(400, { max_output_tokens: 30 })).toBe(130);
  });

  it('takes the first valid declared limit in order', () => {
    expect(estimateRequestTokens(0, { max_tokens: 7, max_completion_tokens: 50 })).toBe(7);
    expect(estimateRequestTokens(0, { max_tokens: -1, max_completion_tokens: 50 })).toBe(50);
  });

  it('ignores invalid declared limits', () => {
    for (const max_tokens of [-5, 1.5, '100', 10_000_001, Infinity, NaN, null, true, { n: 1 }]) {
      expect(estimateRequestTokens(400, { max_tokens })).toBe(100);
    }
  });

  it('accepts the largest allowed declared limit', () => {
    expect(estimateRequestTokens(0, { max_tokens: 10_000_000 })).toBe(10_000_000);
  });

  it('ignores a body that is not an object', () => {
    expect(estimateRequestTokens(8, 'max_tokens')).toBe(2);
    expect(estimateRequestTokens(8, null)).toBe(2);
  });

  it('reserves at least one token', () => {
    expect(estimateRequestTokens(0, undefined)).toBe(1);
    expect(estimateRequestTokens(0, { max_tokens: 0 })).toBe(1);
  });
});

describe('estimateFromBytes', () => {
  it('charges a quarter of request and response bytes, rounded up', () => {
    expect(estimateFromBytes(10, 3)).toBe(4);
    expect(estimateFromBytes(400, 400)).toBe(200);
  });

  it('charges at least one token', () => {
    expect(estimateFromBytes(0, 0)).toBe(1);
  });
});
