// Token weights: what one token of each kind (input, output, cache write, cache read) is charged.
import { ValidationError } from '../errors.js';

export const TOKEN_KINDS = ['input', 'output', 'cache_creation', 'cache_read'] as const;
export type TokenKind = (typeof TOKEN_KINDS)[number];

/** A response's usage split by kind; the kinds add up to its whole count. */
export type TokenParts = Record<TokenKind, number>;

/** A weight per kind; a kind left out weighs 1 (or what the default weights say). */
export type TokenWeights = Partial<Record<TokenKind, number>>;

/** Weights are decimals with at most this many digits after the point, so that charges are exact. */
const DECIMALS = 6;
const SCALE = 10 ** DECIMALS;
const MAX_WEIGHT = 1000;
const WEIGHT = /^(?:\d{1,4})(?:\.\d{1,6})?$/;

/**
 * Parses `input=1,output=1,cache_creation=1.25,cache_read=0.1` (any subset, any order); `field`
 * names the setting in the error. A weight is a decimal above 0 and at most 1000, with at most six
 * decimals: a weight of 0 would serve those tokens for free.
 */
export function parseWeights(spec: string, field: string): TokenWeights {
  const weights: TokenWeights = {};
  for (const part of spec.split(',')) {
    const [kind, value, extra] = part.split('=').map((text) => text.trim());
    if (!TOKEN_KINDS.includes(kind as TokenKind) || value === undefined || extra !== undefined) {
      throw new ValidationError(field, `"${part.trim()}" is not kind=weight with a kind among ${TOKEN_KINDS.join(', ')} (input=1,cache_read=0.1)`);
    }
    if (Object.hasOwn(weights, kind!)) throw new ValidationError(field, `${kind} is given twice`);
    weights[kind as TokenKind] = weightValue(value, field, kind!);
  }
  return weights;
}

/** Checks weights given as an object (the admin API's `weights`); the same rules as parseWeights. */
export function checkWeights(value: unknown, field: string): TokenWeights {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ValidationError(field, `must be an object such as {"cache_read": 0.1}, or the same as text ("cache_read=0.1"), with kinds among ${TOKEN_KINDS.join(', ')}`);
  const weights: TokenWeights = {};
  for (const [kind, weight] of Object.entries(value)) {
    if (!TOKEN_KINDS.includes(kind as TokenKind)) throw new ValidationError(field, `${kind} is not a token kind (${TOKEN_KINDS.join(', ')})`);
    if (typeof weight !== 'number') throw new ValidationError(field, `${kind} must be a number`);
    weights[kind as TokenKind] = weightValue(String(weight), field, kind);
  }
  return weights;
}

function weightValue(text: string, field: string, kind: string): number {
  const weight = Number(text);
  if (!WEIGHT.test(text) || !(weight > 0) || weight > MAX_WEIGHT) {
    throw new ValidationError(field, `${kind}: "${text}" is not a weight: a decimal above 0 and at most ${MAX_WEIGHT}, with at most ${DECIMALS} decimals`);
  }
  return weight;
}

/** The canonical text of weights (kinds in order, weights of 1 included as given); `` for none. */
export function formatWeights(weights: TokenWeights): string {
  return TOKEN_KINDS.filter((kind) => weights[kind] !== undefined)
    .map((kind) => `${kind}=${weights[kind]}`)
    .join(',');
}

/** Weights per kind, every kind filled in: the key's own over the defaults, then 1. */
export type ResolvedWeights = Readonly<Record<TokenKind, number>>;

export const UNIT_WEIGHTS: ResolvedWeights = Object.freeze({ input: 1, output: 1, cache_creation: 1, cache_read: 1 });

export function resolveWeights(defaults: TokenWeights, own: TokenWeights | undefined): ResolvedWeights {
  const resolved = { ...UNIT_WEIGHTS, ...defaults, ...own };
  return TOKEN_KINDS.every((kind) => resolved[kind] === 1) ? UNIT_WEIGHTS : Object.freeze(resolved);
}

/** Most distinct weight texts of keys kept resolved at once; past it, the memo starts over. */
const MEMO_SIZE = 1024;

/**
 * The weights of keys under one set of defaults: each key's own text (`KeyRecord.tokenWeights`)
 * resolved once, not per request.
 */
export function weightsResolver(defaults: TokenWeights): (own: string | null) => ResolvedWeights {
  const base = resolveWeights(defaults, undefined);
  const memo = new Map<string, ResolvedWeights>();
  return (own) => {
    if (own === null) return base;
    let resolved = memo.get(own);
    if (!resolved) {
      if (memo.size >= MEMO_SIZE) memo.clear();
      resolved = resolveWeights(defaults, parseWeights(own, 'token_weights'));
      memo.set(own, resolved);
    }
    return resolved;
  };
}

/** The largest weight. */
export function heaviest(weights: ResolvedWeights): number {
  return Math.max(...TOKEN_KINDS.map((kind) => weights[kind]));
}

/** `tokens` of whichever kind weighs most: the most they can be charged, rounded up, exactly. */
export function atHeaviest(tokens: number, weights: ResolvedWeights): number {
  const most = heaviest(weights);
  return weigh(asInput(tokens), { input: most, output: most, cache_creation: most, cache_read: most });
}

/**
 * What a request reserves: its estimate, scaled by the largest weight when that is above 1, so that
 * a request within its estimate stays within its reservation whatever kinds of tokens it uses.
 */
export function reservationFor(estimate: number, weights: ResolvedWeights): number {
  return weights !== UNIT_WEIGHTS && heaviest(weights) > 1 ? atHeaviest(estimate, weights) : estimate;
}

/** Usage without a split (a total, a header, an estimate) counts as input. */
export function asInput(tokens: number): TokenParts {
  return { input: tokens, output: 0, cache_creation: 0, cache_read: 0 };
}

/**
 * The charge of `parts` under `weights`: the weighted sum, rounded up. Exact: weights are whole
 * millionths, so the sum is computed in integers (BigInt, past the safe range).
 */
export function weigh(parts: TokenParts, weights: Readonly<Record<TokenKind, number>>): number {
  if (weights === UNIT_WEIGHTS) return parts.input + parts.output + parts.cache_creation + parts.cache_read;
  let millionths = 0n;
  for (const kind of TOKEN_KINDS) millionths += BigInt(parts[kind]) * BigInt(Math.round(weights[kind] * SCALE));
  const whole = (millionths + BigInt(SCALE) - 1n) / BigInt(SCALE);
  return Math.min(Number(whole), Number.MAX_SAFE_INTEGER);
}
