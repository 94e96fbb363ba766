// PostgreSQL storage through Drizzle on postgres.js: shared reservations, so quotas hold across instances.
import { and, asc, eq, gt, sql } from 'drizzle-orm';
import { ConflictError, NotFoundError } from '../errors.js';
import type { OpenedPostgres } from '../db/postgres.js';
import { apiKeys, reservations, usageBuckets, usageRecords } from '../db/schema/postgres.js';
import { decide, msUntilAdmissible } from '../quota/admission.js';
import { bucketStart, countsAfter } from '../quota/window.js';
import { buildKey, patchChanges } from '../keys/build.js';
import { validateCharge, validatePatch, type KeyPatch, type NewKey } from '../keys/validate.js';
import { KeyCache } from './key-cache.js';
import { errorCode, withRetry } from './retry.js';
import type { SnapshotKey } from './snapshot.js';
import type { Admission, AdmitRequest, CreatedKey, KeyRecord, Reservation, Storage, StorageHealth, UsageRecord, WindowUsage } from './types.js';

const keyColumns = {
  id: apiKeys.id,
  keyPrefix: apiKeys.keyPrefix,
  name: apiKeys.name,
  model: apiKeys.model,
  tokenLimit: apiKeys.tokenLimit,
  expiresAt: apiKeys.expiresAt,
  createdAt: apiKeys.createdAt,
  lastUsedAt: apiKeys.lastUsedAt,
  totalLifetimeTokens: apiKeys.totalLifetimeTokens,
  totalRequests: apiKeys.totalRequests,
};

/** Default time after which a reservation no longer counts: its instance is presumed dead. */
export const DEFAULT_RESERVATION_TTL_MS = 15 * 60_000;

interface WindowRow extends Record<string, unknown> {
  used: string;
  oldest: string | null;
  reserved: string;
  partial: boolean;
  mine: string | null;
  mine_partial: boolean | null;
}

const num = (value: string | number | null): number | undefined => (value === null ? undefined : Number(value));

/**
 * The store for several instances. Admission locks the key's row, so admissions of one key are
 * serialized across instances; recording is one statement (one round trip), idempotent by record id.
 */
export class PostgresStorage implements Storage {
  readonly backend = 'postgres';
  private readonly reservationTtlMs: number;
  private readonly keyCache: KeyCache;

  constructor(
    private readonly opened: OpenedPostgres,
    options: { reservationTtlMs?: number; keyCacheTtlMs?: number } = {},
  ) {
    this.reservationTtlMs = options.reservationTtlMs ?? DEFAULT_RESERVATION_TTL_MS;
    this.keyCache = new KeyCache(options.keyCacheTtlMs);
  }

  async ping(): Promise<void> {
    await withRetry('ping', () => this.opened.sql`select 1`);
  }

  health(): StorageHealth {
    return { mode: 'primary', journalPendingRecords: 0, lastFailure: null, lastReplay: null };
  }

  /** Reused for a few seconds (KeyCache): other instances' key changes show within KEY_CACHE_TTL_MS. */
  findKeyByDigest(digest: string): Promise<KeyRecord | undefined> {
    return this.keyCache.find(digest, (hash) =>
      withRetry('key lookup', async () => (await this.opened.db.select(keyColumns).from(apiKeys).where(eq(apiKeys.keyHash, hash)))[0]),
    );
  }

  admit(request: AdmitRequest): Promise<Admission> {
    return withRetry('admission', () => this.opened.db.transaction((tx) => this.admitIn(tx, request)));
  }

  private async admitIn(tx: Parameters<Parameters<OpenedPostgres['db']['transaction']>[0]>[0], request: AdmitRequest): Promise<Admission> {
    const { keyId, requestId, now, windowMs } = request;
    const since = countsAfter(now, windowMs);
    // The row lock serializes admissions of this key; the reads below run after it, on fresh data.
    const locked = await tx.select({ id: apiKeys.id }).from(apiKeys).where(eq(apiKeys.id, keyId)).for('update');
    if (locked.length === 0) throw new NotFoundError(`no key with id ${keyId}`);
    const [row] = await tx.execute<WindowRow>(sql`
      with expired as (delete from ${reservations} where ${reservations.keyId} = ${keyId} and ${reservations.expiresAt} <= ${now})
      select
        (select coalesce(sum(tokens), 0) from ${usageBuckets} where key_id = ${keyId} and bucket_start > ${since}) as used,
        (select min(bucket_start) from ${usageBuckets} where key_id = ${keyId} and bucket_start > ${since}) as oldest,
        coalesce(sum(tokens) filter (where expires_at > ${now}), 0) as reserved,
        coalesce(bool_or(partial) filter (where expires_at > ${now}), false) as partial,
        max(tokens) filter (where id = ${requestId}) as mine,
        bool_or(partial) filter (where id = ${requestId}) as mine_partial
      from ${reservations} where key_id = ${keyId}`);
    if (!row) throw new Error('window query returned no row');
    const window: WindowUsage = { used: Number(row.used), reserved: Number(row.reserved), oldestBucketStart: num(row.oldest) };
    if (row.mine !== null) {
      // A retried admission whose first attempt committed: it is already admitted.
      return { admitted: true, reservation: { id: requestId, keyId, tokens: Number(row.mine), partial: row.mine_partial === true }, window };
    }
    const state = { limit: request.tokenLimit, used: window.used, reserved: window.reserved, partialInFlight: row.partial };
    const decision = decide(state, request.estimate);
    if (!decision.admit) {
      const buckets = await tx
        .select({ start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
        .from(usageBuckets)
        .where(and(eq(usageBuckets.keyId, keyId), gt(usageBuckets.bucketStart, since)))
        .orderBy(asc(usageBuckets.bucketStart));
      return { admitted: false, window, retryAfterMs: msUntilAdmissible(state, buckets, now, windowMs) };
    }
    const reservation = { id: requestId, keyId, tokens: decision.reserve, partial: decision.partial };
    await tx.insert(reservations).values({ ...reservation, expiresAt: now + this.reservationTtlMs });
    return { admitted: true, reservation, window: { ...window, reserved: window.reserved + decision.reserve } };
  }

  async settle(reservation: Reservation, record: UsageRecord): Promise<void> {
    try {
      validateCharge(record.tokens);
    } catch (error) {
      await this.release(reservation);
      throw error;
    }
    const { id, keyId, tokens, at } = record;
    // One statement, so one round trip and one transaction: the record id goes in first; when it
    // was there already, nothing else changes. The reservation goes either way.
    await withRetry('recording usage', () =>
      this.opened.db.execute(sql`
        with record as (
          insert into ${usageRecords} (id, key_id, tokens, recorded_at) values (${id}, ${keyId}, ${tokens}, ${at})
          on conflict (id) do nothing returning key_id
        ), charged as (
          update ${apiKeys} set
            total_lifetime_tokens = total_lifetime_tokens + ${tokens},
            total_requests = total_requests + 1,
            last_used = greatest(coalesce(last_used, 0), ${at})
          where id = (select key_id from record) returning id
        ), bucket as (
          insert into ${usageBuckets} (key_id, bucket_start, tokens)
          select id, ${bucketStart(at)}, ${tokens} from charged where ${tokens} > 0
          on conflict (key_id, bucket_start) do update set tokens = ${usageBuckets.tokens} + excluded.tokens
        ), released as (
          delete from ${reservations} where id = ${reservation.id}
        )
        select 1`),
    );
  }

  async release(reservation: Reservation): Promise<void> {
    await withRetry('releasing a reservation', () => this.opened.db.delete(reservations).where(eq(reservations.id, reservation.id)));
  }

  windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage> {
    return withRetry('window usage', async () => {
      const since = countsAfter(now, windowMs);
      const [row] = await this.opened.db.execute<{ used: string; oldest: string | null; reserved: string }>(sql`
        select
          (select coalesce(sum(tokens), 0) from ${usageBuckets} where key_id = ${keyId} and bucket_start > ${since}) as used,
          (select min(bucket_start) from ${usageBuckets} where key_id = ${keyId} and bucket_start > ${since}) as oldest,
          (select coalesce(sum(tokens), 0) from ${reservations} where key_id = ${keyId} and expires_at > ${now}) as reserved`);
      return { used: Number(row?.used ?? 0), reserved: Number(row?.reserved ?? 0), oldestBucketStart: num(row?.oldest ?? null) };
    });
  }

  async createKey(input: NewKey, now = Date.now()): Promise<CreatedKey> {
    const { record, key, keyHash } = buildKey(input, now);
    await withRetry('creating a key', async () => {
      try {
        await this.opened.db.insert(apiKeys).values({ ...record, keyHash });
      } catch (error) {
        throw errorCode(error) === '23505' ? new ConflictError('a key with this value already exists') : error;
      }
    });
    return { record, key };
  }

  listKeys(): Promise<KeyRecord[]> {
    return withRetry('listing keys', () => this.opened.db.select(keyColumns).from(apiKeys).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id)));
  }

  getKey(id: string): Promise<KeyRecord | undefined> {
    return withRetry('key lookup', async () => (await this.opened.db.select(keyColumns).from(apiKeys).where(eq(apiKeys.id, id)))[0]);
  }

  async updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    const changes = patchChanges(validatePatch(patch));
    const updated =
      Object.keys(changes).length === 0
        ? await this.getKey(id)
        : (await withRetry('updating a key', () => this.opened.db.update(apiKeys).set(changes).where(eq(apiKeys.id, id)).returning(keyColumns)))[0];
    this.keyCache.forget(id);
    if (!updated) throw new NotFoundError(`no key with id ${id}`);
    return updated;
  }

  async deleteKey(id: string): Promise<boolean> {
    const deleted = await withRetry('deleting a key', () => this.opened.db.delete(apiKeys).where(eq(apiKeys.id, id)).returning({ id: apiKeys.id }));
    this.keyCache.forget(id);
    return deleted.length > 0;
  }

  /** Every key with its digest and the buckets that start after `since`: what the file fallback mirrors. */
  snapshotKeys(since: number): Promise<SnapshotKey[]> {
    return withRetry('reading a snapshot', async () => {
      const [keys, buckets] = await Promise.all([
        this.opened.db.select({ ...keyColumns, keyHash: apiKeys.keyHash }).from(apiKeys),
        this.opened.db
          .select({ keyId: usageBuckets.keyId, start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
          .from(usageBuckets)
          .where(gt(usageBuckets.bucketStart, since)),
      ]);
      const byKey = new Map<string, [number, number][]>();
      for (const bucket of buckets) {
        const list = byKey.get(bucket.keyId) ?? [];
        list.push([bucket.start, bucket.tokens]);
        byKey.set(bucket.keyId, list);
      }
      return keys.map((key) => ({ ...key, buckets: byKey.get(key.id) ?? [] }));
    });
  }

  async close(): Promise<void> {
    await this.opened.sql.end({ timeout: 5 });
  }
}
