// The sidecar's settings, read from the environment and validated (zod); a bad one names its variable.
import { z } from 'zod';
import { DEFAULT_BODY_MEMORY_LIMIT } from '../../middleware/options.js';
import { ConfigError } from '../errors.js';
import { backupConfigFromEnv, type BackupConfig } from '../ops/backup-schedule.js';

export interface SidecarConfig {
  /** Where admitted requests go; the request path is appended to this URL's path. */
  upstreamUrl: URL;
  /** Sent upstream in place of the client's key, in the header style the client used. */
  upstreamApiKey: string | undefined;
  /** The header UPSTREAM_API_KEY always goes in, whatever the client used. */
  upstreamAuthHeader: 'authorization' | 'x-api-key' | undefined;
  port: number;
  host: string;
  /** Bearer token of the admin API; the admin API answers 404 when it is unset. */
  adminToken: string | undefined;
  /** Longest wait for the upstream's response headers, and longest pause between its body chunks. */
  upstreamTimeoutMs: number;
  /** Largest request body accepted, in bytes (tokenGate's bodyLimit). */
  bodyLimit: number;
  /** Longest time a request body may take to arrive (tokenGate's bodyTimeoutMs). */
  bodyTimeoutMs: number;
  /** Bytes of request bodies being read at once, all requests together (tokenGate's bodyMemoryLimit). */
  bodyMemoryLimit: number;
  /** Replace a JSON body's `model` with the key's model, when the key has one. */
  overrideModel: boolean;
  /** Ask OpenAI streaming completions for a final usage chunk (`stream_options.include_usage`). */
  includeStreamUsage: boolean;
  /** Also accept the client's key in the `api_key` query parameter (it is removed before forwarding). */
  allowQueryKey: boolean;
  /** How long in-flight requests may take to finish after SIGTERM before their connections are closed. */
  shutdownTimeoutMs: number;
  /** Scheduled backups (BACKUP_SCHEDULE, BACKUP_DIR, BACKUP_RETAIN); none when BACKUP_SCHEDULE is unset. */
  backups: BackupConfig | undefined;
}

export const MIN_ADMIN_TOKEN_LENGTH = 16;
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Blank variables count as unset, as in createStorage(). */
const unset = (value: unknown): unknown => (typeof value === 'string' && value.trim() === '' ? undefined : value);

function digits(min: number, max: number) {
  const message = `must be an integer from ${min} to ${max}`;
  return z
    .string()
    .trim()
    .regex(/^\d+$/, { error: message })
    .transform(Number)
    .pipe(z.number().min(min, { error: message }).max(max, { error: message }));
}

function integer(min: number, max: number, fallback: number) {
  return z.preprocess(unset, digits(min, max).default(fallback));
}

/** An integer variable whose default depends on another: undefined when unset. */
function optionalInteger(min: number, max: number) {
  return z.preprocess(unset, digits(min, max).optional());
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

const upstreamUrl = z.preprocess(
  unset,
  z
    .string({ error: 'is required: the URL of the upstream to proxy to, such as https://api.openai.com' })
    .pipe(z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' }))
    .transform((value) => new URL(value))
    .refine((url) => url.search === '' && url.hash === '', { error: 'must not have a query string or fragment' }),
);

const schema = z.object({
  UPSTREAM_URL: upstreamUrl,
  UPSTREAM_API_KEY: z.preprocess(unset, z.string().optional()),
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
  LOG_LEVEL: z.preprocess(unset, z.enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(', ')}` }).optional()),
  UPSTREAM_TIMEOUT_MS: integer(1, 2_147_483_647, 600_000),
  BODY_LIMIT: integer(0, Number.MAX_SAFE_INTEGER, 10 * 1024 * 1024),
  BODY_TIMEOUT_MS: integer(1, 2_147_483_647, 60_000),
  BODY_MEMORY_LIMIT: optionalInteger(0, Number.MAX_SAFE_INTEGER),
  OVERRIDE_MODEL: flag(),
  INCLUDE_STREAM_USAGE: flag(),
  ALLOW_QUERY_KEY: flag(),
  SHUTDOWN_TIMEOUT_MS: integer(0, 2_147_483_647, 30_000),
});

/** The variables the sidecar's own settings come from. */
export const SIDECAR_VARIABLES: readonly string[] = Object.keys(schema.shape);

/** The sidecar's settings from `env`; throws a ConfigError whose message starts with the bad variable. */
export function loadSidecarConfig(env: NodeJS.ProcessEnv = process.env): SidecarConfig {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const variable = String(issue?.path[0] ?? 'environment');
    throw new ConfigError(`${variable} ${issue?.message ?? 'is invalid'}${shown(variable, env[variable])}`);
  }
  const value = parsed.data;
  if (value.BODY_MEMORY_LIMIT !== undefined && value.BODY_MEMORY_LIMIT < value.BODY_LIMIT) {
    throw new ConfigError(`BODY_MEMORY_LIMIT must be at least BODY_LIMIT (${value.BODY_LIMIT}), not ${value.BODY_MEMORY_LIMIT}`);
  }
  return {
    upstreamUrl: value.UPSTREAM_URL,
    upstreamApiKey: value.UPSTREAM_API_KEY,
    upstreamAuthHeader: value.UPSTREAM_AUTH_HEADER,
    port: value.PORT,
    host: value.HOST,
    adminToken: value.ADMIN_TOKEN,
    upstreamTimeoutMs: value.UPSTREAM_TIMEOUT_MS,
    bodyLimit: value.BODY_LIMIT,
    bodyTimeoutMs: value.BODY_TIMEOUT_MS,
    bodyMemoryLimit: value.BODY_MEMORY_LIMIT ?? Math.max(DEFAULT_BODY_MEMORY_LIMIT, value.BODY_LIMIT),
    overrideModel: value.OVERRIDE_MODEL,
    includeStreamUsage: value.INCLUDE_STREAM_USAGE,
    allowQueryKey: value.ALLOW_QUERY_KEY,
    shutdownTimeoutMs: value.SHUTDOWN_TIMEOUT_MS,
    backups: backupConfigFromEnv(env),
  };
}

/** The offending value, quoted, for the error line; secrets and absent values are not shown. */
function shown(variable: string, raw: string | undefined): string {
  if (raw === undefined || raw.trim() === '' || variable === 'ADMIN_TOKEN' || variable === 'UPSTREAM_API_KEY' || variable === 'UPSTREAM_URL') return '';
  return `, not ${JSON.stringify(raw.length > 60 ? `${raw.slice(0, 60)}…` : raw)}`;
}
