// Validation of key records on create and update, shared by every way in (library, CLI, admin API).
import { ValidationError } from '../errors.js';
import { keyProblem } from './secret.js';

export const MAX_NAME_LENGTH = 200;
export const MAX_MODEL_LENGTH = 200;

export interface NewKey {
  name: string;
  /** Tokens allowed per rolling window. */
  tokenLimit: number;
  /** Expiry, milliseconds since the epoch. */
  expiresAt: number;
  model?: string | null;
  /** A chosen plaintext key (for example an imported one); a random one is generated when absent. */
  key?: string;
}

export interface KeyPatch {
  name?: string;
  tokenLimit?: number;
  expiresAt?: number;
  /** `null` clears the model. */
  model?: string | null;
}

export function validateNewKey(input: NewKey): NewKey {
  checkName(input.name);
  checkLimit(input.tokenLimit);
  checkExpiry(input.expiresAt);
  if (input.model != null) checkModel(input.model);
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
  if (patch.tokenLimit !== undefined) checkLimit(patch.tokenLimit);
  if (patch.expiresAt !== undefined) checkExpiry(patch.expiresAt);
  if (patch.model != null) checkModel(patch.model);
  return patch;
}

/** Parses an ISO 8601 date-time into epoch milliseconds, naming `field` when it is not one. */
export function parseDate(value: string, field: string): number {
  const day = /^(\d{4})-(\d{2})-(\d{2})/.exec(value);
  const ms = day && isCalendarDay(Number(day[1]), Number(day[2]), Number(day[3])) ? Date.parse(value) : Number.NaN;
  if (!Number.isFinite(ms)) throw new ValidationError(field, `"${value}" is not an ISO 8601 date`);
  return ms;
}

/** Date.parse rolls 2027-02-30 over into March; a date that does not exist is refused instead. */
function isCalendarDay(year: number, month: number, day: number): boolean {
  return month >= 1 && month <= 12 && day >= 1 && day <= new Date(Date.UTC(year, month, 0)).getUTCDate();
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

function checkModel(model: unknown): void {
  if (typeof model !== 'string' || model.length > MAX_MODEL_LENGTH) {
    throw new ValidationError('model', `must be a string of at most ${MAX_MODEL_LENGTH} characters`);
  }
}
