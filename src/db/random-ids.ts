// Gives keys whose id was derived from their digest (imported before ids were random) a random id, keeping all they own.
import type Database from 'better-sqlite3';
import { getTableColumns } from 'drizzle-orm';
import type postgres from 'postgres';
import { generateKeyId } from '../keys/secret.js';
import type { Logger } from '../ops/logger.js';
import * as pgSchema from './schema/postgres.js';
import * as sqliteSchema from './schema/sqlite.js';

/** The digest-derived form: `key_` and the first 16 hex digits of the key's SHA-256. */
const DERIVED = `select id from api_keys where id = 'key_' || substr(key_hash, 1, 16)`;

/** Tables whose rows belong to a key, by `key_id`. */
const OWNED = { sqlite: ['usage_buckets', 'usage_records'], postgres: ['usage_buckets', 'usage_records', 'reservations'] } as const;

/** A statement, and which ids fill its placeholders, in order. */
interface Move {
  text: string;
  ids: ('old' | 'new')[];
}

/**
 * The statements that move one key to a new id, in order. The row is copied under the new id (its
 * digest set aside first, since it is unique), its rows are moved over, and the old row goes: no
 * foreign key ever points nowhere, so nothing needs deferring. `placeholder(n)` is the dialect's n-th parameter.
 */
function moveStatements(columns: string[], owned: readonly string[], placeholder: (n: number) => string): Move[] {
  const rest = columns.filter((column) => column !== 'id' && column !== 'key_hash').join(', ');
  const [p1, p2] = [placeholder(1), placeholder(2)];
  return [
    { text: `update api_keys set key_hash = 'moving:' || key_hash where id = ${p1}`, ids: ['old'] },
    { text: `insert into api_keys (id, key_hash, ${rest}) select ${p1}, substr(key_hash, 8), ${rest} from api_keys where id = ${p2}`, ids: ['new', 'old'] },
    ...owned.map((table): Move => ({ text: `update ${table} set key_id = ${p1} where key_id = ${p2}`, ids: ['new', 'old'] })),
    { text: `delete from api_keys where id = ${p1}`, ids: ['old'] },
  ];
}

const columnNames = (table: Parameters<typeof getTableColumns>[0]): string[] => Object.values(getTableColumns(table)).map((column) => column.name);

function logRenamed(logger: Logger | undefined, backend: string, renamed: number): void {
  if (renamed > 0) logger?.info({ backend, renamed }, `renamed ${renamed} key id${renamed === 1 ? '' : 's'} derived from key digests to random ones; usage and totals kept`);
}

/** SQLite, in one transaction; returns how many keys were renamed. */
export function randomizeDerivedIdsSqlite(sqlite: Database.Database, logger?: Logger): number {
  const derived = sqlite.prepare(DERIVED).pluck().all() as string[];
  if (derived.length === 0) return 0;
  const moves = moveStatements(columnNames(sqliteSchema.apiKeys), OWNED.sqlite, () => '?').map((move) => ({ ...move, statement: sqlite.prepare(move.text) }));
  sqlite.transaction(() => {
    for (const oldId of derived) {
      const ids = { old: oldId, new: generateKeyId() };
      for (const move of moves) move.statement.run(...move.ids.map((which) => ids[which]));
    }
  })();
  logRenamed(logger, 'sqlite', derived.length);
  return derived.length;
}

/** PostgreSQL, in one transaction (run under the migration lock); returns how many keys were renamed. */
export async function randomizeDerivedIdsPostgres(sql: postgres.Sql, logger?: Logger): Promise<number> {
  const renamed = await sql.begin(async (tx) => {
    const derived = (await tx.unsafe<{ id: string }[]>(`${DERIVED} for update`)).map((row) => row.id);
    const moves = moveStatements(columnNames(pgSchema.apiKeys), OWNED.postgres, (n) => `$${n}`);
    for (const oldId of derived) {
      const ids = { old: oldId, new: generateKeyId() };
      for (const move of moves) await tx.unsafe(move.text, move.ids.map((which) => ids[which]));
    }
    return derived.length;
  });
  logRenamed(logger, 'postgres', renamed);
  return renamed;
}
