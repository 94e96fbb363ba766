// The hot path's shortcuts keep the answers exact: cached key lookups, windows kept in memory,
// usage committed in groups.
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import postgres from 'postgres';
import { afterEach, describe, expect, it } from 'vitest';
import { digestKey } from '../../src/keys/secret.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDbPath } from '../helpers/gate.js';
import { freshDatabase } from '../helpers/postgres.js';

const HOUR = 3600_000;
const WINDOW = 5 * HOUR;

interface Backend {
  name: string;
  open(keyCacheTtlMs: number): Promise<{ storage: Storage; exec(statement: string): Promise<void> }>;
}

const backends: Backend[] = [
  {
    name: 'sqlite',
    async open(keyCacheTtlMs) {
      const path = tempDbPath();
      const storage = await createStorage({ databasePath: path, keyCacheTtlMs, logger: quietLogger() });
      return {
        storage,
        async exec(statement) {
          const db = new Database(path);
          db.exec(statement);
          db.close();
        },
      };
    },
  },
  {
    name: 'postgres',
    async open(keyCacheTtlMs) {
      const url = await freshDatabase();
      const storage = await createStorage({ databaseUrl: url, fallback: false, keyCacheTtlMs, logger: quietLogger() });
      return {
        storage,
        async exec(statement) {
          const sql = postgres(url, { max: 1, onnotice: () => undefined });
          await sql.unsafe(statement);
          await sql.end();
        },
      };
    },
  },
];

let opened: Storage | undefined;
afterEach(async () => {
  await opened?.close();
  opened = undefined;
});

describe.each(backends)('$name: cached key lookups', (backend) => {
  it('see a change made through the store at once, and one made behind its back within the TTL', async () => {
    const { storage, exec } = await backend.open(300);
    opened = storage;
    const { key, record } = await storage.createKey({ name: 'cached', tokenLimit: 1000, expiresAt: Date.now() + HOUR });
    const digest = digestKey(key);
    expect((await storage.findKeyByDigest(digest))?.tokenLimit).toBe(1000);

    await storage.updateKey(record.id, { tokenLimit: 2000 });
    expect((await storage.findKeyByDigest(digest))?.tokenLimit).toBe(2000);

    await exec(`update api_keys set token_limit_per_5h = 3000 where id = '${record.id}'`);
    await expect.poll(async () => (await storage.findKeyByDigest(digest))?.tokenLimit, { timeout: 5000, interval: 50 }).toBe(3000);

    await exec(`delete from api_keys where id = '${record.id}'`);
    await expect.poll(async () => storage.findKeyByDigest(digest), { timeout: 5000, interval: 50 }).toBeUndefined();
  });

  it('forget a key deleted through the store at once', async () => {
    const { storage } = await backend.open(60_000);
    opened = storage;
    const { key, record } = await storage.createKey({ name: 'gone', tokenLimit: 1000, expiresAt: Date.now() + HOUR });
    expect(await storage.findKeyByDigest(digestKey(key))).toBeDefined();
    expect(await storage.deleteKey(record.id)).toBe(true);
    expect(await storage.findKeyByDigest(digestKey(key))).toBeUndefined();
  });
});

describe('sqlite: windows in memory and usage committed in groups', () => {
  it('records 300 settles made at once exactly, and counts each from the moment its settle resolves', async () => {
    const { storage } = await backends[0]!.open(5000);
    opened = storage;
    const { record } = await storage.createKey({ name: 'busy', tokenLimit: 1_000_000, expiresAt: Date.now() + HOUR });
    const now = Date.now();
    const admissions = await Promise.all(
      Array.from({ length: 300 }, () => storage.admit({ keyId: record.id, tokenLimit: 1_000_000, estimate: 10, requestId: randomUUID(), now, windowMs: WINDOW })),
    );
    expect((await storage.windowUsage(record.id, now, WINDOW)).reserved).toBe(3000);
    const settled = admissions.map(async (admission, i) => {
      if (!admission.admitted) throw new Error('expected an admission');
      await storage.settle(admission.reservation, { id: admission.reservation.id, keyId: record.id, tokens: i + 1, at: now });
      const window = await storage.windowUsage(record.id, now, WINDOW);
      // Once its own settle resolved, this record (i + 1 tokens) counts in `used`.
      expect(window.used).toBeGreaterThanOrEqual(i + 1);
      return window;
    });
    await Promise.all(settled);
    expect(await storage.windowUsage(record.id, now, WINDOW)).toMatchObject({ used: (300 * 301) / 2, reserved: 0 });
    expect(await storage.getKey(record.id)).toMatchObject({ totalRequests: 300, totalLifetimeTokens: (300 * 301) / 2 });
    // Settling a record again changes nothing, in memory or on disk.
    const first = admissions[0]!;
    if (first.admitted) await storage.settle(first.reservation, { id: first.reservation.id, keyId: record.id, tokens: 1, at: now });
    expect((await storage.windowUsage(record.id, now, WINDOW)).used).toBe((300 * 301) / 2);
    expect((await storage.getKey(record.id))?.totalRequests).toBe(300);
  });

  it('commits what is queued when it closes', async () => {
    const path = tempDbPath();
    const storage = await createStorage({ databasePath: path, logger: quietLogger() });
    const { record } = await storage.createKey({ name: 'closing', tokenLimit: 1000, expiresAt: Date.now() + HOUR });
    const admission = await storage.admit({ keyId: record.id, tokenLimit: 1000, estimate: 10, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW });
    if (!admission.admitted) throw new Error('expected an admission');
    const settling = storage.settle(admission.reservation, { id: admission.reservation.id, keyId: record.id, tokens: 42, at: Date.now() });
    await storage.close();
    await settling;
    const reopened = await createStorage({ databasePath: path, logger: quietLogger() });
    opened = reopened;
    expect(await reopened.getKey(record.id)).toMatchObject({ totalRequests: 1, totalLifetimeTokens: 42 });
  });
});
