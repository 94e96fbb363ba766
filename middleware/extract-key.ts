// Finds the caller's key: Authorization: Bearer, then x-api-key, then (when allowed) ?api_key=.
import type { IncomingMessage } from 'node:http';
import { keyProblem } from '../src/keys/secret.js';

export type KeyLookup = { kind: 'found'; key: string } | { kind: 'missing' } | { kind: 'invalid'; reason: string };

const BEARER = /^\s*bearer(?:\s+([^]*))?$/i;

/** The key a request carries; a malformed one is reported as invalid, so it is never looked up. */
export function extractKey(req: IncomingMessage, allowQueryKey: boolean): KeyLookup {
  const authorization = req.headers.authorization;
  const bearer = authorization === undefined ? null : BEARER.exec(authorization);
  // An empty Bearer is no key at all: x-api-key may still carry one.
  if (bearer && bearer[1]?.trim()) return checkKey(bearer[1]);
  const apiKey = req.headers['x-api-key'];
  if (apiKey !== undefined) return checkKey(Array.isArray(apiKey) ? apiKey.join(', ') : apiKey);
  if (allowQueryKey) {
    const query = req.url?.indexOf('?') ?? -1;
    const value = query === -1 ? null : new URLSearchParams(req.url?.slice(query + 1)).get('api_key');
    if (value !== null) return checkKey(value);
  }
  return { kind: 'missing' };
}

/** Trims surrounding spaces; empty means missing; too long, whitespace inside or control characters mean invalid. */
export function checkKey(raw: string | undefined): KeyLookup {
  const key = raw?.trim() ?? '';
  if (key === '') return { kind: 'missing' };
  const problem = keyProblem(key);
  return problem ? { kind: 'invalid', reason: problem } : { kind: 'found', key };
}
