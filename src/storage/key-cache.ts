// Key lookups by digest, kept for a few seconds, so that a busy key is not read on every request.
import { performance } from 'node:perf_hooks';
import type { KeyRecord } from './types.js';

/** Default time a looked-up key is reused; changes made through other processes show within it. */
export const DEFAULT_KEY_CACHE_TTL_MS = 5_000;
const MAX_ENTRIES = 100_000;

/**
 * Only found keys are kept (a key created elsewhere works at once). Changes made through the store
 * that owns the cache drop the key at once; the totals of a cached record are not kept current, so
 * what reports totals reads the key by id instead.
 */
export class KeyCache {
  private readonly entries = new Map<string, { key: KeyRecord; until: number }>();
  /** Bumped by forget(), so that a lookup that began before a change does not cache what it read. */
  private generation = 0;

  constructor(private readonly ttlMs: number = DEFAULT_KEY_CACHE_TTL_MS) {}

  async find(digest: string, load: (digest: string) => Promise<KeyRecord | undefined>): Promise<KeyRecord | undefined> {
    if (this.ttlMs === 0) return load(digest);
    const now = performance.now();
    const hit = this.entries.get(digest);
    if (hit && hit.until > now) return hit.key;
    const generation = this.generation;
    const key = await load(digest);
    this.entries.delete(digest);
    if (key && generation === this.generation) {
      if (this.entries.size >= MAX_ENTRIES) this.entries.delete(this.entries.keys().next().value!);
      this.entries.set(digest, { key, until: now + this.ttlMs });
    }
    return key;
  }

  /** Drops the key with this id (updated or deleted). */
  forget(keyId: string): void {
    this.generation++;
    for (const [digest, entry] of this.entries) if (entry.key.id === keyId) this.entries.delete(digest);
  }
}
