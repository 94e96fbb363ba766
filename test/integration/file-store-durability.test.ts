// The standalone file store keeps keys, totals and window usage exact across close, crash and journal folding.
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { digestKey } from '../../src/keys/secret.js';
import { bucketStart } from '../../src/quota/window.js';
import type { KeyRecord, Storage, WindowUsage } from '../../src/storage/types.js';
import { charge, close, filesOf, journalFiles, open, SNAPSHOT, WINDOW } from '../helpers/file-store.js';
import { tempDir } from '../helpers/temp.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** Every key with its window, as the store answers now. */
async function state(storage: Storage, now: number): Promise<{ key: KeyRecord; window: WindowUsage }[]> {
  const keys = await storage.listKeys();
  return Promise.all(keys.map(async (key) => ({ key, window: await storage.windowUsage(key.id, now, WINDOW) })));
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
