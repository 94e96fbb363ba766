// A backend in memory, written only against the quota engine's adapter interface (LocalAdapter): the
// shared storage suite runs it beside the real ones, to show what a new backend has to provide.
import { ConflictError, NotFoundError } from '../../src/errors.js';
import { buildKey, patchChanges } from '../../src/keys/build.js';
import { validatePatch, type KeyPatch, type NewKey } from '../../src/keys/validate.js';
import { LocalQuota, type ApplyOutcome, type LocalAdapter } from '../../src/quota/local-quota.js';
import type { Bucket } from '../../src/quota/window.js';
import { bucketsOf } from '../../src/quota/limits.js';
import type { Admission, AdmitRequest, CreatedKey, KeyRecord, Reservation, Storage, StorageHealth, UsageRecord, WindowUsage } from '../../src/storage/types.js';

interface Row extends KeyRecord {
  keyHash: string;
}

export class MemoryStorage implements Storage, LocalAdapter {
  readonly backend = 'memory';
  private readonly keys = new Map<string, Row>();
  /** Buckets by key id and limit (`key\u0000limit`), then bucket start. */
  private readonly usage = new Map<string, Map<number, number>>();
  private readonly recordIds = new Set<string>();
  private readonly quota = new LocalQuota(this, { name: 'the memory store' });
  private closed = false;

  // The adapter: what the engine asks of a backend.
  buckets(keyId: string, limit: string, since: number): Bucket[] {
    return [...(this.usage.get(`${keyId}\u0000${limit}`) ?? [])]
      .filter(([start]) => start > since)
      .sort((a, b) => a[0] - b[0])
      .map(([start, tokens]) => ({ start, tokens }));
  }

  commit(records: readonly UsageRecord[]): ApplyOutcome[] {
    return records.map((record) => {
      if (this.recordIds.has(record.id)) return 'duplicate';
      const key = this.keys.get(record.keyId);
      if (!key) return 'no-key';
      this.recordIds.add(record.id);
      key.totalLifetimeTokens += record.tokens;
      key.totalRequests += 1;
      key.lastUsedAt = Math.max(key.lastUsedAt ?? 0, record.at);
      if (record.tokens > 0) {
        for (const [limit, start] of bucketsOf(record)) {
          const buckets = this.usage.get(`${record.keyId}\u0000${limit}`) ?? new Map<number, number>();
          buckets.set(start, (buckets.get(start) ?? 0) + record.tokens);
          this.usage.set(`${record.keyId}\u0000${limit}`, buckets);
        }
      }
      return 'applied';
    });
  }

  wholeStore(): boolean {
    return this.closed;
  }

  ready(): void {
    if (this.closed) throw new Error('the memory store is closed');
  }

  // The Storage interface, on top of the engine.
  async ping(): Promise<void> {}

  health(): StorageHealth {
    return { mode: 'primary', recording: 'ok', journalPendingRecords: 0, quarantinedFiles: [], recordingFailures: { database: 0, journal: 0 }, lastFailure: null, lastReplay: null };
  }

  async findKeyByDigest(digest: string): Promise<KeyRecord | undefined> {
    for (const row of this.keys.values()) if (row.keyHash === digest) return record(row);
    return undefined;
  }

  async admit(request: AdmitRequest): Promise<Admission> {
    return this.quota.admit(request);
  }

  settle(reservation: Reservation, usage: UsageRecord): Promise<void> {
    return this.quota.settle(reservation, usage);
  }

  async release(reservation: Reservation): Promise<void> {
    this.quota.release(reservation);
  }

  async windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage> {
    return this.quota.windowUsage(keyId, now, windowMs);
  }

  async createKey(input: NewKey, now = Date.now()): Promise<CreatedKey> {
    const built = buildKey(input, now);
    if ([...this.keys.values()].some((row) => row.keyHash === built.keyHash)) throw new ConflictError('a key with this value already exists');
    this.keys.set(built.record.id, { ...built.record, keyHash: built.keyHash });
    return { record: built.record, key: built.key };
  }

  async listKeys(): Promise<KeyRecord[]> {
    return [...this.keys.values()].map(record).sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id));
  }

  async getKey(id: string): Promise<KeyRecord | undefined> {
    const row = this.keys.get(id);
    return row && record(row);
  }

  async updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    const changes = patchChanges(validatePatch(patch), this.keys.get(id)?.limits);
    const row = this.keys.get(id);
    if (!row) throw new NotFoundError(`no key with id ${id}`);
    Object.assign(row, changes);
    return record(row);
  }

  async deleteKey(id: string): Promise<boolean> {
    this.quota.forget(id);
    return this.keys.delete(id);
  }

  async close(): Promise<void> {
    await this.quota.drain();
    this.closed = true;
  }

  /** Everything the store holds, as the suite searches a backend's bytes. */
  dump(): Buffer {
    return Buffer.from(JSON.stringify({ keys: [...this.keys.values()], usage: [...this.usage].map(([id, b]) => [id, [...b]]), records: [...this.recordIds] }));
  }
}

const record = ({ keyHash: _hash, ...row }: Row): KeyRecord => ({ ...row });
