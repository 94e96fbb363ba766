// Opens the embedded SQLite database: creates its directory, checks it is writable, sets WAL, migrates.
import { accessSync, constants, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { drizzle, type BetterSQLite3Database } from 'drizzle-orm/better-sqlite3';
import { migrate } from 'drizzle-orm/better-sqlite3/migrator';
import { ConfigError } from '../errors.js';
import type { Logger } from '../ops/logger.js';
import * as schema from './schema/sqlite.js';
import { migrationsFolder } from './migrations.js';

export type SqliteDb = BetterSQLite3Database<typeof schema>;

export interface OpenedSqlite {
  sqlite: Database.Database;
  db: SqliteDb;
  path: string;
}

/** Migrations recorded as applied (none before the first migration creates drizzle's table). */
function appliedMigrations(sqlite: Database.Database): number {
  const table = sqlite.prepare("select 1 from sqlite_master where type = 'table' and name = '__drizzle_migrations'").get();
  return table ? (sqlite.prepare('select count(*) as n from __drizzle_migrations').get() as { n: number }).n : 0;
}

/**
 * Opens (creating if needed) the database at `path` and applies pending migrations, logging how
 * many when there were any. WAL with synchronous=NORMAL: a committed transaction survives the
 * process being killed.
 */
export function openSqlite(path: string, logger?: Logger): OpenedSqlite {
  const file = resolve(path);
  const dir = dirname(file);
  try {
    mkdirSync(dir, { recursive: true });
    accessSync(dir, constants.W_OK);
  } catch (error) {
    throw new ConfigError(`SQLite data directory ${dir} is not writable (${(error as NodeJS.ErrnoException).code ?? error}); set DATABASE_PATH to a writable location`, { cause: error });
  }
  let sqlite: Database.Database | undefined;
  try {
    sqlite = new Database(file);
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('synchronous = NORMAL');
    sqlite.pragma('busy_timeout = 5000');
    sqlite.pragma('foreign_keys = ON');
    const db = drizzle(sqlite, { schema });
    const before = appliedMigrations(sqlite);
    migrate(db, { migrationsFolder: migrationsFolder('sqlite') });
    const applied = appliedMigrations(sqlite) - before;
    if (applied > 0) logger?.info({ backend: 'sqlite', path: file, applied }, 'database migrations applied');
    return { sqlite, db, path: file };
  } catch (error) {
    sqlite?.close();
    throw new ConfigError(`cannot open SQLite database ${file}: ${(error as Error).message}`, { cause: error });
  }
}
