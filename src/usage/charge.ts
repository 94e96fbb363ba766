// What a finished (or aborted) response is charged, and whether that figure was reported or estimated.
import { bytesToTokens, estimateFromBytes } from './estimate.js';
import type { UnreadableReason, UsageReading } from './tokens.js';
import { asInput, atHeaviest, weigh, type ResolvedWeights } from './weights.js';

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
  const success = input.status >= 200 && input.status < 300;
  if (!success && !input.chargeFailedResponses) return { tokens: 0, source: 'none' };
  const { weights } = input;
  let problem: string | undefined;
  let reason: UnreadableReason | undefined;
  let partial: Reported | undefined;
  for (const reading of input.readings) {
    if (reading === undefined) continue;
    if (!('tokens' in reading)) {
      problem ??= reading.problem;
      reason ??= reading.reason ?? 'malformed';
    } else if (reading.partial) partial ??= reading;
    else return { tokens: reportedCharge(reading, weights), source: 'reported' };
  }
  const cut = input.aborted || partial !== undefined;
  let charge: Charge;
  if (!cut) {
    // The prompt's share of the estimate is input, the rest (the response) output.
    const total = estimateFromBytes(input.requestBytes, input.responseBytes);
    const prompt = Math.min(total, bytesToTokens(input.requestBytes));
    charge = { tokens: weigh({ ...asInput(prompt), output: total - prompt }, weights), source: 'estimated', unreadable: reason ?? 'no_usage' };
  } else if (!input.answered && partial === undefined && input.responseBytes === 0) {
    // Nothing came back: the request may never have reached the upstream.
    charge = { tokens: 0, source: 'none' };
  } else {
    const estimate = weigh({ ...asInput(bytesToTokens(input.requestBytes)), output: outputTokens(input) }, weights);
    const reported = partial === undefined ? undefined : reportedCharge(partial, weights);
    charge = reported !== undefined && reported >= estimate ? { tokens: reported, source: 'reported' } : { tokens: Math.max(1, estimate), source: 'estimated' };
    if (reason !== undefined) charge.unreadable = reason;
  }
  if (problem !== undefined) charge.problem = problem;
  return charge;
}

type Reported = Extract<UsageReading, { tokens: number }>;

/** A reading's charge: by kind; a count without a split as input; one whose split did not add up at the heaviest weight. */
function reportedCharge(reading: Reported, weights: ResolvedWeights): number {
  if (reading.unsplit) return atHeaviest(reading.tokens, weights);
  return weigh(reading.parts ?? asInput(reading.tokens), weights);
}

/** Tokens of output the client received: its generated text / 4, or its delivered bytes / 4. */
function outputTokens(input: ChargeInput): number {
  const share = Math.min(1, Math.max(0, input.deliveredShare));
  const received = input.generatedText ?? input.responseBytes;
  return bytesToTokens(received * share);
}
