// createStorage(): picks and opens the store from its config; only where the store is defaults to the environment.
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { storageLocation } from '../config.js';
import { ConfigError } from '../errors.js';
import { checkSqliteDirectory, openSqlite } from '../db/sqlite.js';
import { connectPostgres, DEFAULT_POOL, migratePostgres, type MigrationResult, type PoolSettings } from '../db/postgres.js';
import { defaultLogger } from '../logger.js';
import type { Logger } from '../types.js';
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
import { DEFAULT_RECORD_RETENTION_MS, postgresTarget, Pruner, sqliteTarget, type PruneOptions } from './prune.js';
import { rememberWindow } from './opened-window.js';

export const DEFAULT_DATABASE_PATH = './data/tokengate.db';
export const DEFAULT_FALLBACK_DIR = './data/fallback';
const ADMIN_STATEMENT_TIMEOUT_MS = 10 * 60_000;

/**
 * Where the store is defaults to `DATABASE_URL`, `DATABASE_PATH` and `FALLBACK_DIR`; nothing else is
 * read from the environment (a host app may use other names for its own ends). `tokengate serve` and
 * the CLI pass the rest from their variables (`DATABASE_POOL_SIZE` for `poolSize`, and so on).
 */
export interface StorageConfig {
  /** `postgres://…` selects PostgreSQL; defaults to `DATABASE_URL`. */
  databaseUrl?: string;
  /** SQLite file, when no database URL is given; defaults to `DATABASE_PATH`, then `./data/tokengate.db`. */
  databasePath?: string;
  /** PostgreSQL: connections this instance opens at most. Default 10. */
  poolSize?: number;
  /** PostgreSQL: seconds to wait for a connection. Default 5. */
  connectTimeoutSeconds?: number;
  /** PostgreSQL: statement timeout in milliseconds. Default 5000. */
  statementTimeoutMs?: number;
  /** PostgreSQL: how long a reservation counts before it is presumed abandoned. Default 15 min. */
  reservationTtlMs?: number;
  /** How long a key found by digest is reused before it is read again (0: always read). Default 5000. */
  keyCacheTtlMs?: number;
  /** `file` keeps everything in the file store alone (no database). */
  storage?: 'file';
  /** The file store: the fallback behind PostgreSQL, or the store itself. Default `FALLBACK_DIR`, then `./data/fallback`. */
  fallbackDir?: string;
  /** Longest a request waits on PostgreSQL before the file fallback decides it. Default 2000. */
  fallbackTimeoutMs?: number;
  /** How often the fallback snapshot is refreshed from PostgreSQL. Default 30000. */
  snapshotIntervalMs?: number;
  /** `storage: 'file'` only: the old JSON key file to start from when the file store is new. */
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
  /**
   * The longest window a gate on this store uses (file store and snapshots keep that much usage, pruning
   * keeps that much of the buckets). A gate on the store uses it by default and may not use a longer
   * one. Default: 5 hours.
   */
  windowMs?: number;
  /** How long usage record ids are kept (what a replay is checked against). Default 7 days. */
  recordRetentionMs?: number;
  /** Prune old usage in the background while the store is open. Default: true (the CLI's short-lived commands turn it off). */
  prune?: boolean;
  /** The clock pruning measures ages with (tests move it); admissions use the gate's own clock. Default: Date.now. */
  now?: () => number;
}

/** Opens the configured store, migrated and ready; with no config at all, the embedded SQLite default. */
export async function createStorage(config: StorageConfig = {}): Promise<Storage> {
  return rememberWindow(await openStorage(config), config.windowMs ?? DEFAULT_WINDOW_MS);
}

async function openStorage(config: StorageConfig): Promise<Storage> {
  const where = location(config);
  const fallbackDir = where.fallbackDir ?? DEFAULT_FALLBACK_DIR;
  const logger = config.logger ?? defaultLogger();
  if (fileStoreSelected(config)) {
    const { keyFile } = config;
    const windowMs = config.windowMs ?? DEFAULT_WINDOW_MS;
    const initialKeys = keyFile ? () => readKeyFile(keyFile, Date.now(), windowMs) : undefined;
    return FileStorage.open({ dir: fallbackDir, role: 'standalone', logger, windowMs, ...(initialKeys ? { initialKeys } : {}) });
  }
  const { databaseUrl, databasePath } = where;
  if (databaseUrl) return openPostgres(databaseUrl, config, fallbackDir, logger);
  const options = { keyCacheTtlMs: config.keyCacheTtlMs ?? DEFAULT_KEY_CACHE_TTL_MS, prune: backgroundPruning(config, logger) };
  if (config.lock === false) return new SqliteStorage(openSqlite(databasePath, { logger }), options);
  // The gate journals the usage the database refuses (FALLBACK_DIR, by default next to the database file).
  const journalDir = where.fallbackDir ?? join(dirname(databasePath), 'fallback');
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
  if (fileStoreSelected(config)) {
    throw new ConfigError('STORAGE=file has no database to import into, back up or restore: unset STORAGE and set DATABASE_URL or DATABASE_PATH');
  }
  const { databaseUrl, databasePath } = location(config);
  if (databaseUrl) {
    const pool = poolSettings(databaseUrl, config);
    await migrateOrExplain(databaseUrl, pool.connectTimeoutSeconds);
    // Bulk statements (emptying a large table on restore) outlast the gate's short statement timeout.
    const statementTimeoutMs = Math.max(pool.statementTimeoutMs, ADMIN_STATEMENT_TIMEOUT_MS);
    return new PostgresAdmin(connectPostgres(databaseUrl, { ...pool, poolSize: 1, statementTimeoutMs }));
  }
  return new SqliteAdmin(openSqlite(databasePath, { logger: config.logger }));
}

async function openPostgres(url: string, config: StorageConfig, fallbackDir: string, logger: Logger): Promise<Storage> {
  const pool = poolSettings(url, config);
  const options = {
    reservationTtlMs: config.reservationTtlMs ?? DEFAULT_RESERVATION_TTL_MS,
    keyCacheTtlMs: config.keyCacheTtlMs ?? DEFAULT_KEY_CACHE_TTL_MS,
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
    timeoutMs: config.fallbackTimeoutMs ?? 2000,
    snapshotIntervalMs: config.snapshotIntervalMs ?? 30_000,
    windowMs,
  });
  // Records journaled by an earlier run (it crashed, or stopped during an outage) go in first.
  if (down !== undefined || file.journalLength > 0) storage.enterFallback(down ?? 'journal left by an earlier run');
  else await storage.refreshSnapshot();
  return storage;
}

function pruneOptions(config: StorageConfig, logger?: Logger): PruneOptions {
  const windowMs = config.windowMs ?? DEFAULT_WINDOW_MS;
  const recordRetentionMs = config.recordRetentionMs ?? DEFAULT_RECORD_RETENTION_MS;
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
  if (fileStoreSelected(config)) {
    throw new ConfigError('STORAGE=file keeps only the usage its window needs and has nothing to prune: unset STORAGE and set DATABASE_URL or DATABASE_PATH');
  }
  const options = pruneOptions(config);
  const { databaseUrl, databasePath } = location(config);
  if (databaseUrl) {
    const pool = poolSettings(databaseUrl, config);
    await migrateOrExplain(databaseUrl, pool.connectTimeoutSeconds);
    const { sql } = connectPostgres(databaseUrl, { ...pool, poolSize: 1 });
    return { store: `postgres ${describeUrl(databaseUrl)}`, pruner: new Pruner(postgresTarget(sql), options), options, close: () => sql.end({ timeout: 5 }) };
  }
  const { sqlite } = openSqlite(databasePath);
  return { store: `sqlite ${databasePath}`, pruner: new Pruner(sqliteTarget(sqlite), options), options, close: async () => void sqlite.close() };
}

/** Checks the URL and reads the pool settings from config. */
function poolSettings(url: string, config: StorageConfig): PoolSettings {
  if (!/^postgres(ql)?:\/\//.test(url)) throw new ConfigError('DATABASE_URL must start with postgres:// or postgresql://');
  return {
    poolSize: config.poolSize ?? DEFAULT_POOL.poolSize,
    connectTimeoutSeconds: config.connectTimeoutSeconds ?? DEFAULT_POOL.connectTimeoutSeconds,
    statementTimeoutMs: config.statementTimeoutMs ?? DEFAULT_POOL.statementTimeoutMs,
  };
}

/**
 * The store `config` and the environment select, as commands name it: `sqlite /abs/path.db`,
 * `postgres host:port/database` (never credentials), or `file DIR`.
 */
export function configuredStore(config: StorageConfig = {}): string {
  const { databaseUrl, databasePath, fallbackDir } = location(config);
  if (fileStoreSelected(config)) return `file ${resolve(fallbackDir ?? DEFAULT_FALLBACK_DIR)}`;
  if (databaseUrl) return `postgres ${describeUrl(databaseUrl)}`;
  return `sqlite ${resolve(databasePath)}`;
}

/** Applies pending migrations to the configured database (`tokengate db migrate`): which store, and what was done. */
export async function migrateDatabase(config: StorageConfig = {}): Promise<MigrationResult & { store: string }> {
  if (fileStoreSelected(config)) {
    throw new ConfigError('STORAGE=file has no database to migrate: unset STORAGE and set DATABASE_URL or DATABASE_PATH');
  }
  const { databaseUrl, databasePath } = location(config);
  if (databaseUrl) {
    const result = await migrateOrExplain(databaseUrl, poolSettings(databaseUrl, config).connectTimeoutSeconds, config.logger, true);
    return { store: `postgres ${describeUrl(databaseUrl)}`, ...result };
  }
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

/**
 * Where the store is: `config`, else the variables the contract names for it (DATABASE_URL,
 * DATABASE_PATH, FALLBACK_DIR), else the defaults. FALLBACK_DIR's default depends on the store.
 */
function location(config: StorageConfig): { databaseUrl: string | undefined; databasePath: string; fallbackDir: string | undefined } {
  const env = storageLocation(process.env);
  return {
    databaseUrl: config.databaseUrl ?? env.databaseUrl,
    databasePath: config.databasePath ?? env.databasePath ?? DEFAULT_DATABASE_PATH,
    fallbackDir: config.fallbackDir ?? env.fallbackDir,
  };
}

/** `storage: 'file'`; anything else a JavaScript caller passes is refused rather than taken for a database. */
function fileStoreSelected(config: StorageConfig): boolean {
  const mode: unknown = config.storage;
  if (mode !== undefined && mode !== 'file') throw new ConfigError(`storage must be "file" or unset, not ${JSON.stringify(mode)}`);
  return mode === 'file';
}
