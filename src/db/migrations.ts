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
  tables: Record<string, { name: string; columns: Record<string, { name: string; type: string; notNull: boolean; default?: unknown }> }>;
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
/** A column's default as a restore fills it in: drizzle-kit writes a text default quoted (`'5h'`); other defaults are not filled. */
function textDefault(value: unknown): string | undefined {
  return typeof value === 'string' && /^'.*'$/s.test(value) ? value.slice(1, -1).replaceAll("''", "'") : undefined;
}

interface ColumnShape {
  type: string;
  default: string | undefined;
}

function columnLayout(dialect: Dialect, tag: string): Map<string, Map<string, ColumnShape>> | undefined {
  const entry = journal(dialect).find((candidate) => candidate.tag === tag);
  if (!entry) return undefined;
  const file = join(migrationsFolder(dialect), 'meta', `${String(entry.idx).padStart(4, '0')}_snapshot.json`);
  const { tables } = JSON.parse(readFileSync(file, 'utf8')) as Snapshot;
  return new Map(
    Object.values(tables)
      .filter(({ name }) => isBackedUp(name))
      .map(({ name, columns }) => [name, new Map(Object.values(columns).map((c) => [c.name, { type: `${c.type}${c.notNull ? ' not null' : ''}`, default: textDefault(c.default) }]))]),
  );
}

/**
 * Whether rows written under schema `from` fit a store at schema `to`: the same tag, or tags this
 * version knows with the same backed-up tables, whose columns are the same but for nullable ones
 * `to` added, or ones with a default (a restore fills those in). Migrations that only add indexes, or tables no backup
 * carries, keep backups restorable.
 */
export function sameColumns(dialect: Dialect, from: string, to: string): boolean {
  return from === to || columnsAdded(dialect, from, to) !== undefined;
}

/**
 * The columns of each backed-up table that schema `to` (default: this version's latest) has and
 * `from` had not, with the value a row of `from` takes in them (null, or the column's text default);
 * undefined when rows of `from` do not fit `to` (see sameColumns).
 */
export function columnsAdded(dialect: Dialect, from: string, to: string = latestTag(dialect)): Map<string, Map<string, string | null>> | undefined {
  const before = columnLayout(dialect, from);
  const after = columnLayout(dialect, to);
  if (!before || !after || before.size !== after.size) return undefined;
  const added = new Map<string, Map<string, string | null>>();
  for (const [table, columns] of after) {
    const old = before.get(table);
    if (!old) return undefined;
    for (const [name, shape] of old) if (columns.get(name)?.type !== shape.type) return undefined;
    const fresh = new Map<string, string | null>();
    for (const [name, shape] of columns) {
      if (old.has(name)) continue;
      if (shape.type.endsWith(' not null') && shape.default === undefined) return undefined;
      fresh.set(name, shape.default ?? null);
    }
    added.set(table, fresh);
  }
  return added;
}

function latestTag(dialect: Dialect): string {
  return journal(dialect).at(-1)?.tag ?? 'none';
}
