// The SQLite schema: keys, per-minute usage buckets and the ids of applied usage records.
// Times are integer milliseconds since the epoch, so both dialects share one logical schema.
import { getTableColumns, sql } from 'drizzle-orm';
import { sqliteTable, text, integer, primaryKey, index } from 'drizzle-orm/sqlite-core';

export const apiKeys = sqliteTable('api_keys', {
  id: text('id').primaryKey(),
  /** SHA-256 of the plaintext key, lower-case hex. The plaintext is never stored. */
  keyHash: text('key_hash').notNull().unique(),
  /** A few leading characters of the key, for display (`tg-AbC...`). */
  keyPrefix: text('key_prefix').notNull(),
  name: text('name').notNull(),
  model: text('model'),
  tokenLimit: integer('token_limit_per_5h').notNull(),
  expiresAt: integer('expiry_date').notNull(),
  createdAt: integer('created_at').notNull(),
  lastUsedAt: integer('last_used'),
  totalLifetimeTokens: integer('total_lifetime_tokens').notNull().default(0),
  totalRequests: integer('total_requests').notNull().default(0),
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

export const usageBuckets = sqliteTable(
  'usage_buckets',
  {
    keyId: text('key_id')
      .notNull()
      .references(() => apiKeys.id, { onDelete: 'cascade' }),
    /** The limit the usage counts against (a key has one bucket per limit for each usage). */
    limitName: text('limit_name').notNull().default('5h'),
    /** Start of the bucket: floor(recorded at / bucket size) * bucket size, the size fitting the limit's window. */
    bucketStart: integer('bucket_start').notNull(),
    tokens: integer('tokens').notNull(),
  },
  // bucket_start alone: pruning finds the buckets that left every window.
  (table) => [primaryKey({ columns: [table.keyId, table.limitName, table.bucketStart] }), index('usage_buckets_bucket_start').on(table.bucketStart)],
);

/** One row per applied usage record: replaying a record whose id is here changes nothing. */
export const usageRecords = sqliteTable(
  'usage_records',
  {
    id: text('id').primaryKey(),
    keyId: text('key_id').notNull(),
    tokens: integer('tokens').notNull(),
    recordedAt: integer('recorded_at').notNull(),
  },
  // Pruning finds the records older than the retention.
  (table) => [index('usage_records_recorded_at').on(table.recordedAt)],
);

/** One row the health probe writes, so that a database that reads but cannot write is noticed. */
export const healthProbes = sqliteTable('health_probes', {
  id: text('id').primaryKey(),
  at: integer('at').notNull(),
});
