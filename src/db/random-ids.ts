// Gives keys whose id was derived from their digest (imported before ids were random) a random id, keeping all they own.
import type Database from 'better-sqlite3';
import { getTableColumns } from 'drizzle-orm';
import type postgres from 'postgres';
import { generateKeyId } from '../keys/secret.js';
import type { Logger } from '../types.js';
import * as pgSchema from './schema/postgres.js';
import * as sqliteSchema from './schema/sqlite.js';
import { KEY_OWNED } from './tables.js';

/** The digest-derived form: `key_` and the first 16 hex digits of the key's SHA-256. */
const DERIVED = `select id from api_keys where id = 'key_' || substr(key_hash, 1, 16)`;

/**
 * The digest prefix an id of the derived form names, for usage journaled under an old id before the
 * rename: the key is still found by it. Undefined for any other id.
 */
export function derivedDigestPrefix(keyId: string): string | undefined {
  return /^key_[0-9a-f]{16}$/.test(keyId) ? keyId.slice(4) : undefined;
}

/**
 * The statements that move every key listed in `moved(old_id, new_id)` at once: each row is copied
 * under its new id (its digest set aside first, since it is unique), what it owns is moved over in
 * one pass per table, and the old rows go; no foreign key ever points nowhere.
 */
function moveStatements(columns: string[], owned: readonly string[]): string[] {
  const rest = columns.filter((column) => column !== 'id' && column !== 'key_hash').join(', ');
  return [
    `update api_keys set key_hash = 'moving:' || key_hash where id in (select old_id from moved)`,
    `insert into api_keys (id, key_hash, ${rest}) select moved.new_id, substr(api_keys.key_hash, 8), ${rest.replace(/(\w+)/g, 'api_keys.$1')} from api_keys join moved on moved.old_id = api_keys.id`,
    ...owned.map((table) => `update ${table} set key_id = (select new_id from moved where old_id = ${table}.key_id) where key_id in (select old_id from moved)`),
    `delete from api_keys where id in (select old_id from moved)`,
  ];
}

const columnNames = (table: Parameters<typeof getTableColumns>[0]): string[] => Object.values(getTableColumns(table)).map((column) => column.name);

/** Whether `id` is the one an earlier version derived from the digest `keyHash`. */
export function isDerivedId(id: string, keyHash: string): boolean {
  return id === `key_${keyHash.slice(0, 16)}`;
}

/** The one line that says derived ids were replaced; nothing when none were. */
export function logRenamed(logger: Logger | undefined, backend: string, renamed: number): void {
  if (renamed > 0) logger?.info({ backend, renamed }, `renamed ${renamed} key id${renamed === 1 ? '' : 's'} derived from key digests to random ones; usage and totals kept`);
}

/** SQLite, in one transaction; returns how many keys were renamed. */
export function randomizeDerivedIdsSqlite(sqlite: Database.Database, logger?: Logger): number {
  const derived = sqlite.prepare(DERIVED).pluck().all() as string[];
  if (derived.length === 0) return 0;
  sqlite.transaction(() => {
    sqlite.exec('create temp table moved (old_id text primary key, new_id text not null)');
    const add = sqlite.prepare('insert into moved (old_id, new_id) values (?, ?)');
    for (const oldId of derived) add.run(oldId, generateKeyId());
    for (const text of moveStatements(columnNames(sqliteSchema.apiKeys), KEY_OWNED.sqlite)) sqlite.exec(text);
    sqlite.exec('drop table moved');
  })();
  logRenamed(logger, 'sqlite', derived.length);
  return derived.length;
}

/** PostgreSQL, in one transaction (run under the migration lock); returns how many keys were renamed. */
export async function randomizeDerivedIdsPostgres(sql: postgres.Sql, logger?: Logger): Promise<number> {
  const renamed = await sql.begin(async (tx) => {
    const derived = (await tx.unsafe<{ id: string }[]>(DERIVED)).map((row) => row.id);
    if (derived.length === 0) return 0;
    await tx.unsafe('create temp table moved (old_id text primary key, new_id text not null) on commit drop');
    await tx`insert into moved ${tx(derived.map((oldId) => ({ old_id: oldId, new_id: generateKeyId() })))}`;
    for (const text of moveStatements(columnNames(pgSchema.apiKeys), KEY_OWNED.postgres)) await tx.unsafe(text);
    return derived.length;
  });
  logRenamed(logger, 'postgres', renamed);
  return renamed;
}
