// The Storage contract, one suite for every backend, against real databases.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { digestKey } from '../../src/keys/secret.js';
import { ConflictError, NotFoundError, ValidationError } from '../../src/errors.js';
import postgres from 'postgres';
import { tempDbPath, tempDir, quietLogger } from '../helpers/gate.js';
import { freshDatabase } from '../helpers/postgres.js';
import { MemoryStorage } from '../helpers/memory-storage.js';

const HOUR = 3600_000;
const WINDOW = 5 * HOUR;
const NOW = Date.UTC(2026, 10, 28, 12, 0, 0);

interface Opened {
  storage: Storage;
  /** Every byte the backend holds, for searching (after the storage is closed). */
  dump(): Promise<Buffer>;
}

interface Backend {
  name: string;
  open(): Promise<Opened>;
}

const readIfThere = (file: string): Buffer => {
  try {
    return readFileSync(file);
  } catch {
    return Buffer.alloc(0);
  }
};

const backends: Backend[] = [
  {
    // Written against the engine's adapter interface alone: what a new backend must pass.
    name: 'memory',
    async open() {
      const storage = new MemoryStorage();
      return { storage, dump: async () => storage.dump() };
    },
  },
  {
    name: 'sqlite',
    async open() {
      const path = tempDbPath();
      return { storage: await createStorage({ databasePath: path }), dump: async () => Buffer.concat([path, `${path}-wal`].map(readIfThere)) };
    },
  },
  {
    name: 'file',
    async open() {
      const dir = tempDir();
      const dump = async (): Promise<Buffer> => Buffer.concat(readdirSync(dir).map((name) => readIfThere(join(dir, name))));
      return { storage: await createStorage({ storage: 'file', fallbackDir: dir, logger: quietLogger() }), dump };
    },
  },
  {
    name: 'postgres',
    async open() {
      const url = await freshDatabase();
      const dump = async (): Promise<Buffer> => {
        const sql = postgres(url, { max: 1 });
        try {
          const tables = ['api_keys', 'usage_buckets', 'usage_records', 'reservations'];
          const rows = await Promise.all(tables.map((table) => sql.unsafe(`select row_to_json(t)::text as row from ${table} t`)));
          return Buffer.from(rows.flat().map((r) => String(r.row)).join('\n'));
        } finally {
          await sql.end();
        }
      };
      return { storage: await createStorage({ fallbackDir: tempDir(), logger: quietLogger(), databaseUrl: url }), dump };
    },
  },
];

describe.each(backends)('$name storage', (backend) => {
  let storage: Storage;
  let dump: () => Promise<Buffer>;
  beforeEach(async () => {
    ({ storage, dump } = await backend.open());
  });
  afterEach(() => storage.close());

  const newKey = (tokenLimit = 1000, key?: string) => storage.createKey({ name: 'n', tokenLimit, expiresAt: NOW + HOUR, ...(key ? { key } : {}) }, NOW);
  const admit = (keyId: string, estimate: number, requestId: string, tokenLimit = 1000) =>
    storage.admit({ keyId, tokenLimit, estimate, requestId, now: NOW, windowMs: WINDOW });

  it('finds a key by its digest only, and stores no plaintext', async () => {
    const { key, record } = await newKey(1000, 'pk_user_123');
    expect(await storage.findKeyByDigest(digestKey(key))).toEqual(record);
    expect(await storage.findKeyByDigest(digestKey('pk_user_124'))).toBeUndefined();
    expect(record).not.toHaveProperty('keyHash');
    await storage.close();
    const bytes = await dump();
    expect(bytes.includes(Buffer.from(digestKey(key)))).toBe(true); // the dump does hold the key's row
    expect(bytes.includes(Buffer.from('pk_user_123'))).toBe(false);
    ({ storage, dump } = await backend.open());
  });

  it('refuses a key value already in use', async () => {
    await newKey(1000, 'same-key');
    await expect(newKey(1000, 'same-key')).rejects.toBeInstanceOf(ConflictError);
  });

  it.each([
    [{ name: '', tokenLimit: 1, expiresAt: NOW }, 'name'],
    [{ name: 'x'.repeat(201), tokenLimit: 1, expiresAt: NOW }, 'name'],
    [{ name: 'n', tokenLimit: 0, expiresAt: NOW }, 'token_limit_per_5h'],
    [{ name: 'n', tokenLimit: 1.5, expiresAt: NOW }, 'token_limit_per_5h'],
    [{ name: 'n', tokenLimit: 2 ** 60, expiresAt: NOW }, 'token_limit_per_5h'],
    [{ name: 'n', tokenLimit: 1, expiresAt: Number.NaN }, 'expiry_date'],
    [{ name: 'n', tokenLimit: 1, expiresAt: NOW, key: 'has space' }, 'key'],
  ])('rejects invalid input %j naming %s', async (input, field) => {
    const error = await storage.createKey(input).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ValidationError);
    expect((error as ValidationError).field).toBe(field);
    expect(await storage.listKeys()).toEqual([]);
  });

  it('lists, shows, updates and deletes keys', async () => {
    const a = await newKey(1000);
    const b = await newKey(2000);
    expect((await storage.listKeys()).map((k) => k.id).sort()).toEqual([a.record.id, b.record.id].sort());
    const updated = await storage.updateKey(a.record.id, { name: 'renamed', tokenLimit: 5, model: 'gpt-x' });
    expect(updated).toEqual({ ...a.record, name: 'renamed', tokenLimit: 5, model: 'gpt-x' });
    expect(await storage.updateKey(a.record.id, { model: null })).toMatchObject({ model: null, name: 'renamed' });
    expect(await storage.getKey(a.record.id)).toMatchObject({ model: null, tokenLimit: 5 });
    await expect(storage.updateKey('key_missing', { name: 'x' })).rejects.toBeInstanceOf(NotFoundError);
    await expect(storage.updateKey(a.record.id, { tokenLimit: -1 })).rejects.toBeInstanceOf(ValidationError);
    expect(await storage.deleteKey(a.record.id)).toBe(true);
    expect(await storage.deleteKey(a.record.id)).toBe(false);
    expect(await storage.getKey(a.record.id)).toBeUndefined();
    expect(await storage.findKeyByDigest(digestKey(a.key))).toBeUndefined();
  });

  it('counts a usage record applied twice once (a lost acknowledgement, replayed)', async () => {
    const { record } = await newKey();
    const first = await admit(record.id, 100, 'req-1');
    if (!first.admitted) throw new Error('not admitted');
    const usage = { id: 'req-1', keyId: record.id, tokens: 80, at: NOW };
    await storage.settle(first.reservation, usage);
    await storage.settle(first.reservation, usage);
    expect(await storage.getKey(record.id)).toMatchObject({ totalRequests: 1, totalLifetimeTokens: 80, lastUsedAt: NOW });
    expect(await storage.windowUsage(record.id, NOW, WINDOW)).toEqual({ used: 80, reserved: 0, oldestBucketStart: NOW });
  });

  it('holds reservations until settled or released', async () => {
    const { record } = await newKey(1000);
    const a = await admit(record.id, 600, 'a');
    const b = await admit(record.id, 300, 'b');
    const c = await admit(record.id, 300, 'c');
    expect([a.admitted, b.admitted, c.admitted]).toEqual([true, true, true]);
    if (!c.admitted || !a.admitted || !b.admitted) return;
    expect(c.reservation).toMatchObject({ tokens: 100, partial: true });
    expect((await admit(record.id, 1, 'd')).admitted).toBe(false);
    await storage.release(c.reservation);
    await storage.settle(a.reservation, { id: 'a', keyId: record.id, tokens: 500, at: NOW });
    expect(await storage.windowUsage(record.id, NOW, WINDOW)).toMatchObject({ used: 500, reserved: 300 });
    const e = await admit(record.id, 1000, 'e');
    expect(e).toMatchObject({ admitted: true, reservation: { tokens: 200, partial: true } });
  });

  it('refuses with the time until the oldest usage leaves the window', async () => {
    const { record } = await newKey(100);
    for (const [i, at] of [NOW - 4 * HOUR, NOW - 2 * HOUR].entries()) {
      const admission = await storage.admit({ keyId: record.id, tokenLimit: 100, estimate: 1, requestId: `r${i}`, now: at, windowMs: WINDOW });
      if (!admission.admitted) throw new Error('not admitted');
      await storage.settle(admission.reservation, { id: `r${i}`, keyId: record.id, tokens: 50, at });
    }
    const refused = await admit(record.id, 1, 'late', 100);
    expect(refused).toEqual({ admitted: false, window: { used: 100, reserved: 0, oldestBucketStart: NOW - 4 * HOUR }, retryAfterMs: HOUR });
  });

  it('ignores usage for a key deleted while its request was in flight', async () => {
    const { record } = await newKey();
    const admission = await admit(record.id, 10, 'gone');
    if (!admission.admitted) throw new Error('not admitted');
    await storage.deleteKey(record.id);
    await expect(storage.settle(admission.reservation, { id: 'gone', keyId: record.id, tokens: 5, at: NOW })).resolves.toBeUndefined();
    expect(await storage.windowUsage(record.id, NOW, WINDOW)).toEqual({ used: 0, reserved: 0, oldestBucketStart: undefined });
  });

  it('refuses a negative or fractional charge and still releases the reservation', async () => {
    const { record } = await newKey();
    for (const tokens of [-1, 1.5, Number.POSITIVE_INFINITY]) {
      const admission = await admit(record.id, 10, `bad-${tokens}`);
      if (!admission.admitted) throw new Error('not admitted');
      await expect(storage.settle(admission.reservation, { id: `bad-${tokens}`, keyId: record.id, tokens, at: NOW })).rejects.toBeInstanceOf(ValidationError);
    }
    expect(await storage.windowUsage(record.id, NOW, WINDOW)).toEqual({ used: 0, reserved: 0, oldestBucketStart: undefined });
    expect(await storage.getKey(record.id)).toMatchObject({ totalRequests: 0, totalLifetimeTokens: 0 });
  });
});
