// Every environment variable tokengate reads: `serve --help` lists them, and a test holds the reference table in docs/operations.md to this list.

export interface Variable {
  name: string;
  /** As the reference table shows it. */
  default: string;
  what: string;
}

export const VARIABLES: readonly Variable[] = [
  { name: "UPSTREAM_URL", default: "required", what: "the upstream to proxy to (http:// or https://); the request path is appended to its path" },
  { name: "UPSTREAM_API_KEY", default: "—", what: "sent upstream in place of the client's key" },
  { name: "UPSTREAM_AUTH_HEADER", default: "—", what: "authorization or x-api-key: always send UPSTREAM_API_KEY in that header" },
  { name: "PORT", default: "`8080`", what: "port to listen on; 0 picks a free one" },
  { name: "HOST", default: "`0.0.0.0`", what: "address to listen on" },
  { name: "ADMIN_TOKEN", default: "—", what: "enables the admin API (at least 16 characters)" },
  { name: "UPSTREAM_TIMEOUT_MS", default: "`600000` (10 min)", what: "longest wait for the upstream's headers, and between two body chunks" },
  { name: "BODY_LIMIT", default: "`10485760` (10 MiB)", what: "larger request bodies get 413" },
  { name: "BODY_TIMEOUT_MS", default: "`60000`", what: "a request body slower than this gets 408" },
  { name: "BODY_MEMORY_LIMIT", default: "`104857600` (100 MiB), at least `BODY_LIMIT`", what: "bytes of request bodies being read at once; beyond, 503" },
  { name: "OVERRIDE_MODEL", default: "`false`", what: "true: set a JSON body's model to the key's model" },
  { name: "INCLUDE_STREAM_USAGE", default: "`false`", what: "true: ask OpenAI streams to report their usage" },
  { name: "ALLOW_QUERY_KEY", default: "`false`", what: "true: also accept the key as ?api_key=" },
  { name: "SHUTDOWN_TIMEOUT_MS", default: "`30000`", what: "how long in-flight requests may finish after SIGTERM" },
  { name: "TOKEN_WEIGHTS", default: "every kind `1`", what: "what a token of each kind is charged, e.g. `cache_read=0.1,cache_creation=1.25`; keys may set their own" },
  { name: "DATABASE_URL", default: "—", what: "PostgreSQL connection URL; when set, PostgreSQL is the store" },
  { name: "DATABASE_PATH", default: "`./data/tokengate.db`", what: "the SQLite file when DATABASE_URL is unset" },
  { name: "DATABASE_POOL_SIZE", default: "`10`", what: "PostgreSQL: connections one instance opens at most" },
  { name: "DATABASE_CONNECT_TIMEOUT", default: "`5`", what: "PostgreSQL: seconds to wait for a connection" },
  { name: "DATABASE_STATEMENT_TIMEOUT_MS", default: "`5000`", what: "PostgreSQL: longest a statement may run" },
  { name: "RESERVATION_TTL_MS", default: "`900000`", what: "PostgreSQL: a reservation older than this stops counting" },
  { name: "KEY_CACHE_TTL_MS", default: "`5000`", what: "how long a key read from the store is reused (0: never)" },
  { name: "RECORD_RETENTION", default: "`7d`", what: "how long usage record ids are kept (90s, 30m, 12h, 7d)" },
  { name: "FALLBACK_DIR", default: "`./data/fallback` (SQLite: `fallback` next to the database file)", what: "the file store: fallback behind PostgreSQL, journal of a SQLite store" },
  { name: "FALLBACK_TIMEOUT_MS", default: "`2000`", what: "longest a request waits on PostgreSQL before the fallback decides" },
  { name: "FALLBACK_SNAPSHOT_INTERVAL_MS", default: "`30000`", what: "how often the fallback snapshot is refreshed" },
  { name: "STORAGE", default: "—", what: "file: no database, the file store alone" },
  { name: "KEY_FILE", default: "—", what: "with STORAGE=file: the old JSON key file a new file store begins with" },
  { name: "BACKUP_DIR", default: "`./backups`", what: "where backups go" },
  { name: "BACKUP_SCHEDULE", default: "—", what: "cron expression (UTC) for scheduled backups" },
  { name: "BACKUP_RETAIN", default: "`7`", what: "scheduled backups kept per backend" },
  { name: "LOG_LEVEL", default: "`info`", what: "pino log level" },
];

/** The list as `serve --help` prints it, one aligned line per variable. */
export function variablesHelp(): string {
  const width = Math.max(...VARIABLES.map((variable) => variable.name.length));
  const plain = (text: string): string => text.replace(/`/g, '');
  return ['Environment (see docs/operations.md for details):', ...VARIABLES.map((variable) => `  ${variable.name.padEnd(width)}  ${variable.what} [default: ${plain(variable.default)}]`)].join('\n');
}
