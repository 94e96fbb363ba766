// Validation of key records on create and update, shared by every way in (library, CLI, admin API).
import { z } from 'zod';
import { ValidationError } from '../errors.js';
import { keyProblem } from './secret.js';
import { formatWeights, parseWeights } from '../usage/weights.js';
import { checkLimitSet, type Limit } from '../quota/limits.js';

export const MAX_NAME_LENGTH = 200;
export const MAX_MODEL_LENGTH = 200;

export interface NewKey {
  name: string;
  /** Tokens allowed per rolling window: the `5h` limit. Needed unless `limits` are given. */
  tokenLimit?: number;
  /** Several limits (a `5h` and a `7d`, model-scoped ones); absent or null: the one `5h` limit of `tokenLimit`. */
  limits?: Limit[] | null;
  /** Expiry, milliseconds since the epoch. */
  expiresAt: number;
  model?: string | null;
  /** Token weights over the gate's defaults, as `cache_read=0.1` (see parseWeights); null or absent: the defaults. */
  tokenWeights?: string | null;
  /** A chosen plaintext key (for example an imported one); a random one is generated when absent. */
  key?: string;
}

export interface KeyPatch {
  name?: string;
  /** On a key with limits of its own, this changes (or adds) its `5h` limit. */
  tokenLimit?: number;
  /** Replaces the key's limits; null: back to the one `5h` limit of token_limit_per_5h. */
  limits?: Limit[] | null;
  expiresAt?: number;
  /** `null` clears the model. */
  model?: string | null;
  /** `null` clears the key's own weights: the gate's defaults apply. */
  tokenWeights?: string | null;
}

export function validateNewKey(input: NewKey): NewKey {
  checkName(input.name);
  if (input.limits != null) checkLimitSet(input.limits, 'limits');
  if (input.tokenLimit !== undefined || input.limits == null) checkLimit(input.tokenLimit);
  checkExpiry(input.expiresAt);
  if (input.model != null) checkModel(input.model);
  if (input.tokenWeights != null) input.tokenWeights = canonicalWeights(input.tokenWeights);
  if (input.key !== undefined) {
    const problem = keyProblem(input.key);
    if (problem) throw new ValidationError('key', problem);
  }
  return input;
}

/** A usage charge must be a non-negative integer: anything else would corrupt the counters. */
export function validateCharge(tokens: number): void {
  if (!Number.isSafeInteger(tokens) || tokens < 0) throw new ValidationError('tokens', `${tokens} is not a non-negative integer`);
}

export function validatePatch(patch: KeyPatch): KeyPatch {
  if (patch.name !== undefined) checkName(patch.name);
  if (patch.limits != null) checkLimitSet(patch.limits, 'limits');
  if (patch.tokenLimit !== undefined) checkLimit(patch.tokenLimit);
  if (patch.expiresAt !== undefined) checkExpiry(patch.expiresAt);
  if (patch.model != null) checkModel(patch.model);
  if (patch.tokenWeights != null) patch.tokenWeights = canonicalWeights(patch.tokenWeights);
  return patch;
}

/**
 * ISO 8601 as this project takes it everywhere (CLI, admin API, import): a calendar date
 * (midnight UTC) or a date-time with `Z` or an offset, to the minute or finer. A date-time without a
 * zone would be read in the server's local time, and a day that does not exist would roll over.
 */
const isoDate = z.union([z.iso.date(), z.iso.datetime({ offset: true }), z.iso.datetime({ offset: true, precision: -1 })]);

/** An offset in ISO 8601's basic form (`+0200`), which zod does not take; rewritten as `+02:00`. */
const BASIC_OFFSET = /(T[\d:.]+[+-]\d{2})(\d{2})$/;

/** Epoch milliseconds of a date per `isoDate`; NaN for anything else, a number included. */
export function isoDateMs(value: unknown): number {
  if (typeof value !== 'string') return Number.NaN;
  const extended = value.replace(BASIC_OFFSET, '$1:$2');
  return isoDate.safeParse(extended).success ? Date.parse(extended) : Number.NaN;
}

/** Parses a date per `isoDate` into epoch milliseconds, naming `field` when it is not one. */
export function parseDate(value: string, field: string): number {
  const ms = isoDateMs(value);
  if (!Number.isFinite(ms)) throw new ValidationError(field, `"${value}" is not an ISO 8601 date (2027-01-01) or date-time with a time zone (2027-01-01T12:00:00Z, …+02:00)`);
  return ms;
}

/** A new key must not be born expired: `keys create` and `POST /admin/keys` refuse it (an update may revoke one this way). */
export function checkFutureExpiry(expiresAt: number, now: number, field: string): void {
  if (expiresAt <= now) throw new ValidationError(field, `${new Date(expiresAt).toISOString()} is not in the future`);
}

function checkName(name: unknown): void {
  if (typeof name !== 'string' || name.trim().length === 0) throw new ValidationError('name', 'must be a non-empty string');
  if (name.length > MAX_NAME_LENGTH) throw new ValidationError('name', `must be at most ${MAX_NAME_LENGTH} characters`);
}

function checkLimit(limit: unknown): void {
  if (typeof limit !== 'number' || !Number.isSafeInteger(limit) || limit <= 0) {
    throw new ValidationError('token_limit_per_5h', 'must be a positive integer');
  }
}

function checkExpiry(expiresAt: unknown): void {
  if (typeof expiresAt !== 'number' || !Number.isFinite(expiresAt)) throw new ValidationError('expiry_date', 'must be a valid date');
}

/** Weights as stored: checked, in their canonical order; an empty text is no weights of the key's own. */
function canonicalWeights(spec: unknown): string | null {
  if (typeof spec !== 'string') throw new ValidationError('weights', 'must be text such as cache_read=0.1');
  return spec.trim() === '' ? null : formatWeights(parseWeights(spec, 'weights'));
}

function checkModel(model: unknown): void {
  if (typeof model !== 'string' || model.length > MAX_MODEL_LENGTH) {
    throw new ValidationError('model', `must be a string of at most ${MAX_MODEL_LENGTH} characters`);
  }
}
