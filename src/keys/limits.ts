// A key's limits as stored (canonical JSON in `limits`, or none: the one `5h` limit of token_limit_per_5h) and as changed.
import { ValidationError } from '../errors.js';
import { checkLimits, checkLimitSet, legacyLimit, limitView, type Limit, type LimitView } from '../quota/limits.js';
import { DEFAULT_WINDOW_MS } from '../quota/window.js';
import type { KeyRecord } from '../types.js';

/** The name of the limit `token_limit_per_5h` stands for. */
export const FIVE_HOURS = '5h';

/** Limits as the `limits` column holds them: the canonical JSON of their views. */
export function storedLimits(limits: readonly Limit[]): string {
  return JSON.stringify(limits.map(({ name, tokens, windowMs, models }) => {
    const { window } = limitView({ name, tokens, windowMs });
    return models ? { name, window, tokens, models } : { name, window, tokens };
  }));
}

/** Parses the `limits` column (it was checked when written; a restore checks it again). */
export function parseStoredLimits(text: string): Limit[] {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ValidationError('limits', 'is not JSON');
  }
  return checkLimits(value, 'limits');
}

const MEMO_SIZE = 1024;
const memo = new Map<string, readonly Limit[]>();

/** A key's limits: its own, or the one `5h` limit of token_limit_per_5h over `windowMs` (the gate's window). Parsed once per text. */
export function limitsOf(key: Pick<KeyRecord, 'limits' | 'tokenLimit'>, windowMs: number): readonly Limit[] {
  if (key.limits == null) return [legacyLimit(key.tokenLimit, windowMs)];
  let limits = memo.get(key.limits);
  if (!limits) {
    if (memo.size >= MEMO_SIZE) memo.clear();
    limits = Object.freeze(parseStoredLimits(key.limits));
    memo.set(key.limits, limits);
  }
  return limits;
}

/** What token_limit_per_5h shows for a key with limits of its own: its `5h` limit, or null when it has none. */
export function fiveHourTokens(key: Pick<KeyRecord, 'limits' | 'tokenLimit'>): number | null {
  if (key.limits == null) return key.tokenLimit;
  return limitsOf(key, DEFAULT_WINDOW_MS).find((limit) => limit.name === FIVE_HOURS)?.tokens ?? null;
}

/** The limits a key record shows (admin API, CLI, /stats). */
export function limitViews(key: Pick<KeyRecord, 'limits' | 'tokenLimit'>, windowMs = DEFAULT_WINDOW_MS): LimitView[] {
  return limitsOf(key, windowMs).map(limitView);
}

/**
 * The column values of a key given `limits` (and maybe token_limit_per_5h): `limits` as stored, and
 * `token_limit_per_5h` its `5h` limit's tokens, or (when there is none) the first limit's, since
 * the column holds a positive number. Giving both names the 5h limit twice: they must agree.
 */
export function columnsFor(limits: readonly Limit[] | null, tokenLimit: number | undefined): { limits: string | null; tokenLimit: number } | undefined {
  if (limits === null) return tokenLimit === undefined ? undefined : { limits: null, tokenLimit };
  const five = limits.find((limit) => limit.name === FIVE_HOURS);
  if (tokenLimit !== undefined && five?.tokens !== tokenLimit) throw new ValidationError('token_limit_per_5h', `disagrees with the limits given with it (their 5h limit is ${five ? five.tokens : 'absent'})`);
  // One unscoped 5-hour limit is a key made the old way: stored so, every store takes it.
  if (limits.length === 1 && five && five.windowMs === DEFAULT_WINDOW_MS && !five.models) return { limits: null, tokenLimit: five.tokens };
  return { limits: storedLimits(limits), tokenLimit: (five ?? limits[0]!).tokens };
}

/**
 * Limits cleared (back to the one `5h` limit): from the key's own `5h` limit, or token_limit_per_5h
 * given with it; a key without either would get its first limit's tokens for 5 hours, so it is refused.
 */
export function clearedLimits(current: string | null | undefined, tokenLimit: number | undefined): { limits: null; tokenLimit?: number } {
  if (tokenLimit !== undefined) return { limits: null, tokenLimit };
  if (current == null) return { limits: null };
  const five = parseStoredLimits(current).find((limit) => limit.name === FIVE_HOURS);
  if (!five) throw new ValidationError('token_limit_per_5h', 'is needed to clear the limits of a key that has no 5h limit');
  return { limits: null, tokenLimit: five.tokens };
}

/**
 * token_limit_per_5h changed on a key that has limits of its own: its `5h` limit takes the new
 * number (one is added, over 5 hours, when it has none).
 */
export function withFiveHours(current: string, tokenLimit: number): { limits: string; tokenLimit: number } {
  const limits = parseStoredLimits(current);
  const five = limits.find((limit) => limit.name === FIVE_HOURS);
  const next = five ? limits.map((limit) => (limit === five ? { ...limit, tokens: tokenLimit } : limit)) : [{ name: FIVE_HOURS, tokens: tokenLimit, windowMs: DEFAULT_WINDOW_MS }, ...limits];
  return { limits: storedLimits(checkLimitSet(next, 'token_limit_per_5h')), tokenLimit };
}
