// The postgres.js that tokengate connects with: the copy in dist/vendor/postgres that carries the fix in .patches/ (see .ci/build.js).
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type Postgres from 'postgres';
import driver from '#postgres';
import { ConfigError } from '../errors.js';

/** postgres.js's `postgres()`, typed by the `postgres` package the copy was made from. */
export const postgres: typeof Postgres = driver;

/** The guard the fix adds: a write that waited while its connection closed fails its queries instead of throwing. */
const GUARDED_WRITE = /function nextWrite\(fn\) \{\s+if \(!socket\) \{/;

/** Why the postgres.js whose `connection.js` is at `file` cannot be trusted with an outage, or undefined. */
export function driverProblem(file: string): string | undefined {
  let source: string;
  try {
    source = readFileSync(file, 'utf8');
  } catch (error) {
    return `cannot read ${file} (${(error as Error).message})`;
  }
  return GUARDED_WRITE.test(source) ? undefined : `${file} lacks the fix for a connection closing under a waiting write, which crashes the process during a database outage`;
}

let checked = false;

/** Refuses to connect with a driver that lost the fix (a copy replaced by hand, a broken install). Checked once per process. */
export function checkDriver(): void {
  if (checked) return;
  const problem = driverProblem(join(dirname(fileURLToPath(import.meta.resolve('#postgres'))), 'connection.js'));
  if (problem) throw new ConfigError(`the PostgreSQL driver tokengate loaded is not the one it ships: ${problem}; reinstall tokengate`);
  checked = true;
}
