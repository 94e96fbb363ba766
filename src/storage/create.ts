// createStorage(): picks and opens the store from explicit config or the environment.
import { ConfigError } from '../errors.js';
import { openSqlite } from '../db/sqlite.js';
import { SqliteStorage } from './sqlite.js';
import type { Storage } from './types.js';

export const DEFAULT_DATABASE_PATH = './data/tokengate.db';

export interface StorageConfig {
  /** `postgres://…`; defaults to `DATABASE_URL`. */
  databaseUrl?: string;
  /** SQLite file; defaults to `DATABASE_PATH`, then `./data/tokengate.db`. */
  databasePath?: string;
}

/** Opens the configured store, migrated and ready; with no config at all, the embedded SQLite default. */
export async function createStorage(config: StorageConfig = {}): Promise<Storage> {
  const databaseUrl = config.databaseUrl ?? nonEmpty(process.env.DATABASE_URL);
  if (databaseUrl) {
    throw new ConfigError('DATABASE_URL is set, but this version of tokengate stores keys in SQLite only; unset DATABASE_URL or set DATABASE_PATH');
  }
  const databasePath = config.databasePath ?? nonEmpty(process.env.DATABASE_PATH) ?? DEFAULT_DATABASE_PATH;
  return new SqliteStorage(openSqlite(databasePath));
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value;
}
