// SQLite storage on better-sqlite3 through Drizzle: synchronous, so each admission is atomic in-process.
import { existsSync } from 'node:fs';
import { and, asc, eq, gt, sql } from 'drizzle-orm';
import { ConflictError, NotFoundError, StorageError } from '../errors.js';
import type { OpenedSqlite } from '../db/sqlite.js';
import { apiKeys, usageBuckets, usageRecords } from '../db/schema/sqlite.js';
import { decide, msUntilAdmissible } from '../quota/admission.js';
import { ReservationBook } from '../quota/reservations.js';
import { bucketStart, countsAfter } from '../quota/window.js';
import { buildKey, patchChanges } from '../keys/build.js';
import { validateCharge, validatePatch, type KeyPatch, type NewKey } from '../keys/validate.js';
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

const p = sql.placeholder;
const inWindow = and(eq(usageBuckets.keyId, p('keyId')), gt(usageBuckets.bucketStart, p('since')));

/**
 * The embedded store. Reservations live in this process (one gate process per database file;
 * PostgreSQL is the store for several instances), so they vanish with a crashed process.
 */
export class SqliteStorage implements Storage {
  readonly backend = 'sqlite';
  private readonly reservations = new ReservationBook();
  private readonly statements;
  private readonly applyRecord;

  constructor(private readonly opened: OpenedSqlite) {
    const { db, sqlite } = opened;
    this.statements = {
      keyByHash: db.select(keyColumns).from(apiKeys).where(eq(apiKeys.keyHash, p('hash'))).prepare(),
      keyById: db.select(keyColumns).from(apiKeys).where(eq(apiKeys.id, p('id'))).prepare(),
      window: db
        .select({ used: sql<number>`coalesce(sum(${usageBuckets.tokens}), 0)`, oldest: sql<number | null>`min(${usageBuckets.bucketStart})` })
        .from(usageBuckets)
        .where(inWindow)
        .prepare(),
      buckets: db
        .select({ start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
        .from(usageBuckets)
        .where(inWindow)
        .orderBy(asc(usageBuckets.bucketStart))
        .prepare(),
      insertRecord: db
        .insert(usageRecords)
        .values({ id: p('id'), keyId: p('keyId'), tokens: p('tokens'), recordedAt: p('at') })
        .onConflictDoNothing()
        .prepare(),
      chargeKey: db
        .update(apiKeys)
        .set({
          totalLifetimeTokens: sql`${apiKeys.totalLifetimeTokens} + ${p('tokens')}`,
          totalRequests: sql`${apiKeys.totalRequests} + 1`,
          lastUsedAt: sql`max(coalesce(${apiKeys.lastUsedAt}, 0), ${p('at')})`,
        })
        .where(eq(apiKeys.id, p('keyId')))
        .prepare(),
      addToBucket: db
        .insert(usageBuckets)
        .values({ keyId: p('keyId'), bucketStart: p('bucket'), tokens: p('tokens') })
        .onConflictDoUpdate({ target: [usageBuckets.keyId, usageBuckets.bucketStart], set: { tokens: sql`${usageBuckets.tokens} + excluded.tokens` } })
        .prepare(),
    };
    // The record id goes in first: when it is already there, the record was applied before.
    this.applyRecord = sqlite.transaction((record: UsageRecord) => {
      if (this.statements.insertRecord.run({ ...record }).changes === 0) return;
      if (this.statements.chargeKey.run({ ...record }).changes === 0) return; // key deleted meanwhile
      if (record.tokens > 0) this.statements.addToBucket.run({ ...record, bucket: bucketStart(record.at) });
    });
  }

  /** Also fails when the file was removed under the open connection: what is written then is lost at restart. */
  async ping(): Promise<void> {
    this.opened.sqlite.prepare('select 1').get();
    if (!existsSync(this.opened.path)) throw new StorageError(`the SQLite database file ${this.opened.path} was removed`, false);
  }

  health(): StorageHealth {
    return { mode: 'primary', journalPendingRecords: 0, lastFailure: null, lastReplay: null };
  }

  async findKeyByDigest(digest: string): Promise<KeyRecord | undefined> {
    return this.statements.keyByHash.get({ hash: digest });
  }

  async admit(request: AdmitRequest): Promise<Admission> {
    const { keyId, now, windowMs } = request;
    const since = countsAfter(now, windowMs);
    const row = this.statements.window.get({ keyId, since });
    const held = this.reservations.held(keyId);
    const state = { limit: request.tokenLimit, used: row?.used ?? 0, reserved: held.reserved, partialInFlight: held.partialInFlight };
    const oldestBucketStart = row?.oldest ?? undefined;
    const decision = decide(state, request.estimate);
    if (!decision.admit) {
      const buckets = this.statements.buckets.all({ keyId, since });
      const window = { used: state.used, reserved: state.reserved, oldestBucketStart };
      return { admitted: false, window, retryAfterMs: msUntilAdmissible(state, buckets, now, windowMs) };
    }
    const reservation = { id: request.requestId, keyId, tokens: decision.reserve, partial: decision.partial };
    this.reservations.add(reservation.id, keyId, reservation.tokens, reservation.partial);
    return { admitted: true, reservation, window: { used: state.used, reserved: state.reserved + decision.reserve, oldestBucketStart } };
  }

  async settle(reservation: Reservation, record: UsageRecord): Promise<void> {
    try {
      validateCharge(record.tokens);
      this.applyRecord(record);
    } finally {
      this.reservations.remove(reservation.id);
    }
  }

  async release(reservation: Reservation): Promise<void> {
    this.reservations.remove(reservation.id);
  }

  async windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage> {
    const row = this.statements.window.get({ keyId, since: countsAfter(now, windowMs) });
    return { used: row?.used ?? 0, reserved: this.reservations.held(keyId).reserved, oldestBucketStart: row?.oldest ?? undefined };
  }

  async createKey(input: NewKey, now = Date.now()): Promise<CreatedKey> {
    const { record, key, keyHash } = buildKey(input, now);
    try {
      this.opened.db.insert(apiKeys).values({ ...record, keyHash }).run();
    } catch (error) {
      if ((error as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') throw new ConflictError('a key with this value already exists');
      throw error;
    }
    return { record, key };
  }

  async listKeys(): Promise<KeyRecord[]> {
    return this.opened.db.select(keyColumns).from(apiKeys).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id)).all();
  }

  async getKey(id: string): Promise<KeyRecord | undefined> {
    return this.statements.keyById.get({ id });
  }

  async updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    const changes = patchChanges(validatePatch(patch));
    const updated =
      Object.keys(changes).length === 0
        ? this.statements.keyById.get({ id })
        : this.opened.db.update(apiKeys).set(changes).where(eq(apiKeys.id, id)).returning(keyColumns).get();
    if (!updated) throw new NotFoundError(`no key with id ${id}`);
    return updated;
  }

  async deleteKey(id: string): Promise<boolean> {
    return this.opened.db.delete(apiKeys).where(eq(apiKeys.id, id)).run().changes > 0;
  }

  async close(): Promise<void> {
    if (this.opened.sqlite.open) this.opened.sqlite.close();
  }
}
