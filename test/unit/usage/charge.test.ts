// Tests of how readings, aborts and estimates combine into what a response is charged.
import { describe, expect, it } from 'vitest';
import { chargeFor, type ChargeInput } from '../../../src/usage/charge.js';
import { reservationFor, resolveWeights, UNIT_WEIGHTS } from '../../../src/usage/weights.js';

const base: ChargeInput = {
  status: 200,
  aborted: false,
  answered: true,
  chargeFailedResponses: false,
  readings: [],
  requestBytes: 400,
  responseBytes: 4000,
  deliveredShare: 1,
  generatedText: undefined,
  weights: UNIT_WEIGHTS,
};
const charge = (input: Partial<ChargeInput>) => chargeFor({ ...base, ...input });

describe('chargeFor', () => {
  it('charges a whole reported count as is, the first one in order of precedence', () => {
    expect(charge({ readings: [undefined, { tokens: 7 }, { tokens: 9 }] })).toEqual({ tokens: 7, source: 'reported' });
    expect(charge({ aborted: true, readings: [{ tokens: 7 }] })).toEqual({ tokens: 7, source: 'reported' });
  });

  it('charges a finished response without usage (request + response bytes) / 4, counted as no_usage', () => {
    expect(charge({})).toEqual({ tokens: 1100, source: 'estimated', unreadable: 'no_usage' });
    expect(charge({ readings: [{ problem: 'bad', reason: 'encoding' }] })).toEqual({ tokens: 1100, source: 'estimated', unreadable: 'encoding', problem: 'bad' });
    expect(charge({ readings: [{ problem: 'bad' }] })).toMatchObject({ unreadable: 'malformed' });
  });

  it('charges an aborted stream the larger of the usage so far and prompt + text received / 4', () => {
    // message_start alone: 26 reported, 100 prompt + 2000 chars of text / 4 = 600.
    expect(charge({ aborted: true, readings: [{ tokens: 26, partial: true }], generatedText: 2000 })).toEqual({ tokens: 600, source: 'estimated' });
    expect(charge({ aborted: true, readings: [{ tokens: 900, partial: true }], generatedText: 2000 })).toEqual({ tokens: 900, source: 'reported' });
    // Half of the body reached the socket: half the text.
    expect(charge({ aborted: true, generatedText: 2000, deliveredShare: 0.5 })).toEqual({ tokens: 350, source: 'estimated' });
  });

  it('charges delivered bytes / 4 when the body is not understood', () => {
    expect(charge({ aborted: true, deliveredShare: 0.25 })).toEqual({ tokens: 100 + 250, source: 'estimated' });
  });

  it('treats a stream that ended before its final usage event like an aborted one', () => {
    expect(charge({ readings: [{ tokens: 26, partial: true }], generatedText: 2000 })).toEqual({ tokens: 600, source: 'estimated' });
  });

  it('charges at least the prompt estimate once the upstream answered, and nothing when nothing came back', () => {
    expect(charge({ aborted: true, responseBytes: 0, deliveredShare: 0 })).toEqual({ tokens: 100, source: 'estimated' });
    expect(charge({ aborted: true, answered: false, responseBytes: 0, deliveredShare: 0 })).toEqual({ tokens: 0, source: 'none' });
  });

  it('charges nothing for a failed response unless told to', () => {
    expect(charge({ status: 500, readings: [{ tokens: 5 }] })).toEqual({ tokens: 0, source: 'none' });
    expect(charge({ status: 500, chargeFailedResponses: true, readings: [{ tokens: 5 }] })).toEqual({ tokens: 5, source: 'reported' });
  });
});

describe('chargeFor, weighted', () => {
  const weights = resolveWeights({ output: 5, cache_read: 0.1 }, undefined);
  const split = (input: number, output: number, cacheRead = 0) => ({ tokens: input + output + cacheRead, parts: { input, output, cache_creation: 0, cache_read: cacheRead } });

  it('weighs each kind of a reported count, rounding the sum up once', () => {
    expect(charge({ weights, readings: [split(1_000, 100, 50_000)] })).toEqual({ tokens: 1_000 + 500 + 5_000, source: 'reported' });
    // Two cache reads of 0.5 each: one token, not two rounded separately.
    const halves = resolveWeights({ cache_read: 0.5 }, undefined);
    expect(charge({ weights: halves, readings: [split(0, 0, 2)] }).tokens).toBe(1);
    expect(charge({ weights: halves, readings: [split(0, 0, 3)] }).tokens).toBe(2);
  });

  it('weighs a count without a split as input, and one whose split did not add up at the heaviest weight', () => {
    expect(charge({ weights, readings: [{ tokens: 100 }] }).tokens).toBe(100);
    expect(charge({ weights, readings: [{ tokens: 100, unsplit: true }] }).tokens).toBe(500);
  });

  it('weighs the estimate of a body without usage: the prompt as input, the response as output', () => {
    // 400 request bytes are 100 input tokens; the other 1 000 of the (400 + 4 000) / 4 are output.
    expect(charge({ weights, readings: [] })).toMatchObject({ tokens: 100 + 5 * 1_000, source: 'estimated' });
  });

  it('charges a stream cut short the larger of its weighted report and its weighted estimate', () => {
    const cut = { weights, aborted: true, generatedText: 4_000, deliveredShare: 1 };
    // Reported so far: 13 000 input and 1 output (Anthropic's message_start), 13 005 weighted;
    // the estimate, 100 input + 1 000 output received, is 5 100: the report wins.
    expect(charge({ ...cut, readings: [{ ...split(13_000, 1), partial: true }] })).toEqual({ tokens: 13_005, source: 'reported' });
    // With 100 input reported, the output received weighs more.
    expect(charge({ ...cut, readings: [{ ...split(100, 1), partial: true }] })).toEqual({ tokens: 100 + 5 * 1_000, source: 'estimated' });
  });
});

describe('reservationFor', () => {
  it('scales the estimate by the heaviest weight above 1, exactly, and never down', () => {
    expect(reservationFor(100, resolveWeights({ input: 1.1 }, undefined))).toBe(110);
    expect(reservationFor(101, resolveWeights({ cache_creation: 1.25 }, undefined))).toBe(127);
    expect(reservationFor(100, resolveWeights({ input: 0.5, output: 0.5, cache_creation: 0.5, cache_read: 0.1 }, undefined))).toBe(100);
    expect(reservationFor(100, UNIT_WEIGHTS)).toBe(100);
  });
});
