// What a finished (or aborted) response is charged, and whether that figure was reported or estimated.
import { bytesToTokens, estimateFromBytes } from './estimate.js';
import type { UnreadableReason, UsageReading } from './tokens.js';
import { asInput, weigh, type ResolvedWeights, type TokenParts } from './weights.js';

export interface ChargeInput {
  status: number;
  /** The client or the upstream went away before the response ended. */
  aborted: boolean;
  /** The response had begun (its headers were sent): the upstream answered, so it had the request body. */
  answered: boolean;
  chargeFailedResponses: boolean;
  /** Usage readings in order of precedence (user function, header, body); the first whole count wins. */
  readings: readonly (UsageReading | undefined)[];
  requestBytes: number;
  /** Decoded body bytes the response wrote. */
  responseBytes: number;
  /** Of the body, the share that reached the client's socket (1 when the response finished). */
  deliveredShare: number;
  /** Characters of generated text in the body, when the body is an event stream the reader knows. */
  generatedText: number | undefined;
  /** What a token of each kind is charged; usage without a split (and every estimate) is input. */
  weights: ResolvedWeights;
}

export interface Charge {
  /** The weighted charge, rounded up. */
  tokens: number;
  source: 'reported' | 'estimated' | 'none';
  /** Why reported usage could not be used, when a reading was malformed. */
  problem?: string;
  /** Why the charge is an estimate although the body was to be read, for the unreadable metric. */
  unreadable?: UnreadableReason;
}

/**
 * Only 2xx responses are charged (unless told otherwise). A whole reported count is charged as is.
 * A response cut short (aborted, or a stream that stopped before its final usage event) is charged
 * the larger of the usage reported so far and the prompt estimate plus the output the client
 * received: its generated text / 4, or its delivered bytes / 4 when the body is not understood.
 * A finished response without usage is charged (request + response bytes) / 4. Never zero once
 * the upstream answered. Each count is then weighted by kind.
 */
export function chargeFor(input: ChargeInput): Charge {
  const { parts, ...charge } = countFor(input);
  return { ...charge, tokens: parts ? weigh(parts, input.weights) : 0 };
}

type Counted = Omit<Charge, 'tokens'> & { parts: TokenParts | undefined };

function countFor(input: ChargeInput): Counted {
  const success = input.status >= 200 && input.status < 300;
  if (!success && !input.chargeFailedResponses) return { parts: undefined, source: 'none' };
  let problem: string | undefined;
  let reason: UnreadableReason | undefined;
  let partial: Extract<UsageReading, { tokens: number }> | undefined;
  for (const reading of input.readings) {
    if (reading === undefined) continue;
    if (!('tokens' in reading)) {
      problem ??= reading.problem;
      reason ??= reading.reason ?? 'malformed';
    } else if (reading.partial) partial ??= reading;
    else return { parts: reading.parts ?? asInput(reading.tokens), source: 'reported' };
  }
  const cut = input.aborted || partial !== undefined;
  let charge: Counted;
  if (!cut) {
    charge = { parts: asInput(estimateFromBytes(input.requestBytes, input.responseBytes)), source: 'estimated', unreadable: reason ?? 'no_usage' };
  } else if (!input.answered && partial === undefined && input.responseBytes === 0) {
    // Nothing came back: the request may never have reached the upstream.
    charge = { parts: undefined, source: 'none' };
  } else {
    const output = outputTokens(input);
    const prompt = output > 0 ? bytesToTokens(input.requestBytes) : Math.max(1, bytesToTokens(input.requestBytes));
    charge =
      partial !== undefined && partial.tokens >= prompt + output
        ? { parts: partial.parts ?? asInput(partial.tokens), source: 'reported' }
        : { parts: { ...asInput(prompt), output }, source: 'estimated' };
    if (reason !== undefined) charge.unreadable = reason;
  }
  if (problem !== undefined) charge.problem = problem;
  return charge;
}

/** Tokens of output the client received: its generated text / 4, or its delivered bytes / 4. */
function outputTokens(input: ChargeInput): number {
  const share = Math.min(1, Math.max(0, input.deliveredShare));
  const received = input.generatedText ?? input.responseBytes;
  return bytesToTokens(received * share);
}
