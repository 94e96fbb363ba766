// Key management on PostgreSQL: creating, listing, reading, changing and deleting keys, apart from the gate's hot path.
import { asc, eq } from 'drizzle-orm';
import type { PostgresDb } from '../db/postgres.js';
import { apiKeys, keyColumns } from '../db/schema/postgres.js';
import { ConflictError, NotFoundError } from '../errors.js';
import { buildKey, patchChanges } from '../keys/build.js';
import { validatePatch, type KeyPatch, type NewKey } from '../keys/validate.js';
import { errorCode, withRetry } from './retry.js';
import type { CreatedKey, KeyRecord, KeyStore } from './types.js';

export class PostgresKeys implements KeyStore {
  /** `forget`: drops what the store holds in memory of a key changed or deleted through it. */
  constructor(
    private readonly db: PostgresDb,
    private readonly forget: (id: string) => void,
  ) {}

  async createKey(input: NewKey, now = Date.now()): Promise<CreatedKey> {
    const { record, key, keyHash } = buildKey(input, now);
    await withRetry('creating a key', async () => {
      try {
        await this.db.insert(apiKeys).values({ ...record, keyHash });
      } catch (error) {
        throw errorCode(error) === '23505' ? new ConflictError('a key with this value already exists') : error;
      }
    });
    return { record, key };
  }

  listKeys(): Promise<KeyRecord[]> {
    return withRetry('listing keys', () => this.db.select(keyColumns).from(apiKeys).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id)));
  }

  getKey(id: string): Promise<KeyRecord | undefined> {
    return withRetry('key lookup', async () => (await this.db.select(keyColumns).from(apiKeys).where(eq(apiKeys.id, id)))[0]);
  }

  async updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    const valid = validatePatch(patch);
    const updated = await withRetry('updating a key', () =>
      this.db.transaction(async (tx) => {
        // The row is locked before its limits are read (token_limit_per_5h alone changes their 5h one):
        // a change made meanwhile by another request or instance is built on, never lost.
        const [current] = await tx.select(keyColumns).from(apiKeys).where(eq(apiKeys.id, id)).for('update');
        if (!current) return undefined;
        const changes = patchChanges(valid, current.limits);
        if (Object.keys(changes).length === 0) return current;
        return (await tx.update(apiKeys).set(changes).where(eq(apiKeys.id, id)).returning(keyColumns))[0];
      }),
    );
    this.forget(id);
    if (!updated) throw new NotFoundError(`no key with id ${id}`);
    return updated;
  }

  async deleteKey(id: string): Promise<boolean> {
    const deleted = await withRetry('deleting a key', () => this.db.delete(apiKeys).where(eq(apiKeys.id, id)).returning({ id: apiKeys.id }));
    this.forget(id);
    return deleted.length > 0;
  }
}
