// Quota header formatting and key extraction rules.
import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { formatDuration, policyName } from '../../../middleware/headers.js';
import { extractKey } from '../../../middleware/extract-key.js';
import { keyPrefix, keyProblem, MAX_KEY_BYTES } from '../../../src/keys/secret.js';

describe('quota header formats', () => {
  it('writes durations as OpenAI does', () => {
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(42)).toBe('42s');
    expect(formatDuration(360)).toBe('6m0s');
    expect(formatDuration(4 * 3600 + 59 * 60 + 12)).toBe('4h59m12s');
  });
  it('names the policy after the window', () => {
    expect(policyName(5 * 3600_000)).toBe('tokens-5h');
    expect(policyName(90 * 60_000)).toBe('tokens-90m');
    expect(policyName(90_500)).toBe('tokens-91s');
  });
});

const req = (headers: Record<string, string | string[]>, url = '/'): IncomingMessage => ({ headers, url }) as unknown as IncomingMessage;

describe('extractKey', () => {
  it('reads Bearer case-insensitively and trims', () => {
    expect(extractKey(req({ authorization: '  bEaReR \t k-1  ' }), false)).toEqual({ kind: 'found', key: 'k-1' });
  });
  it('falls through a non-Bearer Authorization to x-api-key', () => {
    expect(extractKey(req({ authorization: 'Basic eDp5', 'x-api-key': 'k-2' }), false)).toEqual({ kind: 'found', key: 'k-2' });
  });
  it('does not read Bearer glued to the key', () => {
    expect(extractKey(req({ authorization: 'Bearerk' }), false)).toEqual({ kind: 'missing' });
  });
  it('treats repeated x-api-key headers as malformed', () => {
    expect(extractKey(req({ 'x-api-key': ['a', 'b'] }), false).kind).toBe('invalid');
  });
  it('reads ?api_key= only when allowed', () => {
    expect(extractKey(req({}, '/x?a=1&api_key=k-3'), true)).toEqual({ kind: 'found', key: 'k-3' });
    expect(extractKey(req({}, '/x?api_key=k-3'), false)).toEqual({ kind: 'missing' });
  });
  it('takes visible ASCII up to 512 bytes, and nothing HTTP cannot carry', () => {
    expect(keyProblem('!'.repeat(MAX_KEY_BYTES))).toBeUndefined();
    expect(keyProblem('~pk_user_123!')).toBeUndefined();
    expect(keyProblem('a'.repeat(MAX_KEY_BYTES + 1))).toMatch(/longer than 512 bytes/);
    for (const key of ['é', 'pk_ünïcode', 'a b', 'a\u0085b', 'a\u007fb', 'a\tb']) expect(keyProblem(key), key).toMatch(/visible ASCII/);
  });
  it('shows at most a quarter of a key, and at most 8 characters', () => {
    expect(keyPrefix('pk_user_123')).toBe('pk');
    expect(keyPrefix('tg-abcdefghijklmnopqrstuvwxyz0123456')).toBe('tg-abcde');
    expect(keyPrefix('abc')).toBe('');
  });
});
