// Key management on SQLite: creating, listing, reading, changing and deleting keys, apart from the gate's hot path.
import { asc, eq, sql } from 'drizzle-orm';
import type { SqliteDb } from '../db/sqlite.js';
import { apiKeys, keyColumns } from '../db/schema/sqlite.js';
import { ConflictError, NotFoundError } from '../errors.js';
import { buildKey, patchChanges } from '../keys/build.js';
import { validatePatch, type KeyPatch, type NewKey } from '../keys/validate.js';
import type { CreatedKey, KeyRecord, KeyStore } from './types.js';

export class SqliteKeys implements KeyStore {
  private readonly byId;

  /** `forget`: drops what the store holds in memory of a key changed or deleted through it. */
  constructor(
    private readonly db: SqliteDb,
    private readonly forget: (id: string) => void,
  ) {
    this.byId = db.select(keyColumns).from(apiKeys).where(eq(apiKeys.id, sql.placeholder('id'))).prepare();
  }

  async createKey(input: NewKey, now = Date.now()): Promise<CreatedKey> {
    const { record, key, keyHash } = buildKey(input, now);
    try {
      this.db.insert(apiKeys).values({ ...record, keyHash }).run();
    } catch (error) {
      if ((error as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE') throw new ConflictError('a key with this value already exists');
      throw error;
    }
    return { record, key };
  }

  async listKeys(): Promise<KeyRecord[]> {
    return this.db.select(keyColumns).from(apiKeys).orderBy(asc(apiKeys.createdAt), asc(apiKeys.id)).all();
  }

  async getKey(id: string): Promise<KeyRecord | undefined> {
    return this.byId.get({ id });
  }

  async updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    const valid = validatePatch(patch);
    // One write transaction: a change of the key's limits by another process (the CLI beside the gate) cannot slip between the read and the update.
    const updated = this.db.transaction(
      (tx) => {
        const current = tx.select(keyColumns).from(apiKeys).where(eq(apiKeys.id, id)).get();
        if (!current) return undefined;
        const changes = patchChanges(valid, current.limits);
        return Object.keys(changes).length === 0 ? current : tx.update(apiKeys).set(changes).where(eq(apiKeys.id, id)).returning(keyColumns).get();
      },
      { behavior: 'immediate' },
    );
    this.forget(id);
    if (!updated) throw new NotFoundError(`no key with id ${id}`);
    return updated;
  }

  async deleteKey(id: string): Promise<boolean> {
    this.forget(id);
    return this.db.delete(apiKeys).where(eq(apiKeys.id, id)).run().changes > 0;
  }
}
