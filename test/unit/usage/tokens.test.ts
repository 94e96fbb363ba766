// Tests of reading token counts from parsed usage objects.
import { describe, expect, it } from 'vitest';
import { tokensFromUsage } from '../../../src/usage/tokens.js';
import { withoutParts } from '../../helpers/readings.js';

describe('tokensFromUsage', () => {
  it('uses total_tokens when present', () => {
    expect(withoutParts(tokensFromUsage({ prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 }))).toEqual({ tokens: 18 });
  });

  it('adds prompt and completion tokens when total_tokens is missing', () => {
    expect(withoutParts(tokensFromUsage({ prompt_tokens: 11, completion_tokens: 7 }))).toEqual({ tokens: 18 });
  });

  it('uses total_tokens of the Responses API over its input and output tokens', () => {
    expect(withoutParts(tokensFromUsage({ input_tokens: 5, output_tokens: 6, total_tokens: 20 }))).toEqual({ tokens: 20 });
  });

  it('adds the Anthropic input, output and cache fields', () => {
    const usage = { input_tokens: 10, output_tokens: 20, cache_creation_input_tokens: 5, cache_read_input_tokens: 100 };
    expect(withoutParts(tokensFromUsage(usage))).toEqual({ tokens: 135 });
  });

  it('counts missing and null Anthropic fields as zero', () => {
    expect(withoutParts(tokensFromUsage({ input_tokens: 10, output_tokens: 2, cache_read_input_tokens: null }))).toEqual({ tokens: 12 });
    expect(withoutParts(tokensFromUsage({ output_tokens: 9 }))).toEqual({ tokens: 9 });
  });

  it('is undefined for anything that is not a usage object with a known field', () => {
    for (const usage of [undefined, null, 7, 'usage', [], [1, 2], {}, { other: 3 }, { input_tokens: null }]) {
      expect(tokensFromUsage(usage)).toBeUndefined();
    }
  });

  it('names the field and the value of a negative count', () => {
    expect(tokensFromUsage({ total_tokens: -5 })).toEqual({
      problem: 'usage.total_tokens is -5, not a non-negative integer',
    });
  });

  it('refuses an infinite count parsed from 1e400', () => {
    const reading = tokensFromUsage(JSON.parse('{"prompt_tokens": 1e400, "completion_tokens": 1}'));
    expect(reading).toEqual({ problem: 'usage.prompt_tokens is Infinity, not a non-negative integer' });
  });

  it('refuses a count sent as a string', () => {
    expect(tokensFromUsage({ input_tokens: '12' })).toEqual({
      problem: 'usage.input_tokens is "12", not a non-negative integer',
    });
  });

  it('shortens a long value in the problem', () => {
    const reading = tokensFromUsage({ total_tokens: 'x'.repeat(500) });
    expect(reading).toHaveProperty('problem');
    expect((reading as { problem: string }).problem.length).toBeLessThan(100);
  });

  it('refuses a sum past the safe integer range', () => {
    const reading = tokensFromUsage({ input_tokens: Number.MAX_SAFE_INTEGER, output_tokens: 1 });
    expect(reading).toHaveProperty('problem');
  });

  it('never returns a negative, fractional or non-finite count', () => {
    const nasty: unknown[] = [-1, -0.5, 0.5, 1.5, NaN, Infinity, -Infinity, 2 ** 53, JSON.parse('1e400'), '5', true, false, {}, [3], -0];
    const shapes = [
      (v: unknown) => ({ total_tokens: v }),
      (v: unknown) => ({ prompt_tokens: v, completion_tokens: 1 }),
      (v: unknown) => ({ prompt_tokens: 1, completion_tokens: v }),
      (v: unknown) => ({ input_tokens: 1, output_tokens: v }),
      (v: unknown) => ({ input_tokens: 1, cache_creation_input_tokens: v }),
      (v: unknown) => ({ input_tokens: 1, cache_read_input_tokens: v }),
    ];
    for (const value of nasty) {
      for (const shape of shapes) {
        const reading = tokensFromUsage(shape(value));
        if (reading && 'tokens' in reading) {
          expect(Number.isSafeInteger(reading.tokens) && reading.tokens >= 0, `${String(value)} gave ${reading.tokens}`).toBe(true);
          // -0 is the only nasty value that is a valid count (zero).
          expect(Object.is(value, -0)).toBe(true);
        } else {
          expect(reading).toHaveProperty('problem');
        }
      }
    }
  });
});
