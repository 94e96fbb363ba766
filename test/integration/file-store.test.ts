// The file store (STORAGE=file) on real files: durable across close, crash and journal folding;
// torn and garbled journals; corrupt snapshots; the old JSON key file behind the example proxy;
// key changes by role.
import { randomBytes } from 'node:crypto';
import { appendFileSync, cpSync, existsSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import { ConfigError, ConflictError, NotFoundError, StorageError } from '../../src/errors.js';
import { digestKey } from '../../src/keys/secret.js';
import type { Logger } from '../../src/types.js';
import { bucketStart } from '../../src/quota/window.js';
import { createStorage } from '../../src/storage/create.js';
import { FileStorage } from '../../src/storage/file.js';
import type { KeyRecord, Storage, WindowUsage } from '../../src/storage/types.js';
import { quietLogger, tempDir } from '../helpers/gate.js';
import { captureLogs, ERROR, WARN } from '../helpers/logs.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const WINDOW = 5 * HOUR;
const SNAPSHOT = 'snapshot.json';
const JOURNAL = /^journal-\d{8}\.ndjson$/;

// ---------------------------------------------------------------------------------------------
// Helpers

/** Stores opened by a test; whatever is still open at its end is closed. */
const opened = new Set<Storage>();

afterEach(async () => {
  for (const storage of [...opened].reverse()) await storage.close().catch(() => undefined);
  opened.clear();
});

function open(dir: string, options: { role?: 'standalone' | 'fallback'; logger?: Logger } = {}): FileStorage {
  const storage = FileStorage.open({ dir, role: options.role ?? 'standalone', logger: options.logger ?? quietLogger() });
  opened.add(storage);
  return storage;
}

async function close(storage: Storage): Promise<void> {
  opened.delete(storage);
  await storage.close();
}

/** Admits then settles one request, the way the gate does. */
async function charge(storage: Storage, keyId: string, requestId: string, tokens: number, at: number): Promise<void> {
  const admission = await storage.admit({ keyId, tokenLimit: 1_000_000_000, estimate: 1, requestId, now: at, windowMs: WINDOW });
  if (!admission.admitted) throw new Error(`${requestId} was not admitted`);
  await storage.settle(admission.reservation, { id: requestId, keyId, tokens, at });
}

/** Every key with its window, as the store answers now. */
async function state(storage: Storage, now: number): Promise<{ key: KeyRecord; window: WindowUsage }[]> {
  const keys = await storage.listKeys();
  return Promise.all(keys.map(async (key) => ({ key, window: await storage.windowUsage(key.id, now, WINDOW) })));
}

const journalFiles = (dir: string): string[] => readdirSync(dir).filter((name) => JOURNAL.test(name)).sort();

/** Every data file of the directory, name → bytes (the lock file only says who has it open). */
function filesOf(dir: string): Map<string, Buffer> {
  return new Map(
    readdirSync(dir)
      .filter((name) => name !== 'lock')
      .sort()
      .map((name) => [name, readFileSync(join(dir, name))]),
  );
}

interface Population {
  alice: { id: string; key: string };
  bob: { id: string; key: string };
}

/** Two keys and five usage records (one of them zero tokens), all inside the window at `now`. */
async function populate(storage: Storage, now: number): Promise<Population> {
  const a = await storage.createKey({ name: 'alice', tokenLimit: 100_000, expiresAt: now + DAY, model: 'gpt-4o' }, now - 3 * HOUR);
  const b = await storage.createKey({ name: 'bob', tokenLimit: 5_000, expiresAt: now + DAY }, now - 3 * HOUR);
  await charge(storage, a.record.id, 'a-1', 100, now - 2 * HOUR);
  await charge(storage, a.record.id, 'a-2', 250, now - HOUR);
  await charge(storage, a.record.id, 'a-4', 0, now - 30 * MINUTE);
  // Settled last, but it happened earlier: last use stays the latest time.
  await charge(storage, a.record.id, 'a-3', 7, now - HOUR + 20 * MINUTE);
  await charge(storage, b.record.id, 'b-1', 40, now - 10 * MINUTE);
  return { alice: { id: a.record.id, key: a.key }, bob: { id: b.record.id, key: b.key } };
}

/** The population's numbers, written out (plus `extra` on alice), checked against the store. */
async function expectPopulation(storage: Storage, { alice, bob }: Population, now: number, extra = { tokens: 0, requests: 0, lastUsedAt: 0 }): Promise<void> {
  expect(await storage.getKey(alice.id)).toMatchObject({
    name: 'alice',
    model: 'gpt-4o',
    tokenLimit: 100_000,
    createdAt: now - 3 * HOUR,
    totalLifetimeTokens: 357 + extra.tokens,
    totalRequests: 4 + extra.requests,
    lastUsedAt: Math.max(now - 30 * MINUTE, extra.lastUsedAt),
  });
  expect(await storage.windowUsage(alice.id, now, WINDOW)).toEqual({ used: 357 + extra.tokens, reserved: 0, oldestBucketStart: bucketStart(now - 2 * HOUR) });
  expect(await storage.getKey(bob.id)).toMatchObject({ name: 'bob', totalLifetimeTokens: 40, totalRequests: 1, lastUsedAt: now - 10 * MINUTE });
  expect(await storage.windowUsage(bob.id, now, WINDOW)).toEqual({ used: 40, reserved: 0, oldestBucketStart: bucketStart(now - 10 * MINUTE) });
  expect((await storage.findKeyByDigest(digestKey(alice.key)))?.id).toBe(alice.id);
  expect((await storage.findKeyByDigest(digestKey(bob.key)))?.id).toBe(bob.id);
}

/**
 * A directory as a crash leaves it: the snapshot plus a journal of three records (60 tokens) on
 * one key, copied while the writer was alive and idle (every settle resolved, so fsynced).
 */
async function crashImage(now: number): Promise<{ dir: string; keyId: string; key: string }> {
  const live = tempDir();
  const storage = open(live);
  const { record, key } = await storage.createKey({ name: 'k', tokenLimit: 1_000_000, expiresAt: now + DAY }, now - HOUR);
  await charge(storage, record.id, 'r-1', 10, now - 40 * MINUTE);
  await charge(storage, record.id, 'r-2', 20, now - 30 * MINUTE);
  await charge(storage, record.id, 'r-3', 30, now - 20 * MINUTE);
  const dir = tempDir();
  cpSync(live, dir, { recursive: true });
  await close(storage);
  expect(journalFiles(dir)).toHaveLength(1);
  expect(existsSync(join(dir, SNAPSHOT))).toBe(true);
  return { dir, keyId: record.id, key };
}

async function expectSixty(storage: Storage, keyId: string, now: number, extra = 0, extraRequests = 0): Promise<void> {
  expect(await storage.getKey(keyId)).toMatchObject({ totalLifetimeTokens: 60 + extra, totalRequests: 3 + extraRequests });
  expect((await storage.windowUsage(keyId, now, WINDOW)).used).toBe(60 + extra);
}

// ---------------------------------------------------------------------------------------------

describe('file store: standalone durability', () => {
  it('keeps keys, totals and window usage exactly across close and reopen', async () => {
    const dir = tempDir();
    const now = Date.now();
    const first = open(dir);
    const population = await populate(first, now);
    await expectPopulation(first, population, now);
    const before = await state(first, now);
    await close(first);
    // Closing folded the journal into the snapshot: the reopen below reads the snapshot alone.
    expect(journalFiles(dir)).toEqual([]);

    const second = open(dir);
    expect(await state(second, now)).toEqual(before);
    await expectPopulation(second, population, now);
  });

  it('keeps every settled record when the process dies without closing, none counted twice', async () => {
    const dir = tempDir();
    const now = Date.now();
    const first = open(dir);
    const population = await populate(first, now);
    // A burst of concurrent requests, fsynced as a group.
    await Promise.all(Array.from({ length: 20 }, (_, i) => charge(first, population.alice.id, `burst-${i}`, i + 1, now - 5 * MINUTE)));
    // A record settled again (an acknowledgement lost and retried) counts once.
    const retried = await first.admit({ keyId: population.bob.id, tokenLimit: 5_000, estimate: 1, requestId: 'b-1', now, windowMs: WINDOW });
    if (!retried.admitted) throw new Error('not admitted');
    await first.settle(retried.reservation, { id: 'b-1', keyId: population.bob.id, tokens: 40, at: now - 10 * MINUTE });
    const extra = { tokens: 210, requests: 20, lastUsedAt: now - 5 * MINUTE };
    await expectPopulation(first, population, now, extra);
    const before = await state(first, now);

    // The settles resolved, so the records are on disk, in the journal (the snapshot predates them).
    const lines = journalFiles(dir).flatMap((name) => readFileSync(join(dir, name), 'utf8').split('\n').filter(Boolean));
    expect(lines).toHaveLength(25);

    // "Crash": the first store is never closed; a second one opens the same directory.
    const second = open(dir);
    expect(await state(second, now)).toEqual(before);
    await expectPopulation(second, population, now, extra);

    // And once that one has folded the journal and closed, a third sees the same numbers.
    await close(second);
    const third = open(dir);
    await expectPopulation(third, population, now, extra);
  });

  it('stays exact after the journal is folded into the snapshot, and when a folded journal is left behind', async () => {
    const dir = tempDir();
    const now = Date.now();
    const first = open(dir);
    const population = await populate(first, now);
    const journals = journalFiles(dir);
    expect(journals).toHaveLength(1);
    const folded = filesOf(dir);

    // A key change writes a snapshot, which folds the journal so far and deletes it.
    await first.createKey({ name: 'carol', tokenLimit: 10, expiresAt: now + DAY }, now);
    expect(journalFiles(dir)).toEqual([]);
    const snapshot = JSON.parse(readFileSync(join(dir, SNAPSHOT), 'utf8')) as { keys: KeyRecord[] };
    expect(snapshot.keys.find((key) => key.id === population.alice.id)).toMatchObject({ totalLifetimeTokens: 357, totalRequests: 4 });
    // A crash between writing that snapshot and deleting the folded journal leaves the journal
    // behind: its records are in the snapshot already and must not count again.
    const leftBehind = tempDir();
    cpSync(dir, leftBehind, { recursive: true });
    for (const name of journals) writeFileSync(join(leftBehind, name), folded.get(name)!);
    await expectPopulation(open(leftBehind), population, now);

    // Usage after the fold goes to a new journal; usage settling while a fold runs counts once.
    await charge(first, population.alice.id, 'after-fold', 11, now - 5 * MINUTE);
    const admitted = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const requestId = `during-fold-${i}`;
        const admission = await first.admit({ keyId: population.alice.id, tokenLimit: 100_000, estimate: 1, requestId, now, windowMs: WINDOW });
        if (!admission.admitted) throw new Error(`${requestId} was not admitted`);
        return admission.reservation;
      }),
    );
    const settle = (reservation: (typeof admitted)[number]): Promise<void> =>
      first.settle(reservation, { id: reservation.id, keyId: population.alice.id, tokens: 2, at: now - 4 * MINUTE });
    // In one tick: ten appends not yet on disk, a fold (snapshot, then the journal dropped), ten more.
    await Promise.all([...admitted.slice(0, 10).map(settle), first.updateKey(population.bob.id, { name: 'bob' }), ...admitted.slice(10).map(settle)]);
    const extra = { tokens: 51, requests: 21, lastUsedAt: now - 4 * MINUTE };
    await expectPopulation(first, population, now, extra);

    // Crash (no close): snapshot + the newer journal, each record once.
    const second = open(dir);
    await expectPopulation(second, population, now, extra);
    expect((await second.listKeys()).map((key) => key.name).sort()).toEqual(['alice', 'bob', 'carol']);

    // The same left-behind journal, restored after later folds: still not counted again.
    for (const name of journals) writeFileSync(join(dir, name), folded.get(name)!);
    const third = open(dir);
    await expectPopulation(third, population, now, extra);

    // A clean close and reopen after all that: still exact.
    await close(third);
    const fourth = open(dir);
    await expectPopulation(fourth, population, now, extra);
  });
});

describe('file store: damaged journals', () => {
  it('skips a torn last line with one warning naming the file, and keeps every complete record', async () => {
    const now = Date.now();
    const { dir, keyId } = await crashImage(now);
    const [name] = journalFiles(dir);
    const path = join(dir, name!);
    appendFileSync(path, `{"id":"torn","keyId":"${keyId}","tokens":99`); // a write cut short

    const logs = captureLogs();
    const second = open(dir, { logger: logs.logger });
    await expectSixty(second, keyId, now);
    expect(logs.at(WARN)).toHaveLength(1);
    expect(logs.at(WARN)[0]).toMatchObject({ file: path });
    expect(logs.at(ERROR)).toEqual([]);

    // New usage is not glued onto the torn line: a second crash still finds it.
    await charge(second, keyId, 'after-tear', 5, now - MINUTE);
    const third = open(dir, { logger: quietLogger() });
    await expectSixty(third, keyId, now, 5, 1);

    // Once folded, the torn file is set aside for an operator (never deleted) and nothing warns any more.
    await close(third);
    const quiet = captureLogs();
    const fourth = open(dir, { logger: quiet.logger });
    await expectSixty(fourth, keyId, now, 5, 1);
    expect(quiet.lines.filter((line) => (line.level as number) >= WARN)).toEqual([]);
    expect(fourth.health().quarantinedFiles).toEqual([expect.stringMatching(/journal-\d{8}\.quarantined-\d+\.ndjson$/)]);
    expect(readFileSync(fourth.health().quarantinedFiles[0]!, 'utf8')).toContain('"id":"torn"');
  });

  it('keeps the good lines around garbage and wrong JSON in the middle, with an error per bad line', async () => {
    const now = Date.now();
    const { dir, keyId } = await crashImage(now);
    const [name] = journalFiles(dir);
    const path = join(dir, name!);
    const good = readFileSync(path, 'utf8').split('\n').filter(Boolean);
    expect(good).toHaveLength(3);
    // Random bytes, no newline among them, sure not to be JSON.
    const garbage = Buffer.concat([Buffer.from([0xff, 0xfe, 0x00, 0x7b]), randomBytes(200).map((byte) => (byte === 0x0a ? 0x20 : byte))]);
    writeFileSync(path, Buffer.concat([Buffer.from(`${good[0]}\n`), garbage, Buffer.from(`\n${good[1]}\n{"id":5}\n${good[2]}\n`)]));

    const logs = captureLogs();
    const second = open(dir, { logger: logs.logger });
    await expectSixty(second, keyId, now);
    expect(logs.at(ERROR)).toHaveLength(2);
    expect(logs.at(ERROR).map((line) => ({ file: line.file, line: line.line }))).toEqual([
      { file: path, line: 2 },
      { file: path, line: 4 },
    ]);
    expect(logs.at(WARN)).toEqual([]);

    // The store carries on and folds cleanly.
    await charge(second, keyId, 'after-garbage', 1, now - MINUTE);
    await close(second);
    const third = open(dir);
    await expectSixty(third, keyId, now, 1, 1);
  });
});

describe('file store: corrupt snapshot', () => {
  const variants = (real: Buffer): [string, Buffer][] => [
    ['garbage bytes', Buffer.concat([Buffer.from([0xff, 0x00, 0xfe]), randomBytes(256)])],
    ['a truncated copy of a real snapshot', real.subarray(0, Math.floor(real.length / 2))],
    ['valid JSON of the wrong shape', Buffer.from('{"keys":"x"}')],
  ];

  it('refuses to start standalone, names the snapshot and leaves every file untouched', async () => {
    const now = Date.now();
    const image = await crashImage(now);
    const real = readFileSync(join(image.dir, SNAPSHOT));
    // A key file, to be sure a broken snapshot is not taken for a missing one and imported over.
    const keyFile = join(tempDir(), 'keys.json');
    writeFileSync(keyFile, JSON.stringify({ keys: [{ key: 'pk_user_1', name: 'u', token_limit_per_5h: 10, expiry_date: new Date(now + DAY).toISOString() }] }));

    for (const [what, bytes] of variants(real)) {
      const dir = tempDir();
      cpSync(image.dir, dir, { recursive: true });
      writeFileSync(join(dir, SNAPSHOT), bytes);
      const before = filesOf(dir);
      const snapshotPath = join(dir, SNAPSHOT);

      expect(() => FileStorage.open({ dir, role: 'standalone', logger: quietLogger() }), what).toThrow(ConfigError);
      expect(() => FileStorage.open({ dir, role: 'standalone', logger: quietLogger() }), what).toThrow(snapshotPath);
      const viaCreate = await createStorage({ storage: 'file', fallbackDir: dir, keyFile, logger: quietLogger() }).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(viaCreate, what).toBeInstanceOf(ConfigError);
      expect((viaCreate as Error).message, what).toContain(snapshotPath);

      expect(filesOf(dir), what).toEqual(before);
      expect(readFileSync(snapshotPath).equals(bytes), what).toBe(true);
    }
  });

  it('as a fallback, moves the corrupt snapshot aside (bytes kept), logs an error and opens empty', async () => {
    const now = Date.now();
    const image = await crashImage(now);
    const real = readFileSync(join(image.dir, SNAPSHOT));

    for (const [what, bytes] of variants(real)) {
      const dir = tempDir();
      cpSync(image.dir, dir, { recursive: true });
      writeFileSync(join(dir, SNAPSHOT), bytes);
      const [journal] = journalFiles(dir);
      const journalBytes = readFileSync(join(dir, journal!));

      const logs = captureLogs();
      const storage = open(dir, { role: 'fallback', logger: logs.logger });
      expect(await storage.listKeys(), what).toEqual([]);
      expect(await storage.findKeyByDigest(digestKey(image.key)), what).toBeUndefined();

      const aside = readdirSync(dir).filter((name) => /^snapshot\.corrupt-.+\.json$/.test(name));
      expect(aside, what).toHaveLength(1);
      expect(readFileSync(join(dir, aside[0]!)).equals(bytes), what).toBe(true);
      expect(existsSync(join(dir, SNAPSHOT)), what).toBe(false);
      expect(logs.at(ERROR), what).toHaveLength(1);
      expect(logs.at(ERROR)[0], what).toMatchObject({ movedTo: join(dir, aside[0]!) });

      // The journal (usage the database may still lack) is kept, untouched, pending replay.
      expect(storage.health().journalPendingRecords, what).toBe(3);
      expect(readFileSync(join(dir, journal!)).equals(journalBytes), what).toBe(true);
      await close(storage);
    }
  });
});

describe('file store: the old JSON key file behind the example proxy', () => {
  let upstream: Upstream | undefined;
  let server: Server | undefined;
  afterEach(async () => {
    server?.closeAllConnections();
    if (server) await new Promise((resolve) => server!.close(resolve));
    await upstream?.close();
    server = undefined;
    upstream = undefined;
  });

  const iso = (ms: number): string => new Date(ms).toISOString();

  it('imports it: old plaintext keys authenticate, usage in the window counts, no plaintext on disk', async () => {
    const now = Date.now();
    const keyFile = join(tempDir(), 'api_keys.json');
    writeFileSync(
      keyFile,
      JSON.stringify(
        {
          keys: [
            {
              key: 'pk_user_123',
              name: 'Alice',
              model: 'gpt-4o-mini',
              token_limit_per_5h: 50_000,
              expiry_date: iso(now + 30 * DAY),
              created_at: iso(now - 90 * DAY),
              last_used: iso(now - HOUR),
              total_lifetime_tokens: 123_456,
              usage_windows: [
                { window_start: iso(now - 30 * HOUR), tokens_used: 9_000 },
                { window_start: iso(now - 6 * HOUR), tokens_used: 5_000 },
                { window_start: iso(now - 2 * HOUR), tokens_used: 1_200 },
                { window_start: iso(now - HOUR), tokens_used: 300 },
              ],
            },
            {
              key: 'pk_user_456',
              name: 'Bob',
              model: null,
              token_limit_per_5h: 20_000,
              expiry_date: iso(now + 7 * DAY),
              created_at: iso(now - 10 * DAY),
              last_used: null,
              total_lifetime_tokens: 0,
              usage_windows: [],
            },
            {
              key: 'pk_user_789',
              name: 'Carol (left)',
              model: 'gpt-4o',
              token_limit_per_5h: 10_000,
              expiry_date: iso(now - DAY),
              created_at: iso(now - 200 * DAY),
              last_used: iso(now - 2 * DAY),
              total_lifetime_tokens: 777,
              usage_windows: [{ window_start: iso(now - 49 * HOUR), tokens_used: 777 }],
            },
            {
              key: 'pk_team_ops',
              name: 'Ops team',
              model: null,
              token_limit_per_5h: 1_000,
              expiry_date: iso(now + DAY),
              created_at: iso(now - 5 * DAY),
              last_used: iso(now - 20 * MINUTE),
              total_lifetime_tokens: 4_000,
              usage_windows: [
                { window_start: iso(now - 20 * HOUR), tokens_used: 3_000 },
                { window_start: iso(now - 20 * MINUTE), tokens_used: 1_000 },
              ],
            },
          ],
        },
        null,
        2,
      ),
    );
    const plaintexts = ['pk_user_123', 'pk_user_456', 'pk_user_789', 'pk_team_ops'];

    const dir = tempDir();
    const logs = captureLogs();
    const storage = await createStorage({ storage: 'file', fallbackDir: dir, keyFile, logger: logs.logger });
    opened.add(storage);
    expect(existsSync(join(dir, SNAPSHOT))).toBe(true);
    const firstId = (await storage.findKeyByDigest(digestKey('pk_user_123')))!.id;
    expect(digestKey('pk_user_123')).not.toContain(firstId.slice(4));

    upstream = await startUpstream(json({ usage: { total_tokens: 42 } }));
    const { app } = createProxyApp({ storage, upstreamUrl: upstream.url, gate: { logger: logs.logger } });
    server = await new Promise<Server>((resolve) => {
      const s = app.listen(0, '127.0.0.1', () => resolve(s));
    });
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const call = async (key: string): Promise<number> => {
      const response = await fetch(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
      });
      await response.arrayBuffer();
      return response.status;
    };
    const stats = async (key: string): Promise<Record<string, unknown> & { current_usage: Record<string, unknown> }> => {
      const response = await fetch(`${base}/stats`, { headers: { authorization: `Bearer ${key}` } });
      expect(response.status).toBe(200);
      return (await response.json()) as Record<string, unknown> & { current_usage: Record<string, unknown> };
    };

    expect(await call('pk_user_123')).toBe(200);
    expect(await call('pk_user_123')).toBe(200);
    expect(await call('pk_user_456')).toBe(200);
    expect(await call('pk_user_789')).toBe(403); // expired
    expect(await call('pk_user_000')).toBe(401); // never issued
    expect(await call('pk_team_ops')).toBe(429); // its 1 000 in-window tokens fill its limit
    expect(upstream.hits).toBe(3);

    await expect.poll(async () => (await stats('pk_user_123')).total_requests).toBe(2);
    const alice = await stats('pk_user_123');
    expect(alice).toMatchObject({
      name: 'Alice',
      model: 'gpt-4o-mini',
      token_limit_per_5h: 50_000,
      expiry_date: iso(now + 30 * DAY),
      created_at: iso(now - 90 * DAY),
      is_expired: false,
      total_lifetime_tokens: 123_456 + 2 * 42,
      total_requests: 2,
    });
    // Only the windows of the last 5 h (1 200 + 300), plus the new usage.
    expect(alice.current_usage.tokens_used_in_current_window).toBe(1_500 + 2 * 42);
    expect(alice.current_usage.remaining_tokens).toBe(50_000 - 1_500 - 2 * 42);
    expect(Date.parse(alice.last_used as string)).toBeGreaterThan(now - HOUR);

    await expect.poll(async () => (await stats('pk_user_456')).total_requests).toBe(1);
    expect((await stats('pk_user_456')).total_lifetime_tokens).toBe(42);
    expect((await stats('pk_user_456')).current_usage.tokens_used_in_current_window).toBe(42);

    const carol = await stats('pk_user_789');
    expect(carol).toMatchObject({ is_expired: true, total_lifetime_tokens: 777, total_requests: 0, last_used: iso(now - 2 * DAY) });
    expect(carol.current_usage.tokens_used_in_current_window).toBe(0);

    const ops = await stats('pk_team_ops');
    expect(ops).toMatchObject({ total_lifetime_tokens: 4_000, total_requests: 0 });
    expect(ops.current_usage.tokens_used_in_current_window).toBe(1_000);

    const noPlaintext = (): void => {
      const files = filesOf(dir);
      expect(files.size).toBeGreaterThan(0);
      for (const [name, bytes] of files) for (const plaintext of plaintexts) expect(bytes.includes(plaintext), `${plaintext} in ${name}`).toBe(false);
    };
    // While running (snapshot and journal), and once closed (everything folded into the snapshot).
    expect(journalFiles(dir).length).toBeGreaterThan(0);
    noPlaintext();
    opened.delete(storage);
    await storage.close();
    noPlaintext();

    // A restart with the same KEY_FILE does not import it again over the live store.
    const restarted = await createStorage({ storage: 'file', fallbackDir: dir, keyFile, logger: quietLogger() });
    opened.add(restarted);
    // Ids are random, and a restart keeps them: the snapshot holds them.
    expect(await restarted.findKeyByDigest(digestKey('pk_user_123'))).toMatchObject({ id: firstId, totalLifetimeTokens: 123_456 + 84, totalRequests: 2 });
  });

  it('refuses a key file with bad entries in one error naming each, and writes nothing', async () => {
    const now = Date.now();
    const keyFile = join(tempDir(), 'api_keys.json');
    const expiry = new Date(now + DAY).toISOString();
    writeFileSync(
      keyFile,
      JSON.stringify({
        keys: [
          { key: 'pk_user_123', name: 'fine', token_limit_per_5h: 100, expiry_date: expiry },
          { key: 'pk_user_2', token_limit_per_5h: 100, expiry_date: expiry },
          { key: 'pk_user_3', name: 'negative', token_limit_per_5h: -5, expiry_date: expiry },
          { key: 'pk_user_123', name: 'duplicate', token_limit_per_5h: 100, expiry_date: expiry },
          { key: 'pk_user_5', name: 'bad date', token_limit_per_5h: 100, expiry_date: 'next tuesday' },
        ],
      }),
    );
    const dir = tempDir();
    const error = await createStorage({ storage: 'file', fallbackDir: dir, keyFile, logger: quietLogger() }).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    for (const field of ['keys[1].name', 'keys[2].token_limit_per_5h', 'keys[3].key', 'keys[4].expiry_date']) expect(message).toContain(field);
    expect(message).not.toContain('keys[0].');
    expect(message).not.toMatch(/pk_user_\d/); // it ends up in logs: no key values in it
    expect(message).toContain('4 problem');
    expect(existsSync(join(dir, SNAPSHOT))).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('file store: key changes', () => {
  it('standalone: creates, updates and deletes keys durably, across a crash and a reopen', async () => {
    const dir = tempDir();
    const now = Date.now();
    const first = open(dir);
    const alice = await first.createKey({ name: 'alice', tokenLimit: 100, expiresAt: now + DAY }, now - HOUR);
    const bob = await first.createKey({ name: 'bob', tokenLimit: 200, expiresAt: now + DAY }, now - HOUR + 1);
    const carol = await first.createKey({ name: 'carol', tokenLimit: 300, expiresAt: now + DAY, key: 'pk_chosen_carol' }, now - HOUR + 2);
    // Each change is on disk once its call resolved: a store opened right after (a crash) sees it.
    const seenAfterCrash = async (): Promise<KeyRecord[]> => {
      const image = tempDir();
      cpSync(dir, image, { recursive: true }); // what a crash now would leave
      return open(image).listKeys();
    };
    expect(await seenAfterCrash()).toEqual([alice.record, bob.record, carol.record]);
    await first.updateKey(alice.record.id, { name: 'alice2', tokenLimit: 7, expiresAt: now + 2 * DAY, model: 'gpt-4o' });
    const updated = { ...alice.record, name: 'alice2', tokenLimit: 7, expiresAt: now + 2 * DAY, model: 'gpt-4o' };
    expect(await seenAfterCrash()).toEqual([updated, bob.record, carol.record]);
    expect(await first.deleteKey(bob.record.id)).toBe(true);
    expect(await seenAfterCrash()).toEqual([updated, carol.record]);
    const expected = [
      { ...alice.record, name: 'alice2', tokenLimit: 7, expiresAt: now + 2 * DAY, model: 'gpt-4o' },
      carol.record,
    ];
    expect(await first.listKeys()).toEqual(expected);

    const check = async (storage: Storage): Promise<void> => {
      expect(await storage.listKeys()).toEqual(expected);
      expect(await storage.getKey(bob.record.id)).toBeUndefined();
      expect(await storage.findKeyByDigest(digestKey(bob.key))).toBeUndefined();
      expect(await storage.findKeyByDigest(digestKey(alice.key))).toEqual(expected[0]);
      expect(await storage.findKeyByDigest(digestKey('pk_chosen_carol'))).toEqual(carol.record);
    };
    await check(first);
    await close(first);
    const reopened = open(dir);
    await check(reopened);
    // The reopened store still knows which key values are taken.
    await expect(reopened.createKey({ name: 'again', tokenLimit: 1, expiresAt: now + DAY, key: 'pk_chosen_carol' })).rejects.toBeInstanceOf(ConflictError);
    await expect(reopened.updateKey(bob.record.id, { name: 'x' })).rejects.toBeInstanceOf(NotFoundError);
    expect(await reopened.deleteKey(bob.record.id)).toBe(false);
  });

  it('fallback: key changes reject with a transient StorageError and change nothing', async () => {
    const dir = tempDir();
    const now = Date.now();
    const standalone = open(dir);
    const { record } = await standalone.createKey({ name: 'mirrored', tokenLimit: 100, expiresAt: now + DAY }, now);
    await close(standalone);
    const before = filesOf(dir);

    const fallback = open(dir, { role: 'fallback' });
    const attempts: [string, () => Promise<unknown>][] = [
      ['createKey', () => fallback.createKey({ name: 'new', tokenLimit: 1, expiresAt: now + DAY })],
      ['updateKey', () => fallback.updateKey(record.id, { name: 'renamed' })],
      ['deleteKey', () => fallback.deleteKey(record.id)],
    ];
    for (const [what, attempt] of attempts) {
      const error = await attempt().then(
        () => undefined,
        (caught: unknown) => caught,
      );
      expect(error, what).toBeInstanceOf(StorageError);
      expect((error as StorageError).transient, what).toBe(true);
    }
    expect(await fallback.listKeys()).toEqual([record]);
    expect(filesOf(dir)).toEqual(before);
  });
});

describe('one process per file store', () => {
  it('refuses a second process with a clear error, and takes over the lock of a dead one', async () => {
    const { spawnSync } = await import('node:child_process');
    const dir = tempDir();
    writeFileSync(join(dir, 'lock'), '999999999'); // left by a process that no longer runs
    const storage = await createStorage({ storage: 'file', fallbackDir: dir, logger: quietLogger() });
    try {
      const cli = spawnSync(process.execPath, ['dist/src/cli/main.js', 'keys', 'list'], {
        cwd: join(import.meta.dirname, '../..'),
        env: { ...process.env, STORAGE: 'file', FALLBACK_DIR: dir, DATABASE_URL: '' },
        encoding: 'utf8',
      });
      expect(cli.status).toBe(1);
      expect(cli.stderr.trim()).toBe(`tokengate: the file store ${dir} is in use by process ${process.pid} on ${hostname()}; each gate instance needs its own FALLBACK_DIR`);
    } finally {
      await storage.close();
    }
    expect(existsSync(join(dir, 'lock'))).toBe(false);
  });

  it("refuses a lock that another host keeps fresh, and takes it over once that host stops touching it", async () => {
    const dir = tempDir();
    const lock = join(dir, 'lock');
    // Another container on the same volume: its pid means nothing here, only its heartbeat does.
    writeFileSync(lock, JSON.stringify({ host: 'other-container', pid: process.pid, token: 'theirs' }));
    const refused = await createStorage({ storage: 'file', fallbackDir: dir, logger: quietLogger() }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(ConfigError);
    expect((refused as Error).message).toBe(`the file store ${dir} is in use by process ${process.pid} on other-container; each gate instance needs its own FALLBACK_DIR`);

    const minuteAgo = new Date(Date.now() - 60_000);
    utimesSync(lock, minuteAgo, minuteAgo);
    const storage = await createStorage({ storage: 'file', fallbackDir: dir, logger: quietLogger() });
    try {
      expect(JSON.parse(readFileSync(lock, 'utf8'))).toMatchObject({ host: hostname(), pid: process.pid });
      expect(readdirSync(dir).filter((name) => name.startsWith('lock'))).toEqual(['lock']);
    } finally {
      await storage.close();
    }
    expect(existsSync(lock)).toBe(false);
  });

  it('takes over a lock naming its own pid on this host (a restarted container is pid 1 again)', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'lock'), JSON.stringify({ host: hostname(), pid: process.pid, token: 'previous-run' }));
    const storage = await createStorage({ storage: 'file', fallbackDir: dir, logger: quietLogger() });
    await storage.close();
    expect(existsSync(join(dir, 'lock'))).toBe(false);
  });
});
