// Several limits per key: their text and JSON forms, which apply to a request, the decision across them, their headers.
import { ValidationError } from '../errors.js';
import { decide, msUntilAdmissible } from './admission.js';

import type { Admission, AdmitRequest, Limit, LimitWindow, Meter, Reservation, UsageRecord } from '../types.js';
import { bucketStart, type Bucket } from './window.js';

export type { Limit };

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const WINDOW_UNITS = { d: DAY, h: HOUR, m: MINUTE } as const;
/** Seconds too, for the window of a legacy limit, which a gate may set to any length. */
const SHOWN_UNITS = { ...WINDOW_UNITS, s: 1000 };
const MIN_WINDOW = MINUTE;
const MAX_WINDOW = 31 * DAY;
/** The longest window a limit may have: buckets older than it count nowhere. */
export const MAX_WINDOW_MS = MAX_WINDOW;
const MAX_LIMITS = 8;
const MAX_PATTERNS = 16;
const NAME = /^[a-z0-9_.-]{1,32}$/;
/** Visible ASCII but the comma, which separates patterns in the text form. */
const PATTERN = /^[\x21-\x2b\x2d-\x7e]{1,200}$/;
/** `[name:]window=tokens[@pattern,...]`; each part is checked on its own so that the error can name it. */
const SPEC = /^(?:([^:=@]*):)?([^=@]*)=([^@]*)(?:@(.*))?$/s;
const LIMIT_FIELDS = ['name', 'window', 'tokens', 'models'];

/** Parses `5h=200000`, `weekly:7d=1500` or `glm:5h=500@glm-4.7*,glm-5*` (CLI, environment); `field` names the setting in the error. */
export function parseLimitSpec(spec: string, field: string): Limit {
  const match = SPEC.exec(spec.trim());
  if (!match) throw new ValidationError(field, `"${spec}" is not window=tokens, name:window=tokens or name:window=tokens@model,... (5h=200000, weekly:7d=1500, glm:5h=500@glm-4.7*)`);
  const [, name, window, tokens, models] = match.map((part) => part?.trim());
  const count = /^\d+$/.test(tokens!) ? Number(tokens) : Number.NaN;
  if (!isTokenCount(count)) throw new ValidationError(field, `tokens "${tokens}" is not a positive integer`);
  return makeLimit(field, name, window!, count, models?.split(',').map((pattern) => pattern.trim()));
}

/** Checks the admin API's `limits`: an array of `{ name?, window, tokens, models? }`, by the same rules as parseLimitSpec. */
export function checkLimits(value: unknown, field: string): Limit[] {
  if (!Array.isArray(value)) throw new ValidationError(field, `must be an array of limits such as [{"window": "5h", "tokens": 200000}, {"name": "weekly", "window": "7d", "tokens": 2000000}]`);
  return checkLimitSet(value.map((item, index) => checkLimitObject(item, `${field}[${index}]`)), field);
}

/** Checks the limits of one key as a whole: 1 to 8 of them, each name once (repeated `--limit` options, as the admin API). */
export function checkLimitSet(limits: Limit[], field: string): Limit[] {
  if (limits.length < 1 || limits.length > MAX_LIMITS) throw new ValidationError(field, `a key has 1 to ${MAX_LIMITS} limits, not ${limits.length}`);
  // Scoped limits alone would leave every other model unlimited: a key's budget must cover all of them.
  if (!limits.some((limit) => limit.models === undefined)) throw new ValidationError(field, 'a key needs at least one limit that applies to every model (one without models)');
  const five = limits.find((limit) => limit.name === LEGACY);
  if (five && five.windowMs !== 5 * HOUR) throw new ValidationError(field, 'the limit named 5h is token_limit_per_5h: its window is 5h');
  const seen = new Set<string>();
  for (const { name } of limits) {
    if (seen.has(name)) throw new ValidationError(field, `the limit name "${name}" is given twice`);
    seen.add(name);
  }
  return limits;
}

function checkLimitObject(item: unknown, field: string): Limit {
  if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new ValidationError(field, 'must be an object such as {"window": "7d", "tokens": 2000000}');
  // A misspelt field (`model` for `models`) would otherwise turn a scoped limit into one that applies to everything.
  const unknown = Object.keys(item).find((key) => !LIMIT_FIELDS.includes(key));
  if (unknown !== undefined) throw new ValidationError(field, `${unknown} is not a limit field (${LIMIT_FIELDS.join(', ')})`);
  const { name, window, tokens, models } = item as Record<string, unknown>;
  if (name !== undefined && typeof name !== 'string') throw new ValidationError(field, 'name must be text such as "weekly"');
  if (typeof window !== 'string') throw new ValidationError(field, 'window must be text such as "7d"');
  if (!isTokenCount(tokens)) throw new ValidationError(field, 'tokens must be a positive integer');
  if (models !== undefined && !(Array.isArray(models) && models.every((pattern) => typeof pattern === 'string'))) {
    throw new ValidationError(field, 'models must be an array of glob patterns such as ["glm-4.7*"]');
  }
  return makeLimit(field, name, window, tokens, models);
}

function isTokenCount(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) > 0;
}

function makeLimit(field: string, name: string | undefined, window: string, tokens: number, models: string[] | undefined): Limit {
  const windowMs = parseWindow(window, field);
  const limitName = name ?? windowText(windowMs);
  if (!NAME.test(limitName)) throw new ValidationError(field, `name "${limitName}" is not 1 to 32 of a-z, 0-9, _, . and -`);
  const limit: Limit = { name: limitName, tokens, windowMs };
  if (models !== undefined) limit.models = checkPatterns(models, field);
  return limit;
}

function parseWindow(text: string, field: string): number {
  const match = /^(\d+)([mhd])$/.exec(text);
  if (!match) throw new ValidationError(field, `window "${text}" is not a number of minutes, hours or days such as 90m, 5h or 7d`);
  const ms = Number(match[1]) * WINDOW_UNITS[match[2] as keyof typeof WINDOW_UNITS];
  if (!(ms >= MIN_WINDOW && ms <= MAX_WINDOW)) throw new ValidationError(field, `window "${text}" is not from 1m to 31d`);
  return ms;
}

function checkPatterns(patterns: string[], field: string): string[] {
  if (patterns.length < 1 || patterns.length > MAX_PATTERNS) throw new ValidationError(field, `a limit has 1 to ${MAX_PATTERNS} model patterns, not ${patterns.length}`);
  const bad = patterns.find((pattern) => !PATTERN.test(pattern));
  if (bad !== undefined) throw new ValidationError(field, `model pattern "${bad}" is not 1 to 200 visible ASCII characters other than a comma`);
  return patterns;
}

/** A window in its largest whole unit: `7d`, `5h`, `90m`. */
function windowText(windowMs: number): string {
  for (const [unit, size] of Object.entries(SHOWN_UNITS)) if (windowMs % size === 0) return `${windowMs / size}${unit}`;
  return `${windowMs}ms`;
}

/** The canonical text form of a limit, which parseLimitSpec reads back to the same limit; the name is left out when it is the window's. */
export function formatLimit(limit: Limit): string {
  const window = windowText(limit.windowMs);
  const name = limit.name === window ? '' : `${limit.name}:`;
  const models = limit.models ? `@${limit.models.join(',')}` : '';
  return `${name}${window}=${limit.tokens}${models}`;
}

/** A limit as JSON output (admin API, `/stats`) shows it. */
export interface LimitView {
  name: string;
  tokens: number;
  window: string;
  window_seconds: number;
  models?: string[];
}

/** A limit for JSON output: its window as text and in seconds, its models only when it is scoped. */
export function limitView(limit: Limit): LimitView {
  const view: LimitView = { name: limit.name, tokens: limit.tokens, window: windowText(limit.windowMs), window_seconds: Math.round(limit.windowMs / 1000) };
  if (limit.models) view.models = [...limit.models];
  return view;
}

/**
 * `token_limit_per_5h` as a limit. Its name stays `5h` whatever window the gate is configured with:
 * it is the name the contract gives that setting, not a description of the window.
 */
export function legacyLimit(tokenLimit: number, windowMs: number): Limit {
  return { name: '5h', tokens: tokenLimit, windowMs };
}

/**
 * Bucket widths that divide minutes, hours and days evenly. 200 ms and 500 ms are there for windows
 * under 5 minutes, which 1 s buckets would cut into fewer than 300.
 */
const BUCKET_WIDTHS = [200, 500, 1000, 2000, 5000, 10_000, 15_000, 20_000, 30_000, MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 20 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR];
const MIN_BUCKETS = 300;

/** The bucket width of a window: the widest that still cuts it into at least 300 buckets (60 s for 5 hours), so a decision costs the same for any window. */
export function bucketMs(windowMs: number): number {
  return BUCKET_WIDTHS.findLast((width) => width * MIN_BUCKETS <= windowMs) ?? BUCKET_WIDTHS[0]!;
}

/** The start of the bucket that usage recorded at `at` goes into, in a window of `windowMs`. */
export function bucketStartFor(at: number, windowMs: number): number {
  const width = bucketMs(windowMs);
  return Math.floor(at / width) * width;
}

/** Most distinct pattern lists kept compiled at once; past it, the cache starts over. */
const GLOB_CACHE_SIZE = 1024;
const globCache = new Map<string, RegExp[]>();

/**
 * Whether `model` matches one of the glob patterns (`*` any run, `?` one character, the rest
 * literal); no model matches none. Case and surrounding spaces do not count: upstreams commonly
 * take `GLM-4.7` for `glm-4.7`, and a client must not step around a scoped limit by writing it so.
 */
export function modelMatches(patterns: readonly string[], model: string | undefined): boolean {
  if (model === undefined) return false;
  // Patterns hold no comma, so the joined list is a key that no other list shares.
  const key = patterns.join(',');
  let globs = globCache.get(key);
  if (!globs) {
    if (globCache.size >= GLOB_CACHE_SIZE) globCache.clear();
    globs = patterns.map(compileGlob);
    globCache.set(key, globs);
  }
  const name = model.trim();
  return globs.some((glob) => glob.test(name));
}

/**
 * A glob as a regular expression that runs in linear time whatever the pattern: each `*` but the
 * last takes the nearest match of what follows it inside a lookahead, which is never retried
 * (lookaheads are atomic), so `*a*a*a*b` cannot backtrack through a long model name.
 */
function compileGlob(pattern: string): RegExp {
  const [first, ...rest] = pattern.split('*').map(globLiteral);
  const last = rest.pop();
  if (last === undefined) return new RegExp(`^${first}$`, 'siu');
  const middle = rest.map((part, index) => `(?=(.*?${part}))\\${index + 1}`).join('');
  return new RegExp(`^${first}${middle}.*${last}$`, 'siu');
}

/** A star-free piece of a glob: `?` is one character, everything else stands for itself. */
function globLiteral(piece: string): string {
  return piece
    .split('?')
    .map((text) => text.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&'))
    .join('.');
}

/** The limits that apply to a request for `model`: the unscoped ones, and the scoped ones whose patterns match it. */
export function applicableLimits(limits: readonly Limit[], model: string | undefined): Limit[] {
  return limits.filter((limit) => limit.models === undefined || modelMatches(limit.models, model));
}

/** The limit of keys without limits of their own: token_limit_per_5h, its usage in minute buckets. */
export const LEGACY = '5h';

/** Where what a request holds against one limit is booked: by key and limit. */
export const meterOf = (keyId: string, limit: string): string => (limit === LEGACY ? keyId : `${keyId}\u0000${limit}`);

/** The booking id of a request's part against one limit. */
export const meterId = (requestId: string, limit: string): string => `${requestId}\u0000${limit}`;

/** The buckets a record counts in: its own list, or (a record of a key without limits) the `5h` minute bucket of its time. */
export function bucketsOf(record: UsageRecord): readonly (readonly [string, number])[] {
  return record.buckets ?? [[LEGACY, bucketStart(record.at)]];
}

/** The record with the buckets of the limits its request was admitted on (none when it was admitted the old way). */
export function withLimitBuckets(record: UsageRecord, reservation: Reservation): UsageRecord {
  if (!reservation.meters || record.buckets) return record;
  return { ...record, buckets: reservation.meters.map((meter) => [meter.limit, bucketStartFor(record.at, meter.windowMs)] as const) };
}

/** A limit that applies to a request, with what its window holds (as admission.ts's WindowState). */
export interface LimitState {
  limit: Limit;
  used: number;
  reserved: number;
  partialInFlight: boolean;
}

/** What a request reserves against one limit: the estimate, or what remains of the limit (partial). */
export interface LimitPart {
  name: string;
  reserve: number;
  partial: boolean;
}

/** A request admitted with a reservation against each limit that applies, or refused by one of them. */
export type LimitsDecision = { admit: true; parts: LimitPart[] } | { admit: false; refusedBy: string };

/** Admits only when every limit would admit on its own (decide()); a refusal names the first limit, in order, that refuses. */
export function decideAll(states: readonly LimitState[], estimate: number): LimitsDecision {
  const parts: LimitPart[] = [];
  for (const state of states) {
    const decision = decide({ limit: state.limit.tokens, used: state.used, reserved: state.reserved, partialInFlight: state.partialInFlight }, estimate);
    if (!decision.admit) return { admit: false, refusedBy: state.limit.name };
    parts.push({ name: state.limit.name, reserve: decision.reserve, partial: decision.partial });
  }
  return { admit: true, parts };
}

/** A refused request's Retry-After given each limit's msUntilAdmissible: it passes every limit once the last of them admits. */
export function retryAfterAll(waits: readonly number[]): number {
  return Math.max(0, ...waits);
}

/** A limit's state as a store read it, with the oldest bucket that still counts: what an admission on several limits reports. */
export interface LimitReading extends LimitState {
  oldestBucketStart: number | undefined;
}

const limitWindow = (reading: LimitReading, reserving: number): LimitWindow => ({ limit: reading.limit, used: reading.used, reserved: reading.reserved + reserving, oldestBucketStart: reading.oldestBucketStart });

/** A request every limit admitted (decideAll's parts, in the order of `readings`): its part against each, and each window counting it. */
export function admittedOn(request: AdmitRequest, readings: readonly LimitReading[], parts: readonly LimitPart[]): Extract<Admission, { admitted: true }> {
  const meters: Meter[] = parts.map((part, index) => ({ limit: part.name, windowMs: readings[index]!.limit.windowMs, tokens: part.reserve, partial: part.partial }));
  const reservation: Reservation = { id: request.requestId, keyId: request.keyId, tokens: Math.max(...meters.map((meter) => meter.tokens)), partial: meters.some((meter) => meter.partial), meters };
  const limits = readings.map((reading, index) => limitWindow(reading, meters[index]!.tokens));
  return { admitted: true, reservation, window: limits[0]!, limits };
}

/** How long until a limit admits again, from its buckets that still count, oldest first (msUntilAdmissible of one limit). */
export function limitWait(reading: LimitReading, buckets: readonly Bucket[], now: number): number {
  return msUntilAdmissible({ ...reading, limit: reading.limit.tokens }, buckets, now, reading.limit.windowMs);
}

/** A request refused by the limit `refusedBy`, given how long each limit (in the order of `readings`) takes to admit again. */
export function refusedOn(readings: readonly LimitReading[], refusedBy: string, waits: readonly number[]): Admission {
  const limits = readings.map((reading) => limitWindow(reading, 0));
  return { admitted: false, window: limits.find((window) => window.limit.name === refusedBy)!, retryAfterMs: retryAfterAll(waits), limits, refusedBy };
}

/** The RateLimit-Policy item name of a limit; the legacy `5h` limit keeps today's `tokens-5h`. */
function policyName(limit: Limit): string {
  return `tokens-${limit.name}`;
}

/** `RateLimit-Policy` listing every limit that applies: `"tokens-5h";q=1000;qu="tokens";w=18000, "tokens-7d";...`. */
export function policyHeader(limits: readonly Limit[]): string {
  return limits.map((limit) => `"${policyName(limit)}";q=${limit.tokens};qu="tokens";w=${Math.round(limit.windowMs / 1000)}`).join(', ');
}

/** Where a limit that applies stands: tokens remaining, and seconds until its oldest counting usage leaves. */
export interface LimitQuota {
  limit: Limit;
  remaining: number;
  resetSeconds: number;
}

/** `RateLimit` listing every limit that applies: `"tokens-5h";r=200;t=3600, "tokens-7d";r=700;t=86400`. */
export function rateLimitHeader(entries: readonly LimitQuota[]): string {
  return entries.map((entry) => `"${policyName(entry.limit)}";r=${entry.remaining};t=${entry.resetSeconds}`).join(', ');
}

/** The limit the single-valued x-ratelimit-*-tokens headers describe: the one with least remaining, the first on a tie. */
export function leastRemaining<T extends LimitQuota>(entries: readonly T[]): T | undefined {
  return entries.reduce<T | undefined>((least, entry) => (least === undefined || entry.remaining < least.remaining ? entry : least), undefined);
}
