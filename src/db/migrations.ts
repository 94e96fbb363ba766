// Where the drizzle-kit migrations of each dialect live, and what their tags say about the tables.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../package-root.js';
import { isBackedUp } from './tables.js';

type Dialect = 'sqlite' | 'postgres';

interface JournalEntry {
  idx: number;
  tag: string;
}

interface Snapshot {
  tables: Record<string, { name: string; columns: Record<string, { name: string; type: string; notNull: boolean }> }>;
}

export function migrationsFolder(dialect: Dialect): string {
  return join(packageRoot(), 'drizzle', dialect);
}

function journal(dialect: Dialect): JournalEntry[] {
  return (JSON.parse(readFileSync(join(migrationsFolder(dialect), 'meta', '_journal.json'), 'utf8')) as { entries: JournalEntry[] }).entries;
}

/**
 * The tag of the latest of `applied` migrations (`0000_init`, …). Both dialects' migrations are
 * generated from one logical schema, so the same tag means the same tables in either.
 */
export function schemaTag(dialect: Dialect, applied: number): string {
  return applied === 0 ? 'none' : (journal(dialect)[applied - 1]?.tag ?? `unknown (${applied} migrations applied)`);
}

/**
 * Every backed-up table's columns (name, type, nullability) once migration `tag` is applied, from
 * drizzle-kit's snapshot of it. A migration that only adds or changes tables no backup carries
 * leaves backups compatible.
 */
function columnLayout(dialect: Dialect, tag: string): Map<string, Map<string, string>> | undefined {
  const entry = journal(dialect).find((candidate) => candidate.tag === tag);
  if (!entry) return undefined;
  const file = join(migrationsFolder(dialect), 'meta', `${String(entry.idx).padStart(4, '0')}_snapshot.json`);
  const { tables } = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
  return new Map(
    Object.values(tables)
      .filter(({ name }) => isBackedUp(name))
      .map(({ name, columns }) => [name, new Map(Object.values(columns).map((c) => [c.name, `${c.type}${c.notNull ? ' not null' : ''}`]))]),
  );
}

/**
 * Whether rows written under schema `from` fit a store at schema `to`: the same tag, or tags this
 * version knows with the same backed-up tables, whose columns are the same but for nullable ones
 * `to` added (a restore leaves them null). Migrations that only add indexes, or tables no backup
 * carries, keep backups restorable.
 */
export function sameColumns(dialect: Dialect, from: string, to: string): boolean {
  return from === to || columnsAdded(dialect, from, to) !== undefined;
}

/**
 * The nullable columns of each backed-up table that schema `to` (default: this version's latest)
 * has and `from` had not; undefined when rows of `from` do not fit `to` (see sameColumns).
 */
export function columnsAdded(dialect: Dialect, from: string, to: string = latestTag(dialect)): Map<string, Set<string>> | undefined {
  const before = columnLayout(dialect, from);
  const after = columnLayout(dialect, to);
  if (!before || !after || before.size !== after.size) return undefined;
  const added = new Map<string, Set<string>>();
  for (const [table, columns] of after) {
    const old = before.get(table);
    if (!old) return undefined;
    for (const [name, type] of old) if (columns.get(name) !== type) return undefined;
    const fresh = [...columns].filter(([name]) => !old.has(name));
    if (fresh.some(([, type]) => type.endsWith(' not null'))) return undefined;
    added.set(table, new Set(fresh.map(([name]) => name)));
  }
  return added;
}

function latestTag(dialect: Dialect): string {
  return journal(dialect).at(-1)?.tag ?? 'none';
}
