// Opens the embedded SQLite database: refuses files that are not tokengate's, creates a new one owner-only, sets WAL, migrates.
import { accessSync, closeSync, constants, fchmodSync, mkdirSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { drizzle, type BetterSQLite3Database } from 'drizzle-orm/better-sqlite3';
import { migrate } from 'drizzle-orm/better-sqlite3/migrator';
import { ConfigError } from '../errors.js';
import type { Logger } from '../types.js';
import { PRIVATE_FILE_MODE } from '../private-files.js';
import { randomizeDerivedIdsSqlite } from './random-ids.js';
import * as schema from './schema/sqlite.js';
import { migrationsFolder, schemaTag } from './migrations.js';
import type { MigrationResult } from './postgres.js';

export type SqliteDb = BetterSQLite3Database<typeof schema>;

export interface OpenedSqlite {
  sqlite: Database.Database;
  db: SqliteDb;
  path: string;
  /** What this open's migration did. */
  migrated: MigrationResult;
}

export interface SqliteOptions {
  /** Where migrations applied are logged (and a database file others can read is warned about). */
  logger?: Logger;
  /**
   * Once migrated, how long a statement waits for another connection's write lock before it fails
   * with SQLITE_BUSY. better-sqlite3 waits synchronously, so a gate keeps this short. Default 5000
   * (migrating always allows 5000).
   */
  busyTimeoutMs?: number;
  /**
   * Give keys with digest-derived ids random ones (`random-ids.ts`). Only the gate that holds the
   * database and `db migrate` do: a CLI command or a dry run must not rename keys under a running gate.
   */
  randomizeIds?: boolean;
}

const DEFAULT_BUSY_TIMEOUT_MS = 5000;

const SQLITE_HEADER = Buffer.from('SQLite format 3\0', 'latin1');
/** Tables every tokengate database has had since its first migration. */
const OUR_TABLES = ['__drizzle_migrations', 'api_keys'];

/** Migrations recorded as applied (none before the first migration creates drizzle's table). */
function appliedMigrations(sqlite: Database.Database): number {
  const table = sqlite.prepare("select 1 from sqlite_master where type = 'table' and name = '__drizzle_migrations'").get();
  return table ? (sqlite.prepare('select count(*) as n from __drizzle_migrations').get() as { n: number }).n : 0;
}

/**
 * Opens the database at `path` and applies pending migrations, logging how many when there were
 * any. Only a file that does not exist yet is created (mode 0600); one that exists must be a
 * tokengate database: an empty file (a failed copy) or anyone else's database is refused, never
 * initialised over. WAL with synchronous=NORMAL: a committed transaction survives the process being
 * killed.
 */
export function openSqlite(path: string, options: SqliteOptions = {}): OpenedSqlite {
  const file = resolve(path);
  checkSqliteDirectory(dirname(file));
  const created = createIfMissing(file);
  if (!created) checkExisting(file, options.logger);
  let sqlite: Database.Database | undefined;
  try {
    sqlite = new Database(file);
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('synchronous = NORMAL');
    sqlite.pragma(`busy_timeout = ${DEFAULT_BUSY_TIMEOUT_MS}`);
    sqlite.pragma('foreign_keys = ON');
    const db = drizzle(sqlite, { schema });
    const before = appliedMigrations(sqlite);
    migrate(db, { migrationsFolder: migrationsFolder('sqlite') });
    const after = appliedMigrations(sqlite);
    const applied = after - before;
    if (applied > 0) options.logger?.info({ backend: 'sqlite', path: file, applied }, 'database migrations applied');
    if (options.randomizeIds) randomizeDerivedIdsSqlite(sqlite, options.logger);
    sqlite.pragma(`busy_timeout = ${options.busyTimeoutMs ?? DEFAULT_BUSY_TIMEOUT_MS}`);
    return { sqlite, db, path: file, migrated: { applied, schema: schemaTag('sqlite', after) } };
  } catch (error) {
    sqlite?.close();
    // A file this call created and could not set up would be refused as empty next time.
    if (created) for (const suffix of ['', '-wal', '-shm']) rmSync(`${file}${suffix}`, { force: true });
    if (String((error as { code?: unknown }).code).startsWith('SQLITE_READONLY')) throw readOnly(file, error);
    throw driverUnusable(error) ?? new ConfigError(`cannot open SQLite database ${file}: ${(error as Error).message}`, { cause: error });
  }
}

/** Creates the database's directory if needed; SQLite writes its -wal and -shm files there, so it must be writable. */
export function checkSqliteDirectory(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const readOnlyFs = code === 'EROFS' ? ', a read-only file system' : '';
    throw new ConfigError(
      `SQLite data directory ${dir} is not writable (${code ?? String(error)}${readOnlyFs}): SQLite keeps its -wal and -shm files next to the database; set DATABASE_PATH to a writable location`,
      { cause: error },
    );
  }
}

/** Creates `file` with mode 0600 whatever the umask (SQLite gives its -wal and -shm files the same mode), unless it exists; true when it was created. */
function createIfMissing(file: string): boolean {
  let fd: number;
  try {
    fd = openSync(file, 'wx', PRIVATE_FILE_MODE);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw new ConfigError(`cannot create the SQLite database file ${file}: ${(error as Error).message}`, { cause: error });
  }
  try {
    fchmodSync(fd, PRIVATE_FILE_MODE);
  } finally {
    closeSync(fd);
  }
  return true;
}

/** Refuses an existing file that is empty, not SQLite, someone else's database, or read-only; reads it only. */
function checkExisting(file: string, logger: Logger | undefined): void {
  const stat = statSync(file);
  if (!stat.isFile()) throw new ConfigError(`the SQLite database path ${file} is not a file`);
  if (stat.size === 0) {
    throw new ConfigError(`the SQLite database file ${file} is empty (0 bytes), perhaps a failed copy: restore it from a backup, or delete it to start a new database`);
  }
  if (!hasSqliteHeader(file)) throw new ConfigError(`${file} is not a SQLite database: set DATABASE_PATH to tokengate's database file, or to a path that does not exist yet`);
  try {
    accessSync(file, constants.W_OK);
  } catch (error) {
    throw readOnly(file, error);
  }
  const missing = missingTables(file);
  if (missing.length > 0) {
    throw new ConfigError(`${file} is a SQLite database but not tokengate's (no ${missing.join(', ')} table): set DATABASE_PATH to tokengate's database file, or to a path that does not exist yet`);
  }
  if ((stat.mode & 0o077) !== 0) {
    logger?.warn({ path: file, mode: (stat.mode & 0o777).toString(8) }, 'the SQLite database file is readable by other users: it holds key digests and usage; chmod 600 it (and its -wal and -shm files)');
  }
}

function hasSqliteHeader(file: string): boolean {
  const header = Buffer.alloc(SQLITE_HEADER.length);
  const fd = openSync(file, 'r');
  try {
    return readSync(fd, header, 0, header.length, 0) === header.length && header.equals(SQLITE_HEADER);
  } finally {
    closeSync(fd);
  }
}

/** Which of tokengate's tables `file` lacks, read on a read-only connection that changes nothing. */
function missingTables(file: string): string[] {
  let sqlite: Database.Database | undefined;
  try {
    sqlite = new Database(file, { readonly: true, fileMustExist: true });
    const tables = new Set((sqlite.prepare("select name from sqlite_master where type = 'table'").all() as { name: string }[]).map((row) => row.name));
    return OUR_TABLES.filter((table) => !tables.has(table));
  } catch (error) {
    throw driverUnusable(error) ?? new ConfigError(`${file} cannot be read as a SQLite database: ${(error as Error).message}`, { cause: error });
  } finally {
    sqlite?.close();
  }
}

/**
 * better-sqlite3 loads its native module when the first database is opened. Without one (its
 * install script was blocked or skipped) it lists every path it tried; built for another Node.js,
 * the module fails to load. Either way the remedy is the same one line.
 */
function driverUnusable(error: unknown): ConfigError | undefined {
  const message = error instanceof Error ? error.message : String(error);
  if (message.startsWith('Could not locate the bindings file')) {
    return new ConfigError(
      'better-sqlite3, the embedded SQLite driver, has no native module: its install script did not run (npm and pnpm skip the scripts of packages not allowed to run them). Run `npm rebuild better-sqlite3` (where npm blocks it, first `npm approve-scripts better-sqlite3`; with pnpm, `pnpm approve-builds` then `pnpm rebuild better-sqlite3`), or set DATABASE_URL to use PostgreSQL',
      { cause: error },
    );
  }
  if ((error as { code?: unknown }).code === 'ERR_DLOPEN_FAILED') {
    return new ConfigError(`better-sqlite3's native module does not load on Node.js ${process.version} (${message.split('\n')[0]}): run \`npm rebuild better-sqlite3\` to build it for this Node.js`, { cause: error });
  }
  return undefined;
}

function readOnly(file: string, error: unknown): ConfigError {
  const code = (error as { code?: unknown }).code;
  return new ConfigError(
    `the SQLite database file ${file} is read-only${typeof code === 'string' ? ` (${code})` : ''}: the gate writes keys and usage to it; make it writable by the user tokengate runs as`,
    { cause: error },
  );
}
