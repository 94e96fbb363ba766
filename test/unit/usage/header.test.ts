// Tests of reading usage counts from response headers.
import { describe, expect, it } from 'vitest';
import { usageFromHeader } from '../../../src/usage/header.js';

describe('usageFromHeader', () => {
  it('reads a string of digits', () => {
    expect(usageFromHeader('123', 'x-usage')).toEqual({ tokens: 123 });
  });

  it('allows surrounding whitespace', () => {
    expect(usageFromHeader(' 42 ', 'x-usage')).toEqual({ tokens: 42 });
  });

  it('reads a number', () => {
    expect(usageFromHeader(7, 'x-usage')).toEqual({ tokens: 7 });
  });

  it('is undefined when the header is absent', () => {
    expect(usageFromHeader(undefined, 'x-usage')).toBeUndefined();
    expect(usageFromHeader([], 'x-usage')).toBeUndefined();
  });

  it('refuses anything but plain digits, naming the header', () => {
    for (const value of ['-5', '1e3', 'abc', '12abc', '', ' ', '1.5', '+3', '0x10', '١٢', '99999999999999999999']) {
      const reading = usageFromHeader(value, 'x-usage');
      expect(reading, value).toHaveProperty('problem');
      expect((reading as { problem: string }).problem).toContain('x-usage');
    }
  });

  it('refuses numbers that are not non-negative integers', () => {
    for (const value of [-1, 1.5, NaN, Infinity]) {
      expect(usageFromHeader(value, 'x-usage'), String(value)).toHaveProperty('problem');
    }
  });

  it('reads a repeated header with one value', () => {
    expect(usageFromHeader(['9', '9'], 'x-usage')).toEqual({ tokens: 9 });
  });

  it('refuses a repeated header with different values', () => {
    expect(usageFromHeader(['9', '10'], 'x-usage')).toEqual({ problem: 'header x-usage has 2 different values' });
  });
});
