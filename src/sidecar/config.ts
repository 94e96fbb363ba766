// The sidecar's settings, from the environment as src/config.ts parses it.
import { readServeEnvironment, storageForWindow, type BackupConfig, type LogLevel, type StorageSettings } from '../config.js';
import { ConfigError } from '../errors.js';
import { defaultBodyMemoryLimit } from '../http/request-body.js';
import { DEFAULT_WINDOW_MS } from '../quota/window.js';
import { parseWeights, type TokenWeights } from '../usage/weights.js';

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
  /** What each kind of token is charged unless a key says otherwise (tokenGate's weights). */
  tokenWeights: TokenWeights;
  /** Scheduled backups (BACKUP_SCHEDULE, BACKUP_DIR, BACKUP_RETAIN); none when BACKUP_SCHEDULE is unset. */
  backups: BackupConfig | undefined;
  /** The store's settings (createStorage() options), RECORD_RETENTION checked against the window. */
  storage: StorageSettings;
  logLevel: LogLevel | undefined;
}

function tokenWeights(spec: string | undefined): TokenWeights {
  try {
    return spec === undefined ? {} : parseWeights(spec, 'TOKEN_WEIGHTS');
  } catch (error) {
    throw new ConfigError((error as Error).message);
  }
}

/** The sidecar's settings from `env`; throws a ConfigError whose message starts with the bad variable. */
export function loadSidecarConfig(env: NodeJS.ProcessEnv = process.env): SidecarConfig {
  const { sidecar: value, storage, backups, logLevel } = readServeEnvironment(env);
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
    bodyMemoryLimit: value.BODY_MEMORY_LIMIT ?? defaultBodyMemoryLimit(value.BODY_LIMIT),
    overrideModel: value.OVERRIDE_MODEL,
    includeStreamUsage: value.INCLUDE_STREAM_USAGE,
    allowQueryKey: value.ALLOW_QUERY_KEY,
    shutdownTimeoutMs: value.SHUTDOWN_TIMEOUT_MS,
    tokenWeights: tokenWeights(value.TOKEN_WEIGHTS),
    backups,
    // The sidecar's gate uses the default window.
    storage: storageForWindow(storage, DEFAULT_WINDOW_MS),
    logLevel,
  };
}
