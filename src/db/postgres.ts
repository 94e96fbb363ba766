// Connects to PostgreSQL with a postgres.js pool, and migrates under an advisory lock.
import type Postgres from 'postgres';
import { drizzle, type PostgresJsDatabase } from 'drizzle-orm/postgres-js';
import { migrate } from 'drizzle-orm/postgres-js/migrator';
import { randomizeDerivedIdsPostgres } from './random-ids.js';
import * as schema from './schema/postgres.js';
import { migrationsFolder, schemaTag } from './migrations.js';
import { checkDriver, postgres } from './postgres-driver.js';
import type { Logger } from '../types.js';

export type PostgresDb = PostgresJsDatabase<typeof schema>;

export interface PoolSettings {
  /** Connections this instance opens at most. */
  poolSize: number;
  /** Seconds to wait for a new connection. */
  connectTimeoutSeconds: number;
  /** Milliseconds a statement may run before the server cancels it. */
  statementTimeoutMs: number;
}

export const DEFAULT_POOL: PoolSettings = { poolSize: 10, connectTimeoutSeconds: 5, statementTimeoutMs: 5000 };

export interface OpenedPostgres {
  sql: Postgres.Sql;
  db: PostgresDb;
}

export function connectPostgres(url: string, pool: PoolSettings = DEFAULT_POOL): OpenedPostgres {
  checkDriver();
  const sql = postgres(url, {
    max: pool.poolSize,
    connect_timeout: pool.connectTimeoutSeconds,
    idle_timeout: 60,
    onnotice: () => undefined,
    connection: { statement_timeout: pool.statementTimeoutMs, application_name: 'tokengate' },
  });
  return { sql, db: drizzle(sql, { schema }) };
}

// Any fixed number will do, as long as every tokengate instance takes the same one.
const MIGRATION_LOCK = 7_370_001;
// How long an instance waits for another one's migration before it gives up (and retries, if it is
// reconnecting after an outage): a session stuck holding the lock must not hang it for ever.
const MIGRATION_LOCK_TIMEOUT_MS = 60_000;

/** What migrating did: how many migrations it applied, and the tag of the latest one now applied. */
export interface MigrationResult {
  applied: number;
  schema: string;
}

/** Migrations recorded as applied (none before the first migration creates drizzle's table). */
async function appliedMigrations(sql: Postgres.Sql): Promise<number> {
  const [table] = await sql`select to_regclass('drizzle.__drizzle_migrations') as name`;
  if (!table?.name) return 0;
  const [row] = await sql`select count(*)::int as n from drizzle.__drizzle_migrations`;
  return (row?.n as number | undefined) ?? 0;
}

/**
 * Applies pending migrations on one dedicated connection holding a session advisory lock, so
 * instances starting together migrate one after the other and the later ones find nothing to do.
 * Logs how many it applied, when there were any.
 */
export async function migratePostgres(url: string, connectTimeoutSeconds = DEFAULT_POOL.connectTimeoutSeconds, logger?: Logger, { randomizeIds = false } = {}): Promise<MigrationResult> {
  checkDriver();
  const sql = postgres(url, {
    max: 1,
    connect_timeout: connectTimeoutSeconds,
    onnotice: () => undefined,
    connection: { lock_timeout: MIGRATION_LOCK_TIMEOUT_MS },
  });
  try {
    await sql`select pg_advisory_lock(${MIGRATION_LOCK})`;
    const before = await appliedMigrations(sql);
    await migrate(drizzle(sql), { migrationsFolder: migrationsFolder('postgres') });
    const after = await appliedMigrations(sql);
    // As in SQLite (SqliteOptions.randomizeIds): only a starting gate and `db migrate` rename keys.
    if (randomizeIds) await randomizeDerivedIdsPostgres(sql, logger);
    await sql`select pg_advisory_unlock(${MIGRATION_LOCK})`;
    const applied = after - before;
    if (applied > 0) logger?.info({ backend: 'postgres', applied }, 'database migrations applied');
    return { applied, schema: schemaTag('postgres', after) };
  } finally {
    await sql.end({ timeout: 5 });
  }
}
