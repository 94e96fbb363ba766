// What the Drizzle schemas say about their tables as a whole: which a backup holds, with their columns and primary keys, and which rows belong to a key.
import { getTableColumns, getTableName, is, Table, type Column } from 'drizzle-orm';
import { getTableConfig as pgTableConfig, type PgColumn, type PgTable } from 'drizzle-orm/pg-core';
import { getTableConfig as sqliteTableConfig, type SQLiteColumn, type SQLiteTable } from 'drizzle-orm/sqlite-core';
import * as pgSchema from './schema/postgres.js';
import * as sqliteSchema from './schema/sqlite.js';

/**
 * The tables whose rows no backup carries: `reservations` belong to requests in flight and mean
 * nothing once those are gone; `health_probes` holds the probe's own row. Every other table is backed up.
 */
const NOT_BACKED_UP = ['reservations', 'health_probes'] as const;

type NameOf<T> = T extends Table ? T['_']['name'] : never;

/** The tables a backup holds; both dialects have them, with the same columns. */
export type TableName = Exclude<NameOf<(typeof sqliteSchema)[keyof typeof sqliteSchema]>, (typeof NOT_BACKED_UP)[number]>;

export function isBackedUp(name: string): boolean {
  return !(NOT_BACKED_UP as readonly string[]).includes(name);
}

/** A backed-up table of one dialect, with that dialect's columns. */
export interface TableShape<T extends Table = Table, C extends Column = Column> {
  table: T;
  name: TableName;
  /** Its columns by database name (the names a backup row uses), in the order the schema declares them. */
  columns: Record<string, C>;
  /** The columns of its primary key, which also order a dump. */
  primaryKey: C[];
}

export type SqliteShape = TableShape<SQLiteTable, SQLiteColumn>;
export type PostgresShape = TableShape<PgTable, PgColumn>;

function tablesOf<T extends Table>(schema: object): T[] {
  return Object.values(schema).filter((value): value is T => is(value, Table));
}

/** Sorts keys first (every other row a backup holds belongs to a key, which a restore checks as it reads), the rest by name. */
const order = (table: Table): string => (getTableName(table) === 'api_keys' ? '' : getTableName(table));

/** `compositeKey`: the columns of the table's composite primary key, if it has one (the dialect's getTableConfig knows). */
function backedUp<T extends Table, C extends Column>(schema: object, compositeKey: (table: T) => C[] | undefined): TableShape<T, C>[] {
  return tablesOf<T>(schema)
    .filter((table) => isBackedUp(getTableName(table)))
    .sort((a, b) => order(a).localeCompare(order(b)))
    .map((table) => {
      const columns = Object.values(getTableColumns(table)) as C[];
      return {
        table,
        name: getTableName(table) as TableName,
        columns: Object.fromEntries(columns.map((column) => [column.name, column])),
        primaryKey: compositeKey(table) ?? columns.filter((column) => column.primary),
      };
    });
}

/** The tables a backup holds in each dialect, in the order they are written and restored. */
export const BACKED_UP = {
  sqlite: backedUp<SQLiteTable, SQLiteColumn>(sqliteSchema, (table) => sqliteTableConfig(table).primaryKeys[0]?.columns),
  postgres: backedUp<PgTable, PgColumn>(pgSchema, (table) => pgTableConfig(table).primaryKeys[0]?.columns),
};

/** The names of the tables a backup holds, keys first. */
export const TABLE_NAMES: TableName[] = BACKED_UP.sqlite.map((shape) => shape.name);

/**
 * The tables whose rows belong to a key, named by its id in a `key_id` column. The column, not a
 * foreign key, decides: `usage_records` has none (a record outlives its key), yet its rows name one.
 */
function keyOwned(schema: object): string[] {
  return tablesOf(schema)
    .filter((table) => Object.values(getTableColumns(table)).some((column) => column.name === 'key_id'))
    .map((table) => getTableName(table));
}

export const KEY_OWNED = { sqlite: keyOwned(sqliteSchema), postgres: keyOwned(pgSchema) };

/** A row by database column names (as a backup holds it) as the values Drizzle takes, by property name. */
export function valuesOf(table: Table, row: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(getTableColumns(table)).map(([property, column]) => [property, row[column.name]]));
}

/** The reverse of valuesOf: values by property name as a row by database column names; other properties are left out. */
export function rowOf(table: Table, values: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(getTableColumns(table)).map(([property, column]) => [column.name, (values as Record<string, unknown>)[property]]));
}
