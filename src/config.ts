// Every environment variable tokengate reads, in one zod schema, parsed once; a bad value names its variable.
import { Cron } from 'croner';
import { z } from 'zod';
import { ConfigError } from './errors.js';
import { DEFAULT_BODY_LIMIT, DEFAULT_BODY_TIMEOUT_MS } from './http/request-body.js';

const MIN_ADMIN_TOKEN_LENGTH = 16;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Blank variables count as unset. */
const unset = (value: unknown): unknown => (typeof value === 'string' && value.trim() === '' ? undefined : value);

function integerMessage(min: number, max: number | undefined): string {
  if (max !== undefined) return `must be an integer from ${min} to ${max}`;
  return min === 0 ? 'must be a non-negative integer' : 'must be a positive integer';
}

/** ASCII digits only, making an integer from `min` to `max` (a safe integer when `max` is not given). */
function digits(min: number, max?: number) {
  const message = integerMessage(min, max);
  return z
    .string()
    .trim()
    .regex(/^\d+$/, { error: message })
    .transform(Number)
    .pipe(z.number().min(min, { error: message }).max(max ?? Number.MAX_SAFE_INTEGER, { error: message }));
}

function integer(min: number, max: number | undefined, fallback: number) {
  return z.preprocess(unset, digits(min, max).default(fallback));
}

/** An integer variable whose default lives with the code that uses it: undefined when unset. */
function optionalInteger(min: number, max?: number) {
  return z.preprocess(unset, digits(min, max).optional());
}

function text() {
  return z.preprocess(unset, z.string().optional());
}

function flag() {
  return z.preprocess(
    unset,
    z
      .string()
      .trim()
      .toLowerCase()
      .pipe(z.enum(['true', 'false'], { error: 'must be true or false' }))
      .transform((value) => value === 'true')
      .default(false),
  );
}

const DURATION_UNITS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION_MESSAGE = 'must be a duration such as 90s, 30m, 12h or 7d';

/** `90s`, `30m`, `12h`, `7d` in milliseconds; undefined for anything else. */
function durationMs(raw: string): number | undefined {
  const match = /^(\d+)([smhd])$/.exec(raw.trim());
  const ms = match ? Number(match[1]) * DURATION_UNITS[match[2]!]! : Number.NaN;
  return Number.isSafeInteger(ms) && ms > 0 ? ms : undefined;
}

/** Parses a duration such as `90s`, `30m`, `12h` or `7d` for `name`; anything else is a ConfigError naming it. */
export function parseDuration(name: string, raw: string): number {
  const ms = durationMs(raw);
  if (ms === undefined) throw new ConfigError(`${name} ${DURATION_MESSAGE}, not "${raw}"`);
  return ms;
}

/** Milliseconds as the largest whole unit: `7d`, `5h`, `90s`. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of Object.entries(DURATION_UNITS).reverse()) if (ms % size === 0) return `${ms / size}${unit}`;
  return `${ms}ms`;
}

/** Checks a cron expression (croner, UTC), throwing a ConfigError that names `variable` when it is not one. */
export function cronPattern(schedule: string, variable: string): string {
  try {
    new Cron(schedule, { paused: true, timezone: 'UTC' }).stop();
  } catch (error) {
    throw new ConfigError(`${variable} is not a cron expression: "${schedule}" (${(error as Error).message})`);
  }
  return schedule;
}

const upstreamUrl = z.preprocess(
  unset,
  z
    .string({ error: 'is required: the URL of the upstream to proxy to, such as https://api.openai.com' })
    .pipe(z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' }))
    .transform((value) => new URL(value))
    .refine((url) => url.search === '' && url.hash === '', { error: 'must not have a query string or fragment' }),
);

/** `tokengate serve`'s own variables: the proxy, the listener, the admin API, request bodies, shutdown. */
const sidecarShape = {
  UPSTREAM_URL: upstreamUrl,
  UPSTREAM_API_KEY: text(),
  UPSTREAM_AUTH_HEADER: z.preprocess(
    unset,
    z
      .string()
      .trim()
      .toLowerCase()
      .pipe(z.enum(['authorization', 'x-api-key'], { error: 'must be authorization or x-api-key' }))
      .optional(),
  ),
  PORT: integer(0, 65_535, 8080),
  HOST: z.preprocess(unset, z.string().trim().default('0.0.0.0')),
  ADMIN_TOKEN: z.preprocess(
    unset,
    z
      .string()
      .min(MIN_ADMIN_TOKEN_LENGTH, { error: `must be at least ${MIN_ADMIN_TOKEN_LENGTH} characters` })
      .regex(/^[\x21-\x7e]+$/, { error: 'must be printable ASCII without spaces' })
      .optional(),
  ),
  UPSTREAM_TIMEOUT_MS: integer(1, 2_147_483_647, 600_000),
  BODY_LIMIT: integer(0, undefined, DEFAULT_BODY_LIMIT),
  BODY_TIMEOUT_MS: integer(1, 2_147_483_647, DEFAULT_BODY_TIMEOUT_MS),
  BODY_MEMORY_LIMIT: optionalInteger(0),
  OVERRIDE_MODEL: flag(),
  INCLUDE_STREAM_USAGE: flag(),
  ALLOW_QUERY_KEY: flag(),
  SHUTDOWN_TIMEOUT_MS: integer(0, 2_147_483_647, 30_000),
  /** Token weights; parsed by the sidecar's config (src/sidecar/config.ts), where their rules live. */
  TOKEN_WEIGHTS: text(),
};

/** Where the store is: the only variables createStorage() itself reads (CONTRACT section 1). */
const locationShape = {
  DATABASE_URL: text(),
  DATABASE_PATH: text(),
  FALLBACK_DIR: text(),
};

/** The rest of the store's settings: options of createStorage() that `serve` and the CLI take from the environment. */
const storageShape = {
  ...locationShape,
  DATABASE_POOL_SIZE: optionalInteger(1),
  DATABASE_CONNECT_TIMEOUT: optionalInteger(1),
  DATABASE_STATEMENT_TIMEOUT_MS: optionalInteger(1),
  RESERVATION_TTL_MS: optionalInteger(1),
  KEY_CACHE_TTL_MS: optionalInteger(0),
  RECORD_RETENTION: z.preprocess(
    unset,
    z
      .string()
      .refine((raw) => durationMs(raw) !== undefined, { error: DURATION_MESSAGE })
      .transform((raw) => durationMs(raw)!)
      .optional(),
  ),
  FALLBACK_TIMEOUT_MS: optionalInteger(1),
  FALLBACK_SNAPSHOT_INTERVAL_MS: optionalInteger(1),
  STORAGE: z.preprocess(unset, z.enum(['file'], { error: 'must be "file" or unset' }).optional()),
  KEY_FILE: text(),
};

const logLevelShape = {
  LOG_LEVEL: z.preprocess(unset, z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` }).optional()),
};

/** What every command reads: the store, backups and the log level. */
const commandShape = {
  ...storageShape,
  BACKUP_DIR: z.preprocess(unset, z.string().trim().default('./backups')),
  BACKUP_SCHEDULE: z.preprocess(unset, z.string().trim().optional()),
  BACKUP_RETAIN: integer(1, undefined, 7),
  ...logLevelShape,
};

const sidecarSchema = z.object(sidecarShape);
const commandSchema = z.object(commandShape);
const locationSchema = z.object(locationShape);
const logLevelSchema = z.object(logLevelShape);
export type SidecarVariables = z.output<typeof sidecarSchema>;

/** The name of every variable tokengate reads. */
export const VARIABLE_NAMES: readonly string[] = Object.keys({ ...sidecarShape, ...commandShape });

/** createStorage() options as the environment sets them: undefined where a variable is unset, so the store's defaults apply. */
export interface StorageSettings {
  databaseUrl: string | undefined;
  databasePath: string | undefined;
  fallbackDir: string | undefined;
  poolSize: number | undefined;
  connectTimeoutSeconds: number | undefined;
  statementTimeoutMs: number | undefined;
  reservationTtlMs: number | undefined;
  keyCacheTtlMs: number | undefined;
  recordRetentionMs: number | undefined;
  fallbackTimeoutMs: number | undefined;
  snapshotIntervalMs: number | undefined;
  storage: 'file' | undefined;
  keyFile: string | undefined;
}

export interface BackupConfig {
  schedule: string;
  dir: string;
  retain: number;
}

/** What `tokengate serve` and every CLI command are configured by. */
export interface Environment {
  storage: StorageSettings;
  /** BACKUP_DIR: backups by hand, scheduled, and before an import or a restore. */
  backupDir: string;
  /** Scheduled backups (BACKUP_SCHEDULE, BACKUP_DIR, BACKUP_RETAIN); undefined when BACKUP_SCHEDULE is unset. */
  backups: BackupConfig | undefined;
  logLevel: LogLevel | undefined;
}

/** The CLI commands' settings from `env`; throws a ConfigError whose message starts with the bad variable. */
export function readEnvironment(env: NodeJS.ProcessEnv): Environment {
  return environment(parse(commandSchema, env));
}

/** `tokengate serve`'s settings from `env`: its own, then the commands'; the first bad variable is the one named. */
export function readServeEnvironment(env: NodeJS.ProcessEnv): Environment & { sidecar: SidecarVariables } {
  const sidecar = parse(sidecarSchema, env);
  return { ...readEnvironment(env), sidecar };
}

/** DATABASE_URL, DATABASE_PATH and FALLBACK_DIR: what createStorage() falls back to, and all it reads. */
export function storageLocation(env: NodeJS.ProcessEnv): Pick<StorageSettings, 'databaseUrl' | 'databasePath' | 'fallbackDir'> {
  const value = parse(locationSchema, env);
  return { databaseUrl: value.DATABASE_URL, databasePath: value.DATABASE_PATH, fallbackDir: value.FALLBACK_DIR };
}

/** LOG_LEVEL, the level of the default logger. */
export function logLevel(env: NodeJS.ProcessEnv): LogLevel | undefined {
  return parse(logLevelSchema, env).LOG_LEVEL;
}

/**
 * The store's settings for gates whose longest window is `windowMs`. RECORD_RETENTION may not be
 * shorter: a record id dropped while its bucket still counts could be replayed into the window a
 * second time. (Shorter retentions, for tests, go through createStorage()'s option.)
 */
export function storageForWindow(settings: StorageSettings, windowMs: number): StorageSettings & { windowMs: number } {
  const retention = settings.recordRetentionMs;
  if (retention !== undefined && retention < windowMs) {
    throw new ConfigError(`RECORD_RETENTION must be at least the window (${formatDuration(windowMs)}), not "${formatDuration(retention)}"`);
  }
  return { ...settings, windowMs };
}

function environment(value: z.output<typeof commandSchema>): Environment {
  const schedule = value.BACKUP_SCHEDULE;
  return {
    storage: {
      databaseUrl: value.DATABASE_URL,
      databasePath: value.DATABASE_PATH,
      fallbackDir: value.FALLBACK_DIR,
      poolSize: value.DATABASE_POOL_SIZE,
      connectTimeoutSeconds: value.DATABASE_CONNECT_TIMEOUT,
      statementTimeoutMs: value.DATABASE_STATEMENT_TIMEOUT_MS,
      reservationTtlMs: value.RESERVATION_TTL_MS,
      keyCacheTtlMs: value.KEY_CACHE_TTL_MS,
      recordRetentionMs: value.RECORD_RETENTION,
      fallbackTimeoutMs: value.FALLBACK_TIMEOUT_MS,
      snapshotIntervalMs: value.FALLBACK_SNAPSHOT_INTERVAL_MS,
      storage: value.STORAGE,
      keyFile: value.KEY_FILE,
    },
    backupDir: value.BACKUP_DIR,
    backups: schedule === undefined ? undefined : { schedule: cronPattern(schedule, 'BACKUP_SCHEDULE'), dir: value.BACKUP_DIR, retain: value.BACKUP_RETAIN },
    logLevel: value.LOG_LEVEL,
  };
}

function parse<T extends z.ZodType>(schema: T, env: NodeJS.ProcessEnv): z.output<T> {
  const parsed = schema.safeParse(env);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0];
  const variable = String(issue?.path[0] ?? 'environment');
  throw new ConfigError(`${variable} ${issue?.message ?? 'is invalid'}${shown(variable, env[variable])}`);
}

/** Variables whose value an error line never repeats: they hold secrets (a URL may carry a password). */
const SECRET_VARIABLES = new Set(['ADMIN_TOKEN', 'UPSTREAM_API_KEY', 'UPSTREAM_URL', 'DATABASE_URL']);

/** The offending value, quoted, for the error line; secrets and absent values are not shown. */
function shown(variable: string, raw: string | undefined): string {
  if (raw === undefined || raw.trim() === '' || SECRET_VARIABLES.has(variable)) return '';
  return `, not ${JSON.stringify(raw.length > 60 ? `${raw.slice(0, 60)}…` : raw)}`;
}
