// createStorage(): picks and opens the store from explicit config or the environment.
import { ConfigError } from '../errors.js';
import { openSqlite } from '../db/sqlite.js';
import { connectPostgres, DEFAULT_POOL, migratePostgres } from '../db/postgres.js';
import { SqliteStorage } from './sqlite.js';
import { DEFAULT_RESERVATION_TTL_MS, PostgresStorage } from './postgres.js';
import { errorCode } from './retry.js';
import type { Storage } from './types.js';

export const DEFAULT_DATABASE_PATH = './data/tokengate.db';

export interface StorageConfig {
  /** `postgres://…` selects PostgreSQL; defaults to `DATABASE_URL`. */
  databaseUrl?: string;
  /** SQLite file, when no database URL is given; defaults to `DATABASE_PATH`, then `./data/tokengate.db`. */
  databasePath?: string;
  /** PostgreSQL: connections this instance opens at most. Default `DATABASE_POOL_SIZE`, then 10. */
  poolSize?: number;
  /** PostgreSQL: seconds to wait for a connection. Default `DATABASE_CONNECT_TIMEOUT`, then 5. */
  connectTimeoutSeconds?: number;
  /** PostgreSQL: statement timeout in milliseconds. Default `DATABASE_STATEMENT_TIMEOUT_MS`, then 5000. */
  statementTimeoutMs?: number;
  /** PostgreSQL: how long a reservation counts before it is presumed abandoned. Default `RESERVATION_TTL_MS`, then 15 min. */
  reservationTtlMs?: number;
}

/** Opens the configured store, migrated and ready; with no config at all, the embedded SQLite default. */
export async function createStorage(config: StorageConfig = {}): Promise<Storage> {
  const databaseUrl = config.databaseUrl ?? nonEmpty(process.env.DATABASE_URL);
  if (databaseUrl) return openPostgres(databaseUrl, config);
  const databasePath = config.databasePath ?? nonEmpty(process.env.DATABASE_PATH) ?? DEFAULT_DATABASE_PATH;
  return new SqliteStorage(openSqlite(databasePath));
}

async function openPostgres(url: string, config: StorageConfig): Promise<Storage> {
  if (!/^postgres(ql)?:\/\//.test(url)) throw new ConfigError('DATABASE_URL must start with postgres:// or postgresql://');
  const pool = {
    poolSize: config.poolSize ?? intFromEnv('DATABASE_POOL_SIZE', DEFAULT_POOL.poolSize),
    connectTimeoutSeconds: config.connectTimeoutSeconds ?? intFromEnv('DATABASE_CONNECT_TIMEOUT', DEFAULT_POOL.connectTimeoutSeconds),
    statementTimeoutMs: config.statementTimeoutMs ?? intFromEnv('DATABASE_STATEMENT_TIMEOUT_MS', DEFAULT_POOL.statementTimeoutMs),
  };
  const reservationTtlMs = config.reservationTtlMs ?? intFromEnv('RESERVATION_TTL_MS', DEFAULT_RESERVATION_TTL_MS);
  try {
    await migratePostgres(url, pool.connectTimeoutSeconds);
  } catch (error) {
    const code = errorCode(error);
    throw new ConfigError(`cannot migrate PostgreSQL at ${describeUrl(url)}: ${(error as Error).message}${code ? ` (${code})` : ''}`, { cause: error });
  }
  return new PostgresStorage(connectPostgres(url, pool), reservationTtlMs);
}

/** Host, port and database of a URL, never its password. */
export function describeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port || 5432}${parsed.pathname}`;
  } catch {
    return 'an unparseable DATABASE_URL';
  }
}

function intFromEnv(name: string, fallback: number): number {
  const raw = nonEmpty(process.env[name]);
  if (raw === undefined) return fallback;
  const value = /^\d+$/.test(raw.trim()) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value <= 0) throw new ConfigError(`${name} must be a positive integer, not "${raw}"`);
  return value;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value;
}
