// Backups, restores and key renames follow the Drizzle schema of each dialect: a table or column added there is covered without another list to update.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { getTableColumns, getTableName, is, Table } from 'drizzle-orm';
import { getTableConfig as pgTableConfig, type PgTable } from 'drizzle-orm/pg-core';
import { getTableConfig as sqliteTableConfig, type SQLiteTable } from 'drizzle-orm/sqlite-core';
import { beforeAll, describe, expect, it } from 'vitest';
import * as pgSchema from '../../src/db/schema/postgres.js';
import * as sqliteSchema from '../../src/db/schema/sqlite.js';
import { KEY_OWNED } from '../../src/db/tables.js';
import { writeBackup, type BackupManifest } from '../../src/ops/backup.js';
import { rowProblem, type TableRow } from '../../src/storage/admin.js';
import { createStorage, openAdminStore, type StorageConfig } from '../../src/storage/create.js';
import { quietLogger, tempDir } from '../helpers/gate.js';
import { freshDatabase } from '../helpers/postgres.js';

/** What no backup carries, on purpose: requests in flight, and the health probe's own row. */
const NOT_BACKED_UP = ['reservations', 'health_probes'];

const tablesOf = (schema: object): Table[] => Object.values(schema).filter((value): value is Table => is(value, Table));

/** The tables a backup must hold, by name, with their columns' names in the order the schema declares them. */
function backedUpColumns(schema: object): Record<string, string[]> {
  return Object.fromEntries(
    tablesOf(schema)
      .filter((table) => !NOT_BACKED_UP.includes(getTableName(table)))
      .map((table) => [getTableName(table), Object.values(getTableColumns(table)).map((column) => column.name)]),
  );
}

/** Column name, type and nullability of every backed-up table: what a backup from one dialect must find in the other. */
function layout(schema: object): string[] {
  return tablesOf(schema)
    .filter((table) => !NOT_BACKED_UP.includes(getTableName(table)))
    .flatMap((table) => Object.values(getTableColumns(table)).map((column) => `${getTableName(table)}.${column.name} ${column.dataType}${column.notNull ? ' not null' : ''}`))
    .sort();
}

interface Dialect {
  name: keyof typeof KEY_OWNED;
  schema: object;
  /** The tables `table` refers to by foreign key. */
  references: (table: Table) => string[];
  config: () => Promise<StorageConfig>;
}

const dialects: Dialect[] = [
  {
    name: 'sqlite',
    schema: sqliteSchema,
    references: (table) => sqliteTableConfig(table as SQLiteTable).foreignKeys.map((key) => getTableName(key.reference().foreignTable)),
    config: async () => ({ databasePath: join(tempDir(), 'tokengate.db') }),
  },
  {
    name: 'postgres',
    schema: pgSchema,
    references: (table) => pgTableConfig(table as PgTable).foreignKeys.map((key) => getTableName(key.reference().foreignTable)),
    config: async () => ({ databaseUrl: await freshDatabase() }),
  },
];

/** A store with a key that was used (so every backed-up table has a row), backed up; the backup's rows and manifest. */
async function seededBackup(config: StorageConfig): Promise<{ entries: TableRow[]; manifest: BackupManifest }> {
  const storage = await createStorage({ ...config, fallback: false, lock: false, prune: false, logger: quietLogger() });
  try {
    const { record } = await storage.createKey({ name: 'alice', tokenLimit: 10_000, expiresAt: Date.now() + 86_400_000 });
    const admission = await storage.admit({ keyId: record.id, requestId: 'r-1', estimate: 10, tokenLimit: 10_000, now: Date.now(), windowMs: 5 * 3_600_000 });
    if (!admission.admitted) throw new Error('not admitted');
    await storage.settle(admission.reservation, { id: 'rec-1', keyId: record.id, tokens: 42, at: Date.now() });
  } finally {
    await storage.close();
  }
  const store = await openAdminStore({ ...config, logger: quietLogger() });
  try {
    const { path } = await writeBackup(store, join(tempDir(), 'backups'));
    const lines = gunzipSync(readFileSync(path)).toString('utf8').trimEnd().split('\n');
    const { manifest } = JSON.parse(lines.at(-1)!) as { manifest: BackupManifest };
    return { entries: lines.slice(1, -1).map((line) => JSON.parse(line) as TableRow), manifest };
  } finally {
    await store.close();
  }
}

describe.each(dialects)('$name', ({ name, schema, references, config }) => {
  let backup: { entries: TableRow[]; manifest: BackupManifest };
  beforeAll(async () => {
    backup = await seededBackup(await config());
  });

  it('a backup holds every table of the schema but reservations and health probes, keys first, each row with exactly its columns in schema order', () => {
    const { entries, manifest } = backup;
    const expected = backedUpColumns(schema);
    expect(Object.keys(manifest.tables).sort()).toEqual(Object.keys(expected).sort());
    expect(Object.keys(manifest.tables)[0]).toBe('api_keys');
    expect(entries[0]?.table).toBe('api_keys');
    expect(new Set(entries.map((entry) => entry.table))).toEqual(new Set(Object.keys(expected)));
    for (const { table, row } of entries) expect(Object.keys(row), table).toEqual(expected[table]);
  });

  it('a restore takes exactly the columns of the schema: a row without any one of them, or with one more, is refused', () => {
    for (const { table, row } of backup.entries) {
      expect(rowProblem(table, row)).toBeUndefined();
      for (const column of backedUpColumns(schema)[table]!) {
        const { [column]: _left, ...without } = row;
        expect(rowProblem(table, without)).toBe(`column ${column} is missing`);
      }
      expect(rowProblem(table, { ...row, extra: 1 })).toBe('unknown column "extra"');
    }
  });

  it('renaming a key moves the rows of every table that refers to it, with or without a foreign key', () => {
    const referring = tablesOf(schema).filter((table) => references(table).includes('api_keys'));
    const owned = KEY_OWNED[name];
    for (const table of referring) expect(owned).toContain(getTableName(table));
    expect(owned).toContain('usage_records'); // names its key in key_id, with no foreign key
  });
});

it('both dialects back up the same columns with the same types, so a backup of either restores into either', () => {
  expect(layout(pgSchema)).toEqual(layout(sqliteSchema));
});
