// Tests of token weights: parsing, resolving over defaults, and exact weighted charges.
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../src/errors.js';
import { SseUsageReader } from '../../../src/usage/sse.js';
import { tokensFromUsage } from '../../../src/usage/tokens.js';
import { asInput, checkWeights, formatWeights, heaviest, parseWeights, resolveWeights, UNIT_WEIGHTS, weigh, weightsResolver } from '../../../src/usage/weights.js';

describe('parseWeights', () => {
  it('reads any subset of the four kinds, in any order, with spaces', () => {
    expect(parseWeights('cache_read=0.1, input=1,output = 2,cache_creation=1.25', 'TOKEN_WEIGHTS')).toEqual({ input: 1, output: 2, cache_creation: 1.25, cache_read: 0.1 });
    expect(parseWeights('cache_read=0.1', 'w')).toEqual({ cache_read: 0.1 });
  });

  it('writes weights back in one canonical order', () => {
    expect(formatWeights(parseWeights('cache_read=0.10,input=1', 'w'))).toBe('input=1,cache_read=0.1');
  });

  it.each([
    ['', '"" is not kind=weight'],
    ['cached=0.1', '"cached=0.1" is not kind=weight'],
    ['input', '"input" is not kind=weight'],
    ['input=1=2', '"input=1=2" is not kind=weight'],
    ['input=0', 'is not a weight'],
    ['input=-1', 'is not a weight'],
    ['input=1e-3', 'is not a weight'],
    ['input=0.0000001', 'is not a weight'],
    ['input=1001', 'is not a weight'],
    ['input=abc', 'is not a weight'],
    ['input=1,input=2', 'input is given twice'],
  ])('refuses %j, naming the setting', (spec, message) => {
    expect(() => parseWeights(spec, 'TOKEN_WEIGHTS')).toThrow(ValidationError);
    expect(() => parseWeights(spec, 'TOKEN_WEIGHTS')).toThrow(message);
    expect(() => parseWeights(spec, 'TOKEN_WEIGHTS')).toThrow(/^TOKEN_WEIGHTS/);
  });

  it('checks weights given as an object like text', () => {
    expect(checkWeights({ cache_read: 0.1, output: 3 }, 'weights')).toEqual({ cache_read: 0.1, output: 3 });
    expect(() => checkWeights({ cache_read: '0.1' }, 'weights')).toThrow('cache_read must be a number');
    expect(() => checkWeights({ reasoning: 1 }, 'weights')).toThrow('reasoning is not a token kind');
    expect(() => checkWeights({ input: 0 }, 'weights')).toThrow('is not a weight');
    expect(() => checkWeights([1], 'weights')).toThrow('must be an object');
  });
});

describe('weigh', () => {
  const parts = { input: 1_000, output: 500, cache_creation: 2_000, cache_read: 50_000 };

  it('is the exact count with unit weights', () => {
    expect(weigh(parts, resolveWeights({}, undefined))).toBe(53_500);
    expect(resolveWeights({}, undefined)).toBe(UNIT_WEIGHTS);
  });

  it('charges the weighted sum, rounded up, without float error', () => {
    const weights = resolveWeights({ cache_read: 0.1, cache_creation: 1.25 }, undefined);
    expect(weigh(parts, weights)).toBe(1_000 + 500 + 2_500 + 5_000);
    // 50 × 1.1 is 55.00000000000001 in floating point: a float sum would round up to 56.
    expect(weigh(asInput(50), resolveWeights({ input: 1.1 }, undefined))).toBe(55);
    expect(weigh({ ...asInput(0), cache_read: 31 }, resolveWeights({ cache_read: 0.1 }, undefined))).toBe(4);
  });

  it('stays exact past the safe integer range of the products', () => {
    const huge = { ...asInput(Number.MAX_SAFE_INTEGER), cache_read: 0 };
    expect(weigh(huge, resolveWeights({ input: 0.5 }, undefined))).toBe(Math.ceil(Number.MAX_SAFE_INTEGER / 2));
  });

  it("takes a key's own weights over the defaults, kind by kind", () => {
    const resolve = weightsResolver({ cache_read: 0.1, output: 2 });
    expect(resolve(null)).toEqual({ input: 1, output: 2, cache_creation: 1, cache_read: 0.1 });
    expect(resolve('output=1')).toEqual({ input: 1, output: 1, cache_creation: 1, cache_read: 0.1 });
    expect(resolve('output=1')).toBe(resolve('output=1'));
    expect(heaviest(resolve(null))).toBe(2);
  });
});

describe('tokensFromUsage, split by kind', () => {
  it('splits Anthropic usage into its four fields', () => {
    const usage = { input_tokens: 10, output_tokens: 20, cache_creation_input_tokens: 5, cache_read_input_tokens: 50_000 };
    expect(tokensFromUsage(usage)).toEqual({ tokens: 50_035, parts: { input: 10, output: 20, cache_creation: 5, cache_read: 50_000 } });
  });

  it('takes OpenAI chat cached tokens out of the prompt', () => {
    const usage = { prompt_tokens: 1_000, completion_tokens: 30, total_tokens: 1_030, prompt_tokens_details: { cached_tokens: 800 } };
    expect(tokensFromUsage(usage)).toEqual({ tokens: 1_030, parts: { input: 200, output: 30, cache_creation: 0, cache_read: 800 } });
    const noTotal = { prompt_tokens: 100, completion_tokens: 3, prompt_tokens_details: { cached_tokens: 60 } };
    expect(tokensFromUsage(noTotal)).toEqual({ tokens: 103, parts: { input: 40, output: 3, cache_creation: 0, cache_read: 60 } });
  });

  it('takes Responses API cached tokens out of the input, the total deciding', () => {
    const usage = { input_tokens: 900, input_tokens_details: { cached_tokens: 600 }, output_tokens: 50, output_tokens_details: { reasoning_tokens: 20 }, total_tokens: 950 };
    expect(tokensFromUsage(usage)).toEqual({ tokens: 950, parts: { input: 300, output: 50, cache_creation: 0, cache_read: 600 } });
  });

  it('counts a total alone as input, and marks one whose parts do not fit or are not counts as unsplit', () => {
    expect(tokensFromUsage({ total_tokens: 42 })).toEqual({ tokens: 42, parts: asInput(42) });
    expect(tokensFromUsage({ total_tokens: 10, completion_tokens: 30 })).toEqual({ tokens: 10, unsplit: true });
    expect(tokensFromUsage({ total_tokens: 100, completion_tokens: '90' })).toEqual({ tokens: 100, unsplit: true });
  });

  it('splits the usage of OpenAI chat and Responses API streams', () => {
    const chat = new SseUsageReader();
    const usage = { prompt_tokens: 900, completion_tokens: 20, total_tokens: 920, prompt_tokens_details: { cached_tokens: 800 } };
    chat.push(Buffer.from(`data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\ndata: ${JSON.stringify({ choices: [], usage })}\n\ndata: [DONE]\n\n`));
    expect(chat.result()).toEqual({ tokens: 920, parts: { input: 100, output: 20, cache_creation: 0, cache_read: 800 } });
    const responses = new SseUsageReader();
    const completed = { type: 'response.completed', response: { usage: { input_tokens: 700, input_tokens_details: { cached_tokens: 600 }, output_tokens: 9, total_tokens: 709 } } };
    responses.push(Buffer.from(`event: response.completed\ndata: ${JSON.stringify(completed)}\n\n`));
    expect(responses.result()).toEqual({ tokens: 709, parts: { input: 100, output: 9, cache_creation: 0, cache_read: 600 } });
  });

  it('charges cached tokens that are not a count as input, never less', () => {
    const usage = { prompt_tokens: 100, completion_tokens: 3, prompt_tokens_details: { cached_tokens: -5 } };
    expect(tokensFromUsage(usage)).toEqual({ tokens: 103, parts: { input: 100, output: 3, cache_creation: 0, cache_read: 0 } });
    const more = { prompt_tokens: 100, completion_tokens: 3, prompt_tokens_details: { cached_tokens: 500 } };
    expect(tokensFromUsage(more)).toEqual({ tokens: 103, parts: { input: 0, output: 3, cache_creation: 0, cache_read: 100 } });
  });
});
