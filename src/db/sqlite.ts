// Opens the embedded SQLite database: creates its directory, checks it is writable, sets WAL, migrates.
import { accessSync, constants, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { drizzle, type BetterSQLite3Database } from 'drizzle-orm/better-sqlite3';
import { migrate } from 'drizzle-orm/better-sqlite3/migrator';
import { ConfigError } from '../errors.js';
import * as schema from './schema/sqlite.js';
import { migrationsFolder } from './migrations.js';

export type SqliteDb = BetterSQLite3Database<typeof schema>;

export interface OpenedSqlite {
  sqlite: Database.Database;
  db: SqliteDb;
  path: string;
}

/**
 * Opens (creating if needed) the database at `path` and applies pending migrations.
 * WAL with synchronous=NORMAL: a committed transaction survives the process being killed.
 */
export function openSqlite(path: string): OpenedSqlite {
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
    migrate(db, { migrationsFolder: migrationsFolder('sqlite') });
    return { sqlite, db, path: file };
  } catch (error) {
    sqlite?.close();
    throw new ConfigError(`cannot open SQLite database ${file}: ${(error as Error).message}`, { cause: error });
  }
}
