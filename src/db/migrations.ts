// Where the drizzle-kit migrations of each dialect live.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../package-root.js';

export function migrationsFolder(dialect: 'sqlite' | 'postgres'): string {
  return join(packageRoot(), 'drizzle', dialect);
}

/**
 * The tag of the latest of `applied` migrations (`0000_init`, …). Both dialects' migrations are
 * generated from one logical schema, so the same tag means the same tables in either.
 */
export function schemaTag(dialect: 'sqlite' | 'postgres', applied: number): string {
  const journal = JSON.parse(readFileSync(join(migrationsFolder(dialect), 'meta', '_journal.json'), 'utf8')) as { entries: { tag: string }[] };
  return applied === 0 ? 'none' : (journal.entries[applied - 1]?.tag ?? `unknown (${applied} migrations applied)`);
}
