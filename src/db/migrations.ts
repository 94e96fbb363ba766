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
function columnLayout(dialect: Dialect, tag: string): string | undefined {
  const entry = journal(dialect).find((candidate) => candidate.tag === tag);
  if (!entry) return undefined;
  const file = join(migrationsFolder(dialect), 'meta', `${String(entry.idx).padStart(4, '0')}_snapshot.json`);
  const { tables } = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
  const layout = Object.values(tables)
    .filter(({ name }) => isBackedUp(name))
    .map(({ name, columns }) => `${name}(${Object.values(columns).map((c) => `${c.name} ${c.type}${c.notNull ? ' not null' : ''}`).sort().join(', ')})`)
    .sort();
  return layout.join('; ');
}

/**
 * Whether rows written under schema `from` fit a store at schema `to`: the same tag, or tags this
 * version knows whose backed-up tables have the same columns (migrations in between only added indexes, or tables
 * no backup carries).
 */
export function sameColumns(dialect: Dialect, from: string, to: string): boolean {
  if (from === to) return true;
  const layout = columnLayout(dialect, from);
  return layout !== undefined && layout === columnLayout(dialect, to);
}
