// Tests of how readings, aborts and estimates combine into what a response is charged.
import { describe, expect, it } from 'vitest';
import { chargeFor, type ChargeInput } from '../../../src/usage/charge.js';
import { UNIT_WEIGHTS } from '../../../src/usage/weights.js';

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
