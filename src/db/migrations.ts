// Where the drizzle-kit migrations of each dialect live.
import { join } from 'node:path';
import { packageRoot } from '../package-root.js';

export function migrationsFolder(dialect: 'sqlite' | 'postgres'): string {
  return join(packageRoot(), 'drizzle', dialect);
}
