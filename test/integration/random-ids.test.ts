// Keys whose id was derived from their digest get random ids on start, keeping usage and totals, in both databases.
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import postgres from 'postgres';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { digestKey } from '../../src/keys/secret.js';
import { Journal, journalLine } from '../../src/storage/journal.js';
import { writeSnapshot, type SnapshotKey } from '../../src/storage/snapshot.js';
import { bucketStart } from '../../src/quota/window.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDbPath, tempDir } from '../helpers/gate.js';
import { captureLogs } from '../helpers/logs.js';
import { freshDatabase } from '../helpers/postgres.js';

const WINDOW = 5 * 3600_000;
const KEY = 'pk_user_123';
const derivedId = `key_${digestKey(KEY).slice(0, 16)}`;

const opened: Storage[] = [];
afterEach(async () => {
  while (opened.length) await opened.pop()!.close();
});

/** A key with 40 tokens recorded in the window and one request, through the store itself. */
async function keyWithUsage(storage: Storage): Promise<string> {
  const { record } = await storage.createKey({ name: 'imported', key: KEY, tokenLimit: 1000, expiresAt: Date.now() + WINDOW });
  const now = Date.now();
  const requestId = randomBytes(8).toString('hex');
  const admission = await storage.admit({ keyId: record.id, tokenLimit: 1000, estimate: 50, requestId, now, windowMs: WINDOW });
  if (!admission.admitted) throw new Error('not admitted');
  await storage.settle(admission.reservation, { id: requestId, keyId: record.id, tokens: 40, at: now });
  return record.id;
}

const RENAMED = /^renamed 1 key id derived from key digests to random ones/;

async function expectRandomIdWithUsage(storage: Storage): Promise<string> {
  const found = await storage.findKeyByDigest(digestKey(KEY));
  expect(found).toMatchObject({ totalLifetimeTokens: 40, totalRequests: 1 });
  expect(found!.id).toMatch(/^key_[0-9a-f]{16}$/);
  expect(digestKey(KEY)).not.toContain(found!.id.slice(4));
  expect((await storage.windowUsage(found!.id, Date.now(), WINDOW)).used).toBe(40);
  expect(await storage.getKey(derivedId)).toBeUndefined();
  return found!.id;
}

/** A SQLite database holding the key with its usage under the derived id, as an import by an earlier version left it. */
async function sqliteWithDerivedId(): Promise<string> {
  const databasePath = tempDbPath();
  const storage = await createStorage({ databasePath, logger: quietLogger() });
  const id = await keyWithUsage(storage);
  await storage.close();
  const raw = new Database(databasePath);
  raw.pragma('foreign_keys = OFF');
  raw.transaction(() => {
    raw.prepare('update api_keys set id = ? where id = ?').run(derivedId, id);
    for (const table of ['usage_buckets', 'usage_records']) raw.prepare(`update ${table} set key_id = ? where key_id = ?`).run(derivedId, id);
  })();
  raw.close();
  return databasePath;
}

describe('keys with digest-derived ids', () => {
  it('SQLite: renamed once on start, with their usage, totals and a log line', async () => {
    const databasePath = await sqliteWithDerivedId();

    // Key commands (no lock: they run beside a gate) never rename keys under it.
    const command = await createStorage({ databasePath, lock: false, logger: quietLogger() });
    expect((await command.findKeyByDigest(digestKey(KEY)))?.id).toBe(derivedId);
    await command.close();

    const logs = captureLogs();
    opened.push(await createStorage({ databasePath, logger: logs.logger }));
    const renamed = await expectRandomIdWithUsage(opened[0]!);
    expect(logs.lines.filter((line) => RENAMED.test(String(line.msg)))).toHaveLength(1);
    await opened.pop()!.close();

    const again = captureLogs();
    opened.push(await createStorage({ databasePath, logger: again.logger }));
    expect((await opened[0]!.findKeyByDigest(digestKey(KEY)))?.id).toBe(renamed);
    expect(again.lines.filter((line) => RENAMED.test(String(line.msg)))).toHaveLength(0);
  });

  it('SQLite: usage journaled under the old id before the rename is charged to the renamed key', async () => {
    const databasePath = await sqliteWithDerivedId();
    // What an earlier version left in its journal while the database refused writes.
    const journal = Journal.open(join(dirname(databasePath), 'fallback'), 0, quietLogger());
    await journal.append({ id: 'journaled-before-upgrade', keyId: derivedId, tokens: 900, at: Date.now() });
    await journal.close();

    opened.push(await createStorage({ databasePath, logger: quietLogger() }));
    const storageNow = opened[0]!;
    await vi.waitUntil(() => storageNow.health().recording === 'ok', { timeout: 5000, interval: 25 });
    const found = await storageNow.findKeyByDigest(digestKey(KEY));
    expect(found).toMatchObject({ totalLifetimeTokens: 940, totalRequests: 2 });
    expect(found!.id).not.toBe(derivedId);
    expect((await storageNow.windowUsage(found!.id, Date.now(), WINDOW)).used).toBe(940);
    expect(storageNow.health().quarantinedFiles).toEqual([]);
  });

  it('file store: the snapshot of an earlier version is renamed once on start, its journal following the key', async () => {
    const dir = tempDir();
    const now = Date.now();
    const keyHash = digestKey(KEY);
    const key = { id: derivedId, keyHash, keyPrefix: 'pk', name: 'imported', model: null, tokenLimit: 1000, expiresAt: now + WINDOW, createdAt: now - WINDOW, lastUsedAt: now - 120_000 };
    writeSnapshot(dir, { journalGeneration: 0, writtenAt: now, // A snapshot of that version: its keys have no token weights.
    keys: [{ ...key, totalLifetimeTokens: 40, totalRequests: 1, buckets: [[bucketStart(now - 120_000), 40]] }] as unknown as SnapshotKey[] });
    writeFileSync(join(dir, 'journal-00000001.ndjson'), journalLine({ id: 'journaled-1', keyId: derivedId, tokens: 15, at: now - 60_000 }), { mode: 0o600 });

    const logs = captureLogs();
    opened.push(await createStorage({ storage: 'file', fallbackDir: dir, logger: logs.logger }));
    const found = await opened[0]!.findKeyByDigest(keyHash);
    expect(found).toMatchObject({ totalLifetimeTokens: 55, totalRequests: 2 });
    // Keys of that version had neither weights nor limits of their own.
    expect(found).toMatchObject({ tokenWeights: null, limits: null });
    expect(keyHash).not.toContain(found!.id.slice(4));
    expect((await opened[0]!.windowUsage(found!.id, Date.now(), WINDOW)).used).toBe(55);
    expect(logs.lines.filter((line) => RENAMED.test(String(line.msg)))).toHaveLength(1);
    await opened.pop()!.close();

    const again = captureLogs();
    opened.push(await createStorage({ storage: 'file', fallbackDir: dir, logger: again.logger }));
    expect(await opened[0]!.findKeyByDigest(keyHash)).toMatchObject({ id: found!.id, totalLifetimeTokens: 55 });
    expect(again.lines.filter((line) => RENAMED.test(String(line.msg)))).toHaveLength(0);
  });

  it('PostgreSQL: renamed once on start, with their usage, totals and a log line', async () => {
    const databaseUrl = await freshDatabase();
    const storage = await createStorage({ databaseUrl, fallbackDir: tempDir(), logger: quietLogger() });
    const id = await keyWithUsage(storage);
    await storage.close();
    const sql = postgres(databaseUrl, { max: 1, onnotice: () => undefined });
    try {
      await sql.begin(async (tx) => {
        // Copy under the derived id, move what it owns, drop the original: as an old import left it.
        await tx`update api_keys set key_hash = 'x' || key_hash where id = ${id}`;
        await tx`insert into api_keys select ${derivedId}, substr(key_hash, 2), key_prefix, name, model, token_limit_per_5h, expiry_date, created_at, last_used, total_lifetime_tokens, total_requests from api_keys where id = ${id}`;
        await tx`update usage_buckets set key_id = ${derivedId} where key_id = ${id}`;
        await tx`update usage_records set key_id = ${derivedId} where key_id = ${id}`;
        await tx`delete from api_keys where id = ${id}`;
      });
    } finally {
      await sql.end();
    }

    const logs = captureLogs();
    opened.push(await createStorage({ databaseUrl, fallbackDir: tempDir(), logger: logs.logger }));
    const renamed = await expectRandomIdWithUsage(opened[0]!);
    expect(logs.lines.filter((line) => RENAMED.test(String(line.msg)))).toHaveLength(1);
    await opened.pop()!.close();

    const again = captureLogs();
    opened.push(await createStorage({ databaseUrl, fallbackDir: tempDir(), logger: again.logger }));
    expect((await opened[0]!.findKeyByDigest(digestKey(KEY)))?.id).toBe(renamed);
    expect(again.lines.filter((line) => RENAMED.test(String(line.msg)))).toHaveLength(0);
  });
});
