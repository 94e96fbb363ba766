// createStorage(): picks and opens the store from explicit config or the environment.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import { checkSqliteDirectory, openSqlite } from '../db/sqlite.js';
import { connectPostgres, DEFAULT_POOL, migratePostgres, type MigrationResult, type PoolSettings } from '../db/postgres.js';
import { defaultLogger, type Logger } from '../ops/logger.js';
import { DEFAULT_WINDOW_MS } from '../quota/window.js';
import { DEFAULT_KEY_CACHE_TTL_MS } from './key-cache.js';
import { SqliteStorage, type SqliteStorageOptions } from './sqlite.js';
import { DEFAULT_RESERVATION_TTL_MS, PostgresStorage } from './postgres.js';
import { FileStorage } from './file.js';
import { FallbackStorage } from './fallback.js';
import { lockFile } from './lock-file.js';
import { readKeyFile } from './key-file.js';
import { SNAPSHOT_FILE } from './snapshot.js';
import { errorCode, isTransient } from './retry.js';
import type { Storage } from './types.js';
import type { AdminStore } from './admin.js';
import { SqliteAdmin } from './sqlite-admin.js';
import { PostgresAdmin } from './postgres-admin.js';
import { postgresTarget, Pruner, recordRetentionFromEnv, sqliteTarget, type PruneOptions } from './prune.js';

export const DEFAULT_DATABASE_PATH = './data/tokengate.db';
export const DEFAULT_FALLBACK_DIR = './data/fallback';
const ADMIN_STATEMENT_TIMEOUT_MS = 10 * 60_000;

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
  /** How long a key found by digest is reused before it is read again (0: always read). Default `KEY_CACHE_TTL_MS`, then 5000. */
  keyCacheTtlMs?: number;
  /** `file` keeps everything in the file store alone (no database). Default `STORAGE`. */
  storage?: 'file';
  /** The file store: the fallback behind PostgreSQL, or the store itself. Default `FALLBACK_DIR`, then `./data/fallback`. */
  fallbackDir?: string;
  /** Longest a request waits on PostgreSQL before the file fallback decides it. Default `FALLBACK_TIMEOUT_MS`, then 2000. */
  fallbackTimeoutMs?: number;
  /** How often the fallback snapshot is refreshed from PostgreSQL. Default `FALLBACK_SNAPSHOT_INTERVAL_MS`, then 30000. */
  snapshotIntervalMs?: number;
  /** `storage: 'file'` only: the old JSON key file to start from when the file store is new. Default `KEY_FILE`. */
  keyFile?: string;
  /** Where state changes (migrations applied, fallback entered and left) are logged. Default: JSON on stdout. */
  logger?: Logger;
  /**
   * PostgreSQL: put the file fallback behind it; SQLite: journal the usage the database refuses, in
   * `fallbackDir` (default: `fallback` next to the database file). Default: true (tools that only
   * change keys turn it off).
   */
  fallback?: boolean;
  /**
   * SQLite: hold the lock that makes this process the one gate on the file (`<file>.lock`), until
   * close(). Default: true (the key commands, which run alongside the gate, turn it off).
   */
  lock?: boolean;
  /** The longest window a gate on this store uses (file store and snapshots keep that much usage). Default: 5 hours. */
  windowMs?: number;
  /** How long usage record ids are kept (what a replay is checked against). Default `RECORD_RETENTION` (at least `windowMs`), then 7 days. */
  recordRetentionMs?: number;
  /** Prune old usage in the background while the store is open. Default: true (the CLI's short-lived commands turn it off). */
  prune?: boolean;
  /** The clock pruning measures ages with (tests move it); admissions use the gate's own clock. Default: Date.now. */
  now?: () => number;
}

/** Opens the configured store, migrated and ready; with no config at all, the embedded SQLite default. */
export async function createStorage(config: StorageConfig = {}): Promise<Storage> {
  const fallbackDir = config.fallbackDir ?? nonEmpty(process.env.FALLBACK_DIR) ?? DEFAULT_FALLBACK_DIR;
  const logger = config.logger ?? defaultLogger();
  const mode = config.storage ?? nonEmpty(process.env.STORAGE);
  if (mode !== undefined && mode !== 'file') throw new ConfigError(`STORAGE must be "file" or unset, not "${mode}"`);
  if (mode === 'file') {
    const keyFile = config.keyFile ?? nonEmpty(process.env.KEY_FILE);
    const windowMs = config.windowMs ?? DEFAULT_WINDOW_MS;
    const initialKeys = keyFile ? () => readKeyFile(keyFile, Date.now(), windowMs) : undefined;
    return FileStorage.open({ dir: fallbackDir, role: 'standalone', logger, windowMs, ...(initialKeys ? { initialKeys } : {}) });
  }
  const databaseUrl = config.databaseUrl ?? nonEmpty(process.env.DATABASE_URL);
  if (databaseUrl) return openPostgres(databaseUrl, config, fallbackDir, logger);
  const databasePath = config.databasePath ?? nonEmpty(process.env.DATABASE_PATH) ?? DEFAULT_DATABASE_PATH;
  const options = { keyCacheTtlMs: keyCacheTtl(config), prune: backgroundPruning(config, logger) }; // checked before the file is opened
  if (config.lock === false) return new SqliteStorage(openSqlite(databasePath, { logger }), options);
  // The gate journals the usage the database refuses (FALLBACK_DIR, by default next to the database file).
  const journalDir = config.fallbackDir ?? nonEmpty(process.env.FALLBACK_DIR) ?? join(dirname(databasePath), 'fallback');
  const journal = config.fallback === false ? undefined : { dir: journalDir, logger };
  return openLockedSqlite(resolve(databasePath), { ...options, ...(journal ? { journal } : {}) }, logger);
}

/**
 * How long the gate's own statements wait for a write lock another connection (a CLI command)
 * holds: better-sqlite3 waits synchronously, blocking the event loop, so only briefly.
 */
export const GATE_BUSY_TIMEOUT_MS = 20;

/**
 * The gate's SQLite store: reservations live in the process, so two gates on one file would each
 * admit the whole limit. The lock comes first, so a refused second gate touches nothing.
 */
function openLockedSqlite(file: string, options: SqliteStorageOptions, logger: Logger): Storage {
  checkSqliteDirectory(dirname(file));
  const lock = lockFile(`${file}.lock`, {
    what: `the SQLite database ${file}`,
    advice: 'one gate process serves each SQLite file (run several instances on PostgreSQL; the tokengate key commands may run alongside)',
    logger,
  });
  try {
    return new SqliteStorage(openSqlite(file, { logger, busyTimeoutMs: GATE_BUSY_TIMEOUT_MS, randomizeIds: true }), { ...options, lock });
  } catch (error) {
    lock.release();
    throw error;
  }
}

/**
 * Opens the configured database for the tools (import, export, backup, restore) on a connection of
 * its own, migrated. The file store has no such tools: its snapshot is its backup.
 */
export async function openAdminStore(config: StorageConfig = {}): Promise<AdminStore> {
  if ((config.storage ?? nonEmpty(process.env.STORAGE)) !== undefined) {
    throw new ConfigError('STORAGE=file has no database to import into, back up or restore: unset STORAGE and set DATABASE_URL or DATABASE_PATH');
  }
  const databaseUrl = config.databaseUrl ?? nonEmpty(process.env.DATABASE_URL);
  if (databaseUrl) {
    const pool = poolSettings(databaseUrl, config);
    await migrateOrExplain(databaseUrl, pool.connectTimeoutSeconds);
    // Bulk statements (emptying a large table on restore) outlast the gate's short statement timeout.
    const statementTimeoutMs = Math.max(pool.statementTimeoutMs, ADMIN_STATEMENT_TIMEOUT_MS);
    return new PostgresAdmin(connectPostgres(databaseUrl, { ...pool, poolSize: 1, statementTimeoutMs }));
  }
  const databasePath = config.databasePath ?? nonEmpty(process.env.DATABASE_PATH) ?? DEFAULT_DATABASE_PATH;
  return new SqliteAdmin(openSqlite(databasePath, { logger: config.logger }));
}

async function openPostgres(url: string, config: StorageConfig, fallbackDir: string, logger: Logger): Promise<Storage> {
  const pool = poolSettings(url, config);
  const options = {
    reservationTtlMs: config.reservationTtlMs ?? intFromEnv('RESERVATION_TTL_MS', DEFAULT_RESERVATION_TTL_MS),
    keyCacheTtlMs: keyCacheTtl(config),
    prune: backgroundPruning(config, logger),
  };
  const migrate = async (): Promise<void> => {
    await migratePostgres(url, pool.connectTimeoutSeconds, logger);
  };
  let down: unknown;
  try {
    await migratePostgres(url, pool.connectTimeoutSeconds, logger, { randomizeIds: true });
  } catch (error) {
    // Down at start with a snapshot to decide from: serve from the files until it is back.
    if (config.fallback === false || !isTransient(error) || !existsSync(join(fallbackDir, SNAPSHOT_FILE))) throw migrationError(url, error);
    down = error;
  }
  if (config.fallback === false) return new PostgresStorage(connectPostgres(url, pool), options);
  const windowMs = config.windowMs ?? DEFAULT_WINDOW_MS;
  const file = FileStorage.open({ dir: fallbackDir, role: 'fallback', logger, windowMs });
  const storage = new FallbackStorage(new PostgresStorage(connectPostgres(url, pool), options), file, {
    logger,
    reconnect: migrate,
    timeoutMs: config.fallbackTimeoutMs ?? intFromEnv('FALLBACK_TIMEOUT_MS', 2000),
    snapshotIntervalMs: config.snapshotIntervalMs ?? intFromEnv('FALLBACK_SNAPSHOT_INTERVAL_MS', 30_000),
    windowMs,
  });
  // Records journaled by an earlier run (it crashed, or stopped during an outage) go in first.
  if (down !== undefined || file.journalLength > 0) storage.enterFallback(down ?? 'journal left by an earlier run');
  else await storage.refreshSnapshot();
  return storage;
}

/** The pruning settings from config, then the environment. */
function pruneOptions(config: StorageConfig, logger?: Logger): PruneOptions {
  const windowMs = config.windowMs ?? DEFAULT_WINDOW_MS;
  const recordRetentionMs = config.recordRetentionMs ?? recordRetentionFromEnv(nonEmpty(process.env.RECORD_RETENTION), windowMs);
  return { recordRetentionMs, windowMs, ...(config.now ? { now: config.now } : {}), ...(logger ? { logger } : {}) };
}

function backgroundPruning(config: StorageConfig, logger: Logger): PruneOptions | undefined {
  return config.prune === false ? undefined : pruneOptions(config, logger);
}

/** A store opened for pruning by hand (`tokengate db prune`): what it is, its pruner, and how to close it. */
export interface PruneTarget {
  /** `sqlite ./data/tokengate.db`, or `postgres host:port/database` (never credentials). */
  store: string;
  pruner: Pruner;
  options: PruneOptions;
  close(): Promise<void>;
}

/** Opens the configured database, migrated, on a connection of its own, for one pruning pass by hand. */
export async function openPruneTarget(config: StorageConfig = {}): Promise<PruneTarget> {
  if ((config.storage ?? nonEmpty(process.env.STORAGE)) !== undefined) {
    throw new ConfigError('STORAGE=file keeps only the usage its window needs and has nothing to prune: unset STORAGE and set DATABASE_URL or DATABASE_PATH');
  }
  const options = pruneOptions(config);
  const databaseUrl = config.databaseUrl ?? nonEmpty(process.env.DATABASE_URL);
  if (databaseUrl) {
    const pool = poolSettings(databaseUrl, config);
    await migrateOrExplain(databaseUrl, pool.connectTimeoutSeconds);
    const { sql } = connectPostgres(databaseUrl, { ...pool, poolSize: 1 });
    return { store: `postgres ${describeUrl(databaseUrl)}`, pruner: new Pruner(postgresTarget(sql), options), options, close: () => sql.end({ timeout: 5 }) };
  }
  const databasePath = config.databasePath ?? nonEmpty(process.env.DATABASE_PATH) ?? DEFAULT_DATABASE_PATH;
  const { sqlite } = openSqlite(databasePath);
  return { store: `sqlite ${databasePath}`, pruner: new Pruner(sqliteTarget(sqlite), options), options, close: async () => void sqlite.close() };
}

/** Checks the URL and reads the pool settings from config, then the environment. */
function poolSettings(url: string, config: StorageConfig): PoolSettings {
  if (!/^postgres(ql)?:\/\//.test(url)) throw new ConfigError('DATABASE_URL must start with postgres:// or postgresql://');
  return {
    poolSize: config.poolSize ?? intFromEnv('DATABASE_POOL_SIZE', DEFAULT_POOL.poolSize),
    connectTimeoutSeconds: config.connectTimeoutSeconds ?? intFromEnv('DATABASE_CONNECT_TIMEOUT', DEFAULT_POOL.connectTimeoutSeconds),
    statementTimeoutMs: config.statementTimeoutMs ?? intFromEnv('DATABASE_STATEMENT_TIMEOUT_MS', DEFAULT_POOL.statementTimeoutMs),
  };
}

/**
 * The store `config` and the environment select, as commands name it: `sqlite /abs/path.db`,
 * `postgres host:port/database` (never credentials), or `file DIR`.
 */
export function configuredStore(config: StorageConfig = {}): string {
  if ((config.storage ?? nonEmpty(process.env.STORAGE)) !== undefined) return `file ${resolve(config.fallbackDir ?? nonEmpty(process.env.FALLBACK_DIR) ?? DEFAULT_FALLBACK_DIR)}`;
  const databaseUrl = config.databaseUrl ?? nonEmpty(process.env.DATABASE_URL);
  if (databaseUrl) return `postgres ${describeUrl(databaseUrl)}`;
  return `sqlite ${resolve(config.databasePath ?? nonEmpty(process.env.DATABASE_PATH) ?? DEFAULT_DATABASE_PATH)}`;
}

/** Applies pending migrations to the configured database (`tokengate db migrate`): which store, and what was done. */
export async function migrateDatabase(config: StorageConfig = {}): Promise<MigrationResult & { store: string }> {
  if ((config.storage ?? nonEmpty(process.env.STORAGE)) !== undefined) {
    throw new ConfigError('STORAGE=file has no database to migrate: unset STORAGE and set DATABASE_URL or DATABASE_PATH');
  }
  const databaseUrl = config.databaseUrl ?? nonEmpty(process.env.DATABASE_URL);
  if (databaseUrl) {
    const result = await migrateOrExplain(databaseUrl, poolSettings(databaseUrl, config).connectTimeoutSeconds, config.logger, true);
    return { store: `postgres ${describeUrl(databaseUrl)}`, ...result };
  }
  const databasePath = config.databasePath ?? nonEmpty(process.env.DATABASE_PATH) ?? DEFAULT_DATABASE_PATH;
  const { sqlite, migrated } = openSqlite(databasePath, { logger: config.logger, randomizeIds: true });
  sqlite.close();
  return { store: `sqlite ${databasePath}`, ...migrated };
}

async function migrateOrExplain(url: string, connectTimeoutSeconds: number, logger?: Logger, randomizeIds = false): Promise<MigrationResult> {
  try {
    return await migratePostgres(url, connectTimeoutSeconds, logger, { randomizeIds });
  } catch (error) {
    throw migrationError(url, error);
  }
}

function migrationError(url: string, error: unknown): ConfigError {
  const code = errorCode(error);
  return new ConfigError(`cannot migrate PostgreSQL at ${describeUrl(url)}: ${(error as Error).message}${code ? ` (${code})` : ''}`, { cause: error });
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

function intFromEnv(name: string, fallback: number, min = 1): number {
  const raw = nonEmpty(process.env[name]);
  if (raw === undefined) return fallback;
  const value = /^\d+$/.test(raw.trim()) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(value) || value < min) throw new ConfigError(`${name} must be ${min === 0 ? 'a non-negative' : 'a positive'} integer, not "${raw}"`);
  return value;
}

function keyCacheTtl(config: StorageConfig): number {
  return config.keyCacheTtlMs ?? intFromEnv('KEY_CACHE_TTL_MS', DEFAULT_KEY_CACHE_TTL_MS, 0);
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value;
}
