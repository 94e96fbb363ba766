// What a finished (or aborted) response is charged, and whether that figure was reported or estimated.
import { estimateFromBytes } from './estimate.js';
import type { UsageReading } from './tokens.js';

export interface ChargeInput {
  status: number;
  /** The client went away before the response ended. */
  aborted: boolean;
  chargeFailedResponses: boolean;
  /** Usage readings in order of precedence (user function, header, body); the first count wins. */
  readings: readonly (UsageReading | undefined)[];
  requestBytes: number;
  responseBytes: number;
}

export interface Charge {
  tokens: number;
  source: 'reported' | 'estimated' | 'none';
  /** Why reported usage could not be used, when a reading was malformed. */
  problem?: string;
}

/**
 * Only 2xx responses are charged (unless told otherwise): the reported usage when there is one,
 * else an estimate from the bytes, never zero once bytes flowed.
 */
export function chargeFor(input: ChargeInput): Charge {
  const success = input.status >= 200 && input.status < 300;
  if (!success && !input.chargeFailedResponses) return { tokens: 0, source: 'none' };
  let problem: string | undefined;
  for (const reading of input.readings) {
    if (reading === undefined) continue;
    if ('tokens' in reading) return { tokens: reading.tokens, source: 'reported' };
    problem ??= reading.problem;
  }
  const charge: Charge =
    input.aborted && input.responseBytes === 0
      ? { tokens: 0, source: 'none' }
      : { tokens: estimateFromBytes(input.requestBytes, input.responseBytes), source: 'estimated' };
  if (problem !== undefined) charge.problem = problem;
  return charge;
}
