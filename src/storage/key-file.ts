// The JSON key file of the earlier file-based gateway: parsed, validated in full, turned into snapshot keys.
import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import { digestKey, generateKeyId, keyPrefix, keyProblem } from '../keys/secret.js';
import { isoDateMs, MAX_MODEL_LENGTH, MAX_NAME_LENGTH } from '../keys/validate.js';
import { bucketStart, countsAfter } from '../quota/window.js';
import type { SnapshotKey } from './snapshot.js';
import { formatWeights, parseWeights } from '../usage/weights.js';
import { bucketStartFor, checkLimits, LEGACY, type Limit } from '../quota/limits.js';
import { storedLimits } from '../keys/limits.js';

interface Entry {
  key?: unknown;
  name?: unknown;
  model?: unknown;
  token_limit_per_5h?: unknown;
  expiry_date?: unknown;
  created_at?: unknown;
  last_used?: unknown;
  total_lifetime_tokens?: unknown;
  /** Written by `tokengate export`; the earlier gateway had none. */
  token_weights?: unknown;
  /** Written by `tokengate export`: the key's limits, as the admin API takes them. */
  limits?: unknown;
  usage_windows?: unknown;
  /** Written by `tokengate export`: the usage of each of the key's limits but `5h`, by limit name. */
  limit_usage_windows?: unknown;
  rolling_window_cache?: unknown;
}

/** One dated amount of usage from the file: a usage window, or a bucket of the rolling-window cache. */
interface DatedUsage {
  at: number;
  tokens: number;
}

/** A key file, read: its keys and what became of its usage. */
export interface ParsedKeyFile {
  keys: SnapshotKey[];
  /** Usage windows (or cache buckets) still inside the window: their tokens count now. */
  usageInWindow: number;
  /** Usage windows (or cache buckets) outside the window: only the lifetime total keeps them. */
  usageOutsideWindow: number;
}

/** A key file with bad entries; `problems` names each one as `keys[i].field: what`. */
export class KeyFileError extends ConfigError {
  constructor(
    path: string,
    readonly problems: string[],
  ) {
    super(`key file ${path} has ${problems.length} problem(s), nothing was loaded: ${problems.join('; ')}`);
  }
}

/** How far ahead of this machine's clock a file's usage may be dated (the clock of the machine that wrote it). */
const CLOCK_SKEW_MS = 5 * 60_000;

/** What a date field that is not one is told: the rule is ISO 8601, as everywhere else (`isoDateMs`). */
const NOT_A_DATE = 'not an ISO 8601 date, or date-time with a time zone';

/**
 * A timestamp of the rolling-window cache: epoch milliseconds, as the gateway wrote it (`Date.now()`),
 * or an ISO 8601 date; NaN when it is neither.
 */
function cacheTime(value: unknown): number {
  if (typeof value === 'number') return Number.isSafeInteger(value) ? value : Number.NaN;
  return isoDateMs(value);
}

const count = (value: unknown): boolean => Number.isSafeInteger(value) && (value as number) >= 0;

/**
 * Reads `{"keys":[…]}` and returns its keys (hashed, with their usage still inside the window), or
 * throws one ConfigError listing every problem by entry index and field; nothing is half-read.
 */
export function readKeyFile(path: string, now: number, windowMs: number): SnapshotKey[] {
  return loadKeyFile(path, now, windowMs).keys;
}

/** Reads and parses the key file at `path`: a ConfigError when it cannot be read or is not JSON. */
export function loadKeyFile(path: string, now: number, windowMs: number): ParsedKeyFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new ConfigError(`key file ${path} cannot be read: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`key file ${path} is not valid JSON: ${(error as Error).message}`);
  }
  return parseKeyFile(parsed, path, now, windowMs);
}

/** Validates every entry of a parsed key file and converts them; throws KeyFileError naming all problems. */
export function parseKeyFile(parsed: unknown, path: string, now: number, windowMs: number): ParsedKeyFile {
  const entries = (parsed as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(entries)) throw new ConfigError(`key file ${path} has no "keys" array`);
  const problems: string[] = [];
  const seen = new Map<string, number>();
  const since = countsAfter(now, windowMs);
  const result: ParsedKeyFile = { keys: [], usageInWindow: 0, usageOutsideWindow: 0 };
  entries.forEach((raw: Entry, index) => {
    const problem = (field: string, what: string): void => void problems.push(`keys[${index}]${field ? `.${field}` : ''}: ${what}`);
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return problem('', 'not an object');
    const before = problems.length;
    checkEntry(raw, problem);
    if (typeof raw.key === 'string' && !keyProblem(raw.key)) {
      if (seen.has(raw.key)) problem('key', `duplicate of keys[${seen.get(raw.key)}]`);
      else seen.set(raw.key, index);
    }
    const latest = now + CLOCK_SKEW_MS;
    const usage = entryUsage(raw, problem, latest);
    const limitUsage = entryLimitUsage(raw, problem, latest);
    if (problems.length > before || usage === undefined || limitUsage === undefined) return;
    const key = snapshotKey(raw, now, inBuckets(usage, since, bucketStart, result));
    if (limitUsage.length > 0) {
      const buckets = ({ limit, usage: dated }: (typeof limitUsage)[number]) => inBuckets(dated, countsAfter(now, limit.windowMs), (at) => bucketStartFor(at, limit.windowMs), result);
      key.limitBuckets = Object.fromEntries(limitUsage.map((entry) => [entry.limit.name, buckets(entry)]));
    }
    result.keys.push(key);
  });
  if (problems.length > 0) throw new KeyFileError(path, problems);
  return result;
}

/** Checks the scalar fields of one entry, reporting each problem through `problem`. */
function checkEntry(raw: Entry, problem: (field: string, what: string) => void): void {
  if (raw.key === undefined || raw.key === null) problem('key', 'missing');
  else if (typeof raw.key !== 'string') problem('key', 'not a string');
  else if (keyProblem(raw.key)) problem('key', keyProblem(raw.key)!);
  if (typeof raw.name !== 'string' || raw.name.trim() === '') problem('name', 'missing');
  else if (raw.name.length > MAX_NAME_LENGTH) problem('name', `longer than ${MAX_NAME_LENGTH} characters`);
  if (raw.model != null && (typeof raw.model !== 'string' || raw.model.length > MAX_MODEL_LENGTH)) problem('model', `not a string of at most ${MAX_MODEL_LENGTH} characters`);
  if (!Number.isSafeInteger(raw.token_limit_per_5h) || (raw.token_limit_per_5h as number) <= 0) problem('token_limit_per_5h', 'not a positive integer');
  if (Number.isNaN(isoDateMs(raw.expiry_date))) problem('expiry_date', raw.expiry_date == null ? 'missing' : NOT_A_DATE);
  if (raw.created_at != null && Number.isNaN(isoDateMs(raw.created_at))) problem('created_at', NOT_A_DATE);
  if (raw.last_used != null && Number.isNaN(isoDateMs(raw.last_used))) problem('last_used', NOT_A_DATE);
  if (raw.total_lifetime_tokens != null && !count(raw.total_lifetime_tokens)) problem('total_lifetime_tokens', 'not a non-negative integer');
  if (raw.limits != null) {
    try {
      checkLimits(raw.limits, 'limits');
    } catch (error) {
      problem('limits', (error as Error).message.replace(/^limits: /, ''));
    }
  }
  if (raw.token_weights != null) {
    try {
      if (typeof raw.token_weights !== 'string') throw new Error('not text such as cache_read=0.1');
      if (raw.token_weights.trim() !== '') parseWeights(raw.token_weights, 'token_weights');
    } catch (error) {
      problem('token_weights', (error as Error).message.replace(/^token_weights: /, ''));
    }
  }
}

/**
 * The entry's dated usage. The gateway kept the same usage twice, in `usage_windows` and, once it
 * had one, in `rolling_window_cache.buckets` ({timestamp, tokens}, finer-grained): the cache wins
 * when present, so nothing is counted twice. Both are validated.
 */
function entryUsage(raw: Entry, problem: (field: string, what: string) => void, latest: number): DatedUsage[] | undefined {
  const windows = dated(raw.usage_windows ?? [], { field: 'usage_windows', at: 'window_start', tokens: 'tokens_used', time: isoDateMs, notADate: NOT_A_DATE, latest }, problem);
  if (raw.rolling_window_cache == null) return windows;
  const cache = raw.rolling_window_cache as { buckets?: unknown };
  if (typeof cache !== 'object' || Array.isArray(cache)) return void problem('rolling_window_cache', 'not an object');
  const buckets = dated(cache.buckets ?? [], { field: 'rolling_window_cache.buckets', at: 'timestamp', tokens: 'tokens', time: cacheTime, notADate: 'not epoch milliseconds or an ISO 8601 date', latest }, problem);
  return windows && buckets;
}

/** The entry's `limit_usage_windows`, each list with the limit it belongs to; undefined when any of it is bad. */
function entryLimitUsage(raw: Entry, problem: (field: string, what: string) => void, latest: number): { limit: Limit; usage: DatedUsage[] }[] | undefined {
  const given = raw.limit_usage_windows;
  if (given == null) return [];
  if (typeof given !== 'object' || Array.isArray(given)) return void problem('limit_usage_windows', 'not an object of usage windows by limit name');
  const limits = validLimits(raw.limits);
  let ok = true;
  const lists = Object.entries(given).map(([name, list]) => {
    const limit = limits?.find((candidate) => candidate.name === name && name !== LEGACY);
    const usage = dated(list, { field: `limit_usage_windows.${name}`, at: 'window_start', tokens: 'tokens_used', time: isoDateMs, notADate: NOT_A_DATE, latest }, problem);
    // Invalid limits are reported as such (checkEntry), not once more for each name here.
    if (!limit && limits !== undefined) problem(`limit_usage_windows.${name}`, name === LEGACY ? 'the 5h limit\'s usage is usage_windows' : 'not the name of one of the key\'s limits');
    ok &&= limit !== undefined && usage !== undefined;
    return { limit: limit!, usage: usage! };
  });
  return ok ? lists : undefined;
}

/** The entry's limits; undefined when they are not valid (checkEntry reports them). */
function validLimits(value: unknown): Limit[] | undefined {
  try {
    return value == null ? [] : checkLimits(value, 'limits');
  } catch {
    return undefined;
  }
}

/** Dated usage in buckets (`bucketOf` its start), what still counts after `since`; the rest counted as outside the window. */
function inBuckets(usage: readonly DatedUsage[], since: number, bucketOf: (at: number) => number, result: ParsedKeyFile): [number, number][] {
  const buckets = new Map<number, number>();
  for (const { at, tokens } of usage) {
    if (at <= since) {
      result.usageOutsideWindow++;
      continue;
    }
    result.usageInWindow++;
    const start = bucketOf(at);
    buckets.set(start, (buckets.get(start) ?? 0) + tokens);
  }
  return [...buckets].sort((a, b) => a[0] - b[0]);
}

/** Where a list of dated usage is in an entry: its field, the names of its two fields, how its dates read and what a bad one is told. */
interface DatedList {
  field: string;
  at: string;
  tokens: string;
  time: (value: unknown) => number;
  notADate: string;
  /** The latest date usage can have: later, it would count until long after the window (a typo in the year). */
  latest: number;
}

function dated(list: unknown, shape: DatedList, problem: (field: string, what: string) => void): DatedUsage[] | undefined {
  if (!Array.isArray(list)) return void problem(shape.field, 'not an array');
  let ok = true;
  const usage = list.map((item: Record<string, unknown> | null, i): DatedUsage => {
    const at = shape.time(item?.[shape.at]);
    const tokens = item?.[shape.tokens];
    if (Number.isNaN(at)) {
      problem(`${shape.field}[${i}].${shape.at}`, shape.notADate);
      ok = false;
    } else if (at > shape.latest) {
      problem(`${shape.field}[${i}].${shape.at}`, 'in the future');
      ok = false;
    }
    if (!count(tokens)) {
      problem(`${shape.field}[${i}].${shape.tokens}`, 'not a non-negative integer');
      ok = false;
    }
    return { at, tokens: tokens as number };
  });
  return ok ? usage : undefined;
}

function snapshotKey(raw: Entry, now: number, buckets: [number, number][]): SnapshotKey {
  const key = raw.key as string;
  const keyHash = digestKey(key);
  return {
    // Random, as for every key: an id is shown in lists, logs and metric labels, and one derived
    // from the digest would let a short key be found offline.
    id: generateKeyId(),
    keyHash,
    keyPrefix: keyPrefix(key),
    name: raw.name as string,
    model: typeof raw.model === 'string' && raw.model !== '' ? raw.model : null,
    tokenLimit: raw.token_limit_per_5h as number,
    expiresAt: isoDateMs(raw.expiry_date),
    createdAt: raw.created_at == null ? now : isoDateMs(raw.created_at),
    lastUsedAt: raw.last_used == null ? null : isoDateMs(raw.last_used),
    totalLifetimeTokens: (raw.total_lifetime_tokens as number | undefined) ?? 0,
    totalRequests: 0,
    tokenWeights: typeof raw.token_weights === 'string' && raw.token_weights.trim() !== '' ? formatWeights(parseWeights(raw.token_weights, 'token_weights')) : null,
    limits: raw.limits == null ? null : storedLimits(checkLimits(raw.limits, 'limits')),
    buckets,
  };
}
