// Tests of several limits per key: text and JSON forms, bucket widths, model globs, the decision across limits, headers.
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../src/errors.js';
import {
  applicableLimits,
  bucketMs,
  bucketStartFor,
  checkLimits,
  checkLimitSet,
  decideAll,
  formatLimit,
  leastRemaining,
  legacyLimit,
  type Limit,
  limitView,
  modelMatches,
  parseLimitSpec,
  policyHeader,
  rateLimitHeader,
  retryAfterAll,
} from '../../../src/quota/limits.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

describe('parseLimitSpec', () => {
  it.each([
    ['5h=200000', { name: '5h', tokens: 200_000, windowMs: 5 * HOUR }],
    ['7d=2000000', { name: '7d', tokens: 2_000_000, windowMs: 7 * DAY }],
    ['90m=10', { name: '90m', tokens: 10, windowMs: 90 * MINUTE }],
    ['30d=1', { name: '30d', tokens: 1, windowMs: 30 * DAY }],
    ['1m=5', { name: '1m', tokens: 5, windowMs: MINUTE }],
    ['31d=5', { name: '31d', tokens: 5, windowMs: 31 * DAY }],
    ['weekly:7d=1500', { name: 'weekly', tokens: 1500, windowMs: 7 * DAY }],
    ['glm:5h=500@glm-4.7*,glm-5*', { name: 'glm', tokens: 500, windowMs: 5 * HOUR, models: ['glm-4.7*', 'glm-5*'] }],
    ['5h=500@gpt-?', { name: '5h', tokens: 500, windowMs: 5 * HOUR, models: ['gpt-?'] }],
    [' a.b_c-9 : 7d = 15 @ x , y ', { name: 'a.b_c-9', tokens: 15, windowMs: 7 * DAY, models: ['x', 'y'] }],
  ])('reads %j', (spec, limit) => {
    expect(parseLimitSpec(spec, '--limit')).toEqual(limit);
  });

  it('names a limit by its window written canonically', () => {
    expect(parseLimitSpec('300m=1', '--limit').name).toBe('5h');
    expect(parseLimitSpec('24h=1', '--limit').name).toBe('1d');
    expect(parseLimitSpec('05h=1', '--limit').name).toBe('5h');
    expect(parseLimitSpec('1440m=1', '--limit')).toEqual({ name: '1d', tokens: 1, windowMs: DAY });
  });

  it.each([
    ['', '"" is not window=tokens'],
    ['200000', '"200000" is not window=tokens'],
    ['5h', '"5h" is not window=tokens'],
    ['5h=1=2', 'tokens "1=2" is not a positive integer'],
    ['5h=', 'tokens "" is not a positive integer'],
    ['5h=0', 'tokens "0" is not a positive integer'],
    ['5h=-1', 'tokens "-1" is not a positive integer'],
    ['5h=1.5', 'tokens "1.5" is not a positive integer'],
    ['5h=1e3', 'tokens "1e3" is not a positive integer'],
    ['5h=9007199254740992', 'tokens "9007199254740992" is not a positive integer'],
    ['=100', 'window "" is not a number of minutes, hours or days such as 90m, 5h or 7d'],
    ['5x=100', 'window "5x" is not a number of minutes, hours or days'],
    ['30s=100', 'window "30s" is not a number of minutes, hours or days'],
    ['5H=100', 'window "5H" is not a number of minutes, hours or days'],
    ['1.5h=100', 'window "1.5h" is not a number of minutes, hours or days'],
    ['a:b:7d=100', 'window "b:7d" is not a number of minutes, hours or days'],
    ['0m=100', 'window "0m" is not from 1m to 31d'],
    ['32d=100', 'window "32d" is not from 1m to 31d'],
    ['745h=100', 'window "745h" is not from 1m to 31d'],
    ['99999999999999999999d=100', 'window "99999999999999999999d" is not from 1m to 31d'],
    [':5h=100', 'name "" is not 1 to 32 of a-z, 0-9, _, . and -'],
    ['Weekly:7d=100', 'name "Weekly" is not 1 to 32 of a-z, 0-9, _, . and -'],
    ['we ek:7d=100', 'name "we ek" is not'],
    [`${'a'.repeat(33)}:7d=100`, `name "${'a'.repeat(33)}" is not`],
    ['5h=100@', 'model pattern "" is not 1 to 200 visible ASCII characters other than a comma'],
    ['5h=100@a,,b', 'model pattern "" is not 1 to 200 visible ASCII'],
    ['5h=100@glm 4', 'model pattern "glm 4" is not 1 to 200 visible ASCII'],
    ['5h=100@glm-é', 'model pattern "glm-é" is not 1 to 200 visible ASCII'],
    [`5h=100@${'a'.repeat(201)}`, `model pattern "${'a'.repeat(201)}" is not`],
    [`5h=100@${Array.from({ length: 17 }, (_, i) => `m${i}`).join(',')}`, 'a limit has 1 to 16 model patterns, not 17'],
  ])('refuses %j, naming what is wrong', (spec, message) => {
    expect(() => parseLimitSpec(spec, '--limit')).toThrow(ValidationError);
    expect(() => parseLimitSpec(spec, '--limit')).toThrow(`--limit: ${message}`);
  });

  it('takes the longest name, pattern and pattern list allowed', () => {
    const patterns = Array.from({ length: 16 }, (_, i) => `m${i}*`);
    expect(parseLimitSpec(`${'a'.repeat(32)}:5h=1@${patterns.join(',')}`, 'f').models).toEqual(patterns);
    expect(parseLimitSpec(`5h=1@${'?'.repeat(200)}`, 'f').models).toEqual(['?'.repeat(200)]);
    // `@` and `:` may appear in a pattern: only the first `@` starts the list.
    expect(parseLimitSpec('5h=1@org/model:v1@2', 'f').models).toEqual(['org/model:v1@2']);
  });
});

describe('formatLimit', () => {
  it.each([
    ['5h=200000', '5h=200000'],
    ['300m=1', '5h=1'],
    ['24h=1', '1d=1'],
    ['90m=10', '90m=10'],
    ['5h:5h=1', '5h=1'],
    ['weekly:7d=1500', 'weekly:7d=1500'],
    ['glm:5h=500@glm-4.7*, glm-5*', 'glm:5h=500@glm-4.7*,glm-5*'],
    ['x:1m=1@org/model:v1@2', 'x:1m=1@org/model:v1@2'],
  ])('writes %j as %j, which reads back to the same limit', (spec, text) => {
    const limit = parseLimitSpec(spec, 'f');
    expect(formatLimit(limit)).toBe(text);
    expect(parseLimitSpec(formatLimit(limit), 'f')).toEqual(limit);
  });
});

describe('checkLimits', () => {
  it('reads the JSON form, names defaulting to the window', () => {
    expect(
      checkLimits(
        [
          { window: '300m', tokens: 1000 },
          { name: 'weekly', window: '7d', tokens: 1500 },
          { name: 'glm', window: '5h', tokens: 500, models: ['glm-4.7*'] },
        ],
        'limits',
      ),
    ).toEqual([
      { name: '5h', tokens: 1000, windowMs: 5 * HOUR },
      { name: 'weekly', tokens: 1500, windowMs: 7 * DAY },
      { name: 'glm', tokens: 500, windowMs: 5 * HOUR, models: ['glm-4.7*'] },
    ]);
  });

  it.each([
    [{ window: '5h', tokens: 1 }, 'limits: must be an array of limits'],
    [[], 'limits: a key has 1 to 8 limits, not 0'],
    [Array.from({ length: 9 }, (_, i) => ({ name: `l${i}`, window: '5h', tokens: 1 })), 'limits: a key has 1 to 8 limits, not 9'],
    [[{ window: '5h', tokens: 1 }, { window: '300m', tokens: 2 }], 'limits: the limit name "5h" is given twice'],
    [[{ window: '5h', tokens: 1 }, { name: 'w', window: '7d', tokens: 1 }, { name: 'w', window: '1d', tokens: 1 }], 'limits: the limit name "w" is given twice'],
    [['5h=1'], 'limits[0]: must be an object'],
    [[{ window: '5h', tokens: 1 }, null], 'limits[1]: must be an object'],
    [[{ window: '5h', tokens: 1, model: ['glm*'] }], 'limits[0]: model is not a limit field (name, window, tokens, models)'],
    [[{ tokens: 1 }], 'limits[0]: window must be text such as "7d"'],
    [[{ window: 18000, tokens: 1 }], 'limits[0]: window must be text'],
    [[{ window: '5x', tokens: 1 }], 'limits[0]: window "5x" is not a number of minutes, hours or days'],
    [[{ window: '32d', tokens: 1 }], 'limits[0]: window "32d" is not from 1m to 31d'],
    [[{ window: '5h' }], 'limits[0]: tokens must be a positive integer'],
    [[{ window: '5h', tokens: '100' }], 'limits[0]: tokens must be a positive integer'],
    [[{ window: '5h', tokens: 0 }], 'limits[0]: tokens must be a positive integer'],
    [[{ window: '5h', tokens: 1.5 }], 'limits[0]: tokens must be a positive integer'],
    [[{ window: '5h', tokens: 2 ** 53 }], 'limits[0]: tokens must be a positive integer'],
    [[{ name: 7, window: '5h', tokens: 1 }], 'limits[0]: name must be text'],
    [[{ name: 'Big', window: '5h', tokens: 1 }], 'limits[0]: name "Big" is not 1 to 32 of a-z'],
    [[{ window: '5h', tokens: 1, models: 'glm*' }], 'limits[0]: models must be an array of glob patterns'],
    [[{ window: '5h', tokens: 1, models: [1] }], 'limits[0]: models must be an array of glob patterns'],
    [[{ window: '5h', tokens: 1, models: [] }], 'limits[0]: a limit has 1 to 16 model patterns, not 0'],
    [[{ window: '5h', tokens: 1, models: ['a,b'] }], 'limits[0]: model pattern "a,b" is not 1 to 200 visible ASCII characters other than a comma'],
  ])('refuses %j', (value, message) => {
    expect(() => checkLimits(value, 'limits')).toThrow(ValidationError);
    expect(() => checkLimits(value, 'limits')).toThrow(message);
  });

  it('checks repeated --limit options as one key', () => {
    const limits = ['5h=200000', '7d=2000000'].map((spec) => parseLimitSpec(spec, '--limit'));
    expect(checkLimitSet(limits, '--limit')).toBe(limits);
    expect(() => checkLimitSet([...limits, parseLimitSpec('300m=1', '--limit')], '--limit')).toThrow('--limit: the limit name "5h" is given twice');
  });

  it('refuses a key whose limits are all scoped: every other model would be unlimited', () => {
    expect(() => checkLimitSet([parseLimitSpec('glm:5h=500@glm-4.7*', '--limit')], '--limit')).toThrow('--limit: a key needs at least one limit that applies to every model');
  });
});

describe('limitView and legacyLimit', () => {
  it('shows a limit as JSON, models only when scoped', () => {
    expect(limitView(parseLimitSpec('weekly:7d=1500', 'f'))).toEqual({ name: 'weekly', tokens: 1500, window: '7d', window_seconds: 604_800 });
    expect(limitView(parseLimitSpec('glm:90m=5@glm-4.7*', 'f'))).toEqual({ name: 'glm', tokens: 5, window: '90m', window_seconds: 5400, models: ['glm-4.7*'] });
  });

  it('makes token_limit_per_5h the limit named 5h, whatever the window', () => {
    expect(legacyLimit(1000, 5 * HOUR)).toEqual({ name: '5h', tokens: 1000, windowMs: 5 * HOUR });
    expect(legacyLimit(1000, HOUR)).toEqual({ name: '5h', tokens: 1000, windowMs: HOUR });
    expect(formatLimit(legacyLimit(1000, HOUR))).toBe('5h:1h=1000');
    expect(limitView(legacyLimit(1000, 90_000))).toEqual({ name: '5h', tokens: 1000, window: '90s', window_seconds: 90 });
  });
});

describe('bucketMs', () => {
  it('keeps 60 s buckets for the 5-hour window', () => {
    expect(bucketMs(5 * HOUR)).toBe(60_000);
    expect(bucketStartFor(5 * HOUR + 59_999, 5 * HOUR)).toBe(5 * HOUR);
    expect(bucketStartFor(5 * HOUR + 60_000, 5 * HOUR)).toBe(5 * HOUR + 60_000);
  });

  it.each([
    [MINUTE, 200],
    [3 * MINUTE, 500],
    [5 * MINUTE, 1000],
    [HOUR, 10_000],
    [DAY, 120_000],
    [7 * DAY, 30 * MINUTE],
    [30 * DAY, 2 * HOUR],
    [31 * DAY, 2 * HOUR],
  ])('cuts a window of %i ms into buckets of %i ms', (windowMs, width) => {
    expect(bucketMs(windowMs)).toBe(width);
  });

  it('stays within 1/300 of every window from 1 minute to 31 days, and not far under it', () => {
    for (let minutes = 1; minutes <= 31 * 24 * 60; minutes++) {
      const windowMs = minutes * MINUTE;
      const width = bucketMs(windowMs);
      expect(width * 300).toBeLessThanOrEqual(windowMs);
      // The widths step up by at most 2.5×, so no window has more than 750 buckets.
      expect(windowMs / width).toBeLessThanOrEqual(750);
    }
  });

  it('gives a 7-day window about 300 buckets', () => {
    expect((7 * DAY) / bucketMs(7 * DAY)).toBe(336);
    expect(bucketStartFor(7 * DAY + 1_799_999, 7 * DAY)).toBe(7 * DAY);
  });
});

describe('modelMatches and applicableLimits', () => {
  it('matches globs over the whole model name', () => {
    expect(modelMatches(['glm-4.7*'], 'glm-4.7-flash')).toBe(true);
    expect(modelMatches(['glm-4.7*'], 'glm-4.7')).toBe(true);
    expect(modelMatches(['glm-4.7*'], 'glm-4.6')).toBe(false);
    expect(modelMatches(['glm-4.7*'], 'xglm-4.7')).toBe(false);
    expect(modelMatches(['*-flash'], 'glm-4.7-flash')).toBe(true);
    expect(modelMatches(['*-flash'], 'glm-4.7-flash-2')).toBe(false);
    expect(modelMatches(['gpt-?o'], 'gpt-4o')).toBe(true);
    expect(modelMatches(['gpt-?o'], 'gpt-4-o')).toBe(false);
    expect(modelMatches(['gpt-?o'], 'gpt-o')).toBe(false);
    expect(modelMatches(['a*b*c'], 'abc')).toBe(true);
    expect(modelMatches(['a*b*c'], 'a-c-b')).toBe(false);
    expect(modelMatches(['a*a'], 'a')).toBe(false);
    expect(modelMatches(['*'], '')).toBe(true);
  });

  it('takes every other character literally, whatever its case, and the model without surrounding spaces', () => {
    expect(modelMatches(['gpt-4.1'], 'gpt-4x1')).toBe(false);
    expect(modelMatches(['gpt-4.1'], 'gpt-4.1')).toBe(true);
    expect(modelMatches(['a+b'], 'aab')).toBe(false);
    expect(modelMatches(['(a|b)'], 'a')).toBe(false);
    expect(modelMatches(['(a|b)'], '(a|b)')).toBe(true);
    expect(modelMatches(['[ab]$^\\{1}'], '[ab]$^\\{1}')).toBe(true);
    expect(modelMatches(['*1*2'], 'x1y2')).toBe(true);
    expect(modelMatches(['GLM-*'], 'glm-4.7')).toBe(true);
    expect(modelMatches(['glm-4.7*'], ' GLM-4.7-Flash ')).toBe(true);
    expect(modelMatches(['glm-4.7*'], 'glm-4-7')).toBe(false);
  });

  it('matches any of the patterns, and a request without a model none', () => {
    expect(modelMatches(['glm-4.7*', 'glm-5*'], 'glm-5')).toBe(true);
    expect(modelMatches(['glm-4.7*', 'glm-5*'], 'gpt-5')).toBe(false);
    expect(modelMatches(['*'], undefined)).toBe(false);
  });

  it('does not backtrack through a long model name', () => {
    const started = performance.now();
    expect(modelMatches([`${'*a'.repeat(50)}*b`], 'a'.repeat(20_000))).toBe(false);
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it('keeps the unscoped limits and the scoped ones that match, in order', () => {
    const limits: Limit[] = [
      { name: '5h', tokens: 1, windowMs: 5 * HOUR },
      { name: 'glm', tokens: 1, windowMs: 5 * HOUR, models: ['glm-*'] },
      { name: '7d', tokens: 1, windowMs: 7 * DAY },
    ];
    expect(applicableLimits(limits, 'glm-4.7').map((limit) => limit.name)).toEqual(['5h', 'glm', '7d']);
    expect(applicableLimits(limits, 'gpt-5').map((limit) => limit.name)).toEqual(['5h', '7d']);
    expect(applicableLimits(limits, undefined).map((limit) => limit.name)).toEqual(['5h', '7d']);
  });
});

describe('decideAll', () => {
  const fiveHours: Limit = { name: '5h', tokens: 1000, windowMs: 5 * HOUR };
  const week: Limit = { name: '7d', tokens: 1500, windowMs: 7 * DAY };
  const state = (limit: Limit, used: number, reserved = 0, partialInFlight = false) => ({ limit, used, reserved, partialInFlight });

  it('reserves the estimate against every limit while it fits all of them', () => {
    expect(decideAll([state(fiveHours, 100), state(week, 500, 200)], 300)).toEqual({
      admit: true,
      parts: [
        { name: '5h', reserve: 300, partial: false },
        { name: '7d', reserve: 300, partial: false },
      ],
    });
  });

  it('is refused by the limit that is full, even when another has room', () => {
    expect(decideAll([state(fiveHours, 100), state(week, 1500)], 10)).toEqual({ admit: false, refusedBy: '7d' });
    expect(decideAll([state(fiveHours, 800, 200), state(week, 0)], 10)).toEqual({ admit: false, refusedBy: '5h' });
  });

  it('names the first refusing limit in the given order', () => {
    expect(decideAll([state(week, 1500), state(fiveHours, 1000)], 10)).toEqual({ admit: false, refusedBy: '7d' });
  });

  it('reserves what remains, flagged partial, on the limit the estimate does not fit', () => {
    expect(decideAll([state(fiveHours, 100), state(week, 1200, 100)], 400)).toEqual({
      admit: true,
      parts: [
        { name: '5h', reserve: 400, partial: false },
        { name: '7d', reserve: 200, partial: true },
      ],
    });
  });

  it('does not admit a partial on one limit while another is full', () => {
    expect(decideAll([state(fiveHours, 900), state(week, 1500)], 400)).toEqual({ admit: false, refusedBy: '7d' });
  });

  it('refuses while a partial reservation is in flight on one of the limits', () => {
    expect(decideAll([state(fiveHours, 0), state(week, 100, 50, true)], 1)).toEqual({ admit: false, refusedBy: '7d' });
  });

  it('says to retry once the last refusing limit admits', () => {
    expect(retryAfterAll([3 * HOUR, 0, DAY])).toBe(DAY);
    expect(retryAfterAll([0])).toBe(0);
  });
});

describe('headers', () => {
  const legacy = legacyLimit(1000, 5 * HOUR);
  const week: Limit = { name: '7d', tokens: 1500, windowMs: 7 * DAY };

  it('lists every limit in RateLimit-Policy, keeping "tokens-5h" for the legacy limit', () => {
    expect(policyHeader([legacy, week])).toBe('"tokens-5h";q=1000;qu="tokens";w=18000, "tokens-7d";q=1500;qu="tokens";w=604800');
    expect(policyHeader([legacy])).toBe('"tokens-5h";q=1000;qu="tokens";w=18000');
  });

  it('lists every limit in RateLimit', () => {
    const entries = [
      { limit: legacy, remaining: 200, resetSeconds: 3600 },
      { limit: week, remaining: 700, resetSeconds: 86_400 },
    ];
    expect(rateLimitHeader(entries)).toBe('"tokens-5h";r=200;t=3600, "tokens-7d";r=700;t=86400');
  });

  it('describes the limit with least remaining in x-ratelimit-*, the first on a tie', () => {
    const first = { limit: legacy, remaining: 200, resetSeconds: 3600 };
    const second = { limit: week, remaining: 100, resetSeconds: 60 };
    const tied = { limit: { ...week, name: 'other' }, remaining: 100, resetSeconds: 5 };
    expect(leastRemaining([first, second, tied])).toBe(second);
    expect(leastRemaining([first])).toBe(first);
    expect(leastRemaining([])).toBeUndefined();
  });
});

describe('a key\'s limits as stored', () => {
  it('stores one unscoped 5h limit the old way, and several as canonical JSON', async () => {
    const { columnsFor } = await import('../../../src/keys/limits.js');
    expect(columnsFor([parseLimitSpec('5h=1000', 'f')], undefined)).toEqual({ limits: null, tokenLimit: 1000 });
    expect(columnsFor([parseLimitSpec('5h=1000', 'f'), parseLimitSpec('weekly:7d=1500', 'f')], undefined)).toEqual({ limits: '[{"name":"5h","window":"5h","tokens":1000},{"name":"weekly","window":"7d","tokens":1500}]', tokenLimit: 1000 });
    expect(() => columnsFor([parseLimitSpec('5h=1000', 'f'), parseLimitSpec('7d=1500', 'f')], 999)).toThrow('token_limit_per_5h: disagrees with the limits given with it');
  });
});
