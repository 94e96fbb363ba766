// The PostgreSQL schema: the same logical schema as SQLite (see sqlite.ts), plus the reservations
// that instances share. Times are bigint milliseconds since the epoch, as in SQLite.
import { getTableColumns, sql } from 'drizzle-orm';
import { pgTable, text, bigint, boolean, primaryKey, index } from 'drizzle-orm/pg-core';

const ms = (name: string) => bigint(name, { mode: 'number' });

export const apiKeys = pgTable('api_keys', {
  id: text('id').primaryKey(),
  /** SHA-256 of the plaintext key, lower-case hex. The plaintext is never stored. */
  keyHash: text('key_hash').notNull().unique(),
  /** A few leading characters of the key, for display (`tg-AbC...`). */
  keyPrefix: text('key_prefix').notNull(),
  name: text('name').notNull(),
  model: text('model'),
  tokenLimit: bigint('token_limit_per_5h', { mode: 'number' }).notNull(),
  expiresAt: ms('expiry_date').notNull(),
  createdAt: ms('created_at').notNull(),
  lastUsedAt: ms('last_used'),
  totalLifetimeTokens: bigint('total_lifetime_tokens', { mode: 'number' }).notNull().default(0),
  totalRequests: bigint('total_requests', { mode: 'number' }).notNull().default(0),
  /** What each kind of token is charged (`cache_read=0.1`), over the gate's defaults; null: the defaults. */
  tokenWeights: text('token_weights'),
  /** The key's limits as JSON (`[{"name":"7d","window":"7d","tokens":1500}]`); null: one limit, `5h`, of token_limit_per_5h. */
  limits: text('limits'),
},
  // Few keys have limits of their own: pruning finds them without reading every key.
  (table) => [index('api_keys_limits').on(table.id).where(sql`${table.limits} is not null`)],
);

// A key as the stores read it (a KeyRecord): every column but the digest.
const { keyHash: _digest, ...keyColumns } = getTableColumns(apiKeys);
export { keyColumns };

export const usageBuckets = pgTable(
  'usage_buckets',
  {
    keyId: text('key_id')
      .notNull()
      .references(() => apiKeys.id, { onDelete: 'cascade' }),
    /** The limit the usage counts against (a key has one bucket per limit for each usage). */
    limitName: text('limit_name').notNull().default('5h'),
    /** Start of the bucket: floor(recorded at / bucket size) * bucket size, the size fitting the limit's window. */
    bucketStart: ms('bucket_start').notNull(),
    tokens: bigint('tokens', { mode: 'number' }).notNull(),
  },
  // bucket_start alone: pruning finds the buckets that left every window.
  (table) => [primaryKey({ columns: [table.keyId, table.limitName, table.bucketStart] }), index('usage_buckets_bucket_start').on(table.bucketStart)],
);

/** One row per applied usage record: replaying a record whose id is here changes nothing. */
export const usageRecords = pgTable(
  'usage_records',
  {
    id: text('id').primaryKey(),
    keyId: text('key_id').notNull(),
    tokens: bigint('tokens', { mode: 'number' }).notNull(),
    recordedAt: ms('recorded_at').notNull(),
  },
  // Pruning finds the records older than the retention.
  (table) => [index('usage_records_recorded_at').on(table.recordedAt)],
);

/**
 * Tokens held by requests in flight on any instance. A row past `expires_at` (its instance
 * crashed, or the request outlived the reservation TTL) no longer counts.
 */
export const reservations = pgTable(
  'reservations',
  {
    id: text('id').primaryKey(),
    keyId: text('key_id')
      .notNull()
      .references(() => apiKeys.id, { onDelete: 'cascade' }),
    /** The limit the tokens are held against; a request admitted on several limits has a row for each. */
    limitName: text('limit_name').notNull().default('5h'),
    tokens: bigint('tokens', { mode: 'number' }).notNull(),
    partial: boolean('partial').notNull(),
    expiresAt: ms('expires_at').notNull(),
  },
  (table) => [index('reservations_key_id').on(table.keyId)],
);

/** One row the health probe writes, so that a database that reads but cannot write is noticed. */
export const healthProbes = pgTable('health_probes', {
  id: text('id').primaryKey(),
  at: ms('at').notNull(),
});
