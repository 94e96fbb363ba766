// Several limits per key on the file store: the plan through the gate, restarts, a model-scoped limit, each limit's window, and settles the fallback hands over.
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { buildKey } from '../../src/keys/build.js';
import { bucketStartFor, parseLimitSpec, type Limit } from '../../src/quota/limits.js';
import { FileStorage } from '../../src/storage/file.js';
import type { SnapshotKey } from '../../src/storage/snapshot.js';
import type { Reservation, Storage } from '../../src/storage/types.js';
import { close, journalFiles, open, SNAPSHOT } from '../helpers/file-store.js';
import { quietLogger, startGate, tempDir, type Gate } from '../helpers/gate.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** Every answer reports this many tokens. */
const USED = 250;
const limits = (...specs: string[]): Limit[] => specs.map((spec) => parseLimitSpec(spec, 'test'));
const PLAN = limits('5h=1000', '7d=1500');

let upstream: Upstream;
beforeAll(async () => {
  upstream = await startUpstream(json({ usage: { total_tokens: USED } }));
});
afterAll(async () => {
  await upstream?.close();
});

/** The example proxy gated on a standalone file store in a new temp directory. */
async function fileGate(): Promise<Gate> {
  const gate = await startGate(upstream, {}, FileStorage.open({ dir: tempDir(), role: 'standalone', logger: quietLogger() }));
  onTestFinished(() => gate.close());
  return gate;
}

async function ask(gate: Gate, key: string, model = 'gpt-4o'): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }> {
  const response = await fetch(`${gate.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ model }) });
  return { status: response.status, headers: response.headers, body: (await response.json()) as Record<string, unknown> };
}

/** Admits one request on `plan` and settles it with `tokens`, the way the gate does. */
async function spend(storage: Storage, keyId: string, requestId: string, tokens: number, at: number, plan = PLAN): Promise<void> {
  const admission = await storage.admit({ keyId, tokenLimit: 1000, limits: plan, estimate: 1, requestId, now: at, windowMs: 5 * HOUR });
  if (!admission.admitted) throw new Error(`${requestId} was not admitted`);
  await storage.settle(admission.reservation, { id: requestId, keyId, tokens, at });
}

/** Each limit's name and the tokens recorded in its window at `now`. */
async function used(storage: Storage, keyId: string, now: number, plan = PLAN): Promise<[string, number][]> {
  return (await storage.limitsUsage!(keyId, plan, now)).map((window) => [window.limit.name, window.used]);
}

const snapshotKeys = (dir: string): SnapshotKey[] => (JSON.parse(readFileSync(join(dir, SNAPSHOT), 'utf8')) as { keys: SnapshotKey[] }).keys;

describe('file store: a 5-hour and a weekly limit on one key, through the gate', () => {
  it('admits until the 5-hour limit, again after 5 hours, then refuses by the weekly limit with a Retry-After pointing at its window', async () => {
    const gate = await fileGate();
    const hits = upstream.hits;
    const { key, record } = await gate.storage.createKey({ name: 'plan', limits: PLAN, expiresAt: gate.clock.now() + 30 * DAY }, gate.clock.now());
    let settled = 0;
    const admitted = async (): Promise<void> => {
      const answer = await ask(gate, key);
      expect(answer.status).toBe(200);
      expect(answer.headers.get('ratelimit-policy')).toBe('"tokens-5h";q=1000;qu="tokens";w=18000, "tokens-7d";q=1500;qu="tokens";w=604800');
      await gate.settled(record.id, ++settled);
    };
    for (let i = 0; i < 4; i++) await admitted();
    const five = await ask(gate, key);
    expect(five.status).toBe(429);
    expect(five.body).toMatchObject({ error: { type: 'rate_limit_exceeded', limit: '5h', tokens_used: 1000, tokens_limit: 1000 } });
    expect(Number(five.headers.get('retry-after'))).toBeGreaterThan(4 * 3600);
    expect(Number(five.headers.get('retry-after'))).toBeLessThanOrEqual(5 * 3600);
    expect(five.headers.get('ratelimit')).toMatch(/^"tokens-5h";r=0;t=\d+, "tokens-7d";r=500;t=\d+$/);

    gate.clock.advance(5 * HOUR + MINUTE);
    await admitted();
    await admitted();
    const weekly = await ask(gate, key);
    expect(weekly.status).toBe(429);
    expect(weekly.body).toMatchObject({ error: { limit: '7d', tokens_used: 1500, tokens_limit: 1500 } });
    const retryAfter = Number(weekly.headers.get('retry-after'));
    // The first usage leaves the weekly window 7 days after its 30-minute bucket began, 5 h 1 min ago or up to 30 min more.
    expect(retryAfter).toBeGreaterThan(7 * 24 * 3600 - 5 * 3600 - 31 * 60);
    expect(retryAfter).toBeLessThanOrEqual(7 * 24 * 3600 - 5 * 3600);
    // Six admitted, and neither refusal reached the upstream.
    expect(upstream.hits).toBe(hits + 6);
  });

  it('refuses only the requests a model-scoped limit matches; the unscoped limit counts all of them', async () => {
    const gate = await fileGate();
    const scoped = limits('5h=100000', 'glm:5h=500@glm-4.7*');
    const { key, record } = await gate.storage.createKey({ name: 'scoped', limits: scoped, expiresAt: gate.clock.now() + DAY }, gate.clock.now());
    for (let i = 1; i <= 2; i++) {
      expect((await ask(gate, key, 'glm-4.7-flash')).status).toBe(200);
      await gate.settled(record.id, i);
    }
    const refused = await ask(gate, key, 'glm-4.7');
    expect(refused.status).toBe(429);
    expect(refused.body).toMatchObject({ error: { limit: 'glm' } });
    const other = await ask(gate, key, 'glm-4.6');
    expect(other.status).toBe(200);
    expect(other.headers.get('ratelimit-policy')).toBe('"tokens-5h";q=100000;qu="tokens";w=18000');
    await gate.settled(record.id, 3);
    expect(await used(gate.storage, record.id, gate.clock.now(), scoped)).toEqual([
      ['5h', 3 * USED],
      ['glm', 2 * USED],
    ]);
  });
});

describe('file store: several limits across restarts', () => {
  it('keeps the weekly usage from the snapshot after a close, and from the journal after a crash', async () => {
    const dir = tempDir();
    // Snapshots keep the buckets that still count by the real clock, so the usage is set around it.
    const now = Date.now();
    const first = open(dir);
    const { record } = await first.createKey({ name: 'plan', limits: PLAN, expiresAt: now + 30 * DAY }, now - DAY);
    await spend(first, record.id, 'old', 1000, now - 6 * HOUR);
    await spend(first, record.id, 'recent', 300, now - HOUR);
    expect(await used(first, record.id, now)).toEqual([
      ['5h', 300],
      ['7d', 1300],
    ]);
    await close(first);
    // The 5h limit's buckets are kept for 5 hours, the weekly limit's for 7 days.
    const [kept] = snapshotKeys(dir);
    expect(kept!.buckets).toEqual([[bucketStartFor(now - HOUR, 5 * HOUR), 300]]);
    expect(kept!.limitBuckets).toEqual({
      '7d': [
        [bucketStartFor(now - 6 * HOUR, 7 * DAY), 1000],
        [bucketStartFor(now - HOUR, 7 * DAY), 300],
      ],
    });

    const second = open(dir);
    expect(await used(second, record.id, now)).toEqual([
      ['5h', 300],
      ['7d', 1300],
    ]);
    await spend(second, record.id, 'last', 200, now);
    // A crash now: the last record is in the journal only.
    expect(journalFiles(dir)).toHaveLength(1);
    const image = tempDir();
    cpSync(dir, image, { recursive: true });
    const third = open(image);
    expect(await used(third, record.id, now)).toEqual([
      ['5h', 500],
      ['7d', 1500],
    ]);
    const refused = await third.admit({ keyId: record.id, tokenLimit: 1000, limits: PLAN, estimate: 1, requestId: 'more', now, windowMs: 5 * HOUR });
    expect(refused).toMatchObject({ admitted: false, refusedBy: '7d' });
    // It passes once the oldest weekly bucket, begun a little over 6 hours ago, leaves the window.
    const wait = (refused as { retryAfterMs: number }).retryAfterMs;
    expect(wait).toBeGreaterThan(7 * DAY - 6 * HOUR - 30 * MINUTE);
    expect(wait).toBeLessThanOrEqual(7 * DAY - 6 * HOUR);
  });

  it('loads a snapshot written before it kept other limits: their usage starts empty, the 5h usage is kept', async () => {
    const dir = tempDir();
    const now = Date.now();
    const first = open(dir);
    const { record } = await first.createKey({ name: 'plan', limits: PLAN, expiresAt: now + 30 * DAY }, now);
    await spend(first, record.id, 'r1', 400, now - HOUR);
    await close(first);
    const snapshot = JSON.parse(readFileSync(join(dir, SNAPSHOT), 'utf8')) as { keys: Partial<SnapshotKey>[] };
    for (const key of snapshot.keys) delete key.limitBuckets;
    writeFileSync(join(dir, SNAPSHOT), JSON.stringify(snapshot));

    const second = open(dir);
    expect(await used(second, record.id, now)).toEqual([
      ['5h', 400],
      ['7d', 0],
    ]);
  });

  it("changes a key's limits: the snapshot keeps the buckets of the limits it has now", async () => {
    const dir = tempDir();
    const now = Date.now();
    const storage = open(dir);
    const { record } = await storage.createKey({ name: 'plan', limits: PLAN, expiresAt: now + 30 * DAY }, now);
    await spend(storage, record.id, 'r1', 400, now);
    const monthly = limits('5h=1000', 'month:30d=5000');
    await storage.updateKey(record.id, { limits: monthly });
    expect(snapshotKeys(dir)[0]).toMatchObject({ buckets: [[bucketStartFor(now, 5 * HOUR), 400]], limitBuckets: { month: [] } });
    await spend(storage, record.id, 'r2', 100, now, monthly);
    expect(await used(storage, record.id, now, monthly)).toEqual([
      ['5h', 500],
      ['month', 100],
    ]);
  });
});

describe('file store: each limit\'s window', () => {
  it('tells what each limit holds recorded and reserved, and its oldest counting bucket', async () => {
    const storage = open(tempDir());
    const now = Date.now();
    const { record } = await storage.createKey({ name: 'plan', limits: PLAN, expiresAt: now + 30 * DAY }, now);
    await spend(storage, record.id, 'r1', 600, now - 6 * HOUR);
    await spend(storage, record.id, 'r2', 100, now - HOUR);
    const admission = await storage.admit({ keyId: record.id, tokenLimit: 1000, limits: PLAN, estimate: 50, requestId: 'r3', now, windowMs: 5 * HOUR });
    if (!admission.admitted) throw new Error('r3 was not admitted');
    const [five, weekly] = PLAN;
    expect(await storage.limitsUsage(record.id, PLAN, now)).toEqual([
      { limit: five, used: 100, reserved: 50, oldestBucketStart: bucketStartFor(now - HOUR, 5 * HOUR) },
      { limit: weekly, used: 700, reserved: 50, oldestBucketStart: bucketStartFor(now - 6 * HOUR, 7 * DAY) },
    ]);
    // The 5h meter is the key's own: the window of token_limit_per_5h shows the same.
    expect(await storage.windowUsage(record.id, now, 5 * HOUR)).toEqual({ used: 100, reserved: 50, oldestBucketStart: bucketStartFor(now - HOUR, 5 * HOUR) });
    await storage.release(admission.reservation);
    expect((await storage.limitsUsage(record.id, PLAN, now)).map((window) => window.reserved)).toEqual([0, 0]);
  });
});

describe('file store as the fallback mirror: reservations the database made', () => {
  it("counts a settle whose reservation carries the database's meters in each limit's bucket, once however often it is settled", async () => {
    const dir = tempDir();
    const now = Date.now();
    const mirror = open(dir, { role: 'fallback' });
    // The database's keys and buckets, as its snapshotKeys gives them.
    const { record, keyHash } = buildKey({ name: 'plan', limits: PLAN, expiresAt: now + 30 * DAY }, now - DAY);
    const five = bucketStartFor(now - HOUR, 5 * HOUR);
    const week = bucketStartFor(now - 2 * DAY, 7 * DAY);
    mirror.refresh([{ ...record, keyHash, buckets: [[five, 300]], limitBuckets: { '7d': [[week, 900]] } }]);
    expect(await used(mirror, record.id, now)).toEqual([
      ['5h', 300],
      ['7d', 900],
    ]);

    const reservation: Reservation = {
      id: 'pg-1',
      keyId: record.id,
      tokens: 100,
      partial: false,
      meters: PLAN.map((limit) => ({ limit: limit.name, windowMs: limit.windowMs, tokens: 100, partial: false })),
    };
    const usage = { id: 'pg-1', keyId: record.id, tokens: 80, at: now };
    await mirror.settle(reservation, usage);
    await mirror.settle(reservation, usage);
    expect(await used(mirror, record.id, now)).toEqual([
      ['5h', 380],
      ['7d', 980],
    ]);
    expect(await mirror.getKey(record.id)).toMatchObject({ totalLifetimeTokens: 80, totalRequests: 1 });
    // Journaled once, with its buckets, for the database's replay.
    expect(mirror.journalLength).toBe(1);
    const lines = journalFiles(dir).flatMap((name) => readFileSync(join(dir, name), 'utf8').split('\n').filter(Boolean));
    expect(lines.map((line) => (JSON.parse(line) as { buckets: unknown }).buckets)).toEqual([
      [
        ['5h', bucketStartFor(now, 5 * HOUR)],
        ['7d', bucketStartFor(now, 7 * DAY)],
      ],
    ]);

    // A gate restarted during the outage counts the same from the mirror's snapshot and its journal.
    await close(mirror);
    const restarted = open(dir, { role: 'fallback' });
    expect(await used(restarted, record.id, now)).toEqual([
      ['5h', 380],
      ['7d', 980],
    ]);
  });
});
