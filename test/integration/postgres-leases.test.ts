// PostgreSQL leases: most admissions of a busy key without a round trip, request-by-request near the
// limit, leases counted by other instances, given back on close, forgotten after a crash.
import { randomUUID } from 'node:crypto';
import postgres from 'postgres';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { drizzle } from 'drizzle-orm/postgres-js';
import { connectPostgres, migratePostgres } from '../../src/db/postgres.js';
import * as schema from '../../src/db/schema/postgres.js';
import { PostgresStorage } from '../../src/storage/postgres.js';
import { LEASE_REFRESH_MS, LEASE_TTL_MS, LEASE_VIEW_MS } from '../../src/quota/leases.js';
import type { Admission } from '../../src/storage/types.js';
import { quietLogger } from '../helpers/gate.js';
import { freshDatabase } from '../helpers/postgres.js';

const WINDOW = 5 * 3600_000;
let url: string;
let direct: postgres.Sql;
const opened: PostgresStorage[] = [];

async function open(): Promise<PostgresStorage> {
  const storage = new PostgresStorage(connectPostgres(url));
  opened.push(storage);
  return storage;
}

beforeEach(async () => {
  url = await freshDatabase();
  await migratePostgres(url, 5, quietLogger());
  direct = postgres(url, { max: 1, onnotice: () => undefined });
});

afterEach(async () => {
  await Promise.all(opened.splice(0).map((storage) => storage.close().catch(() => undefined)));
  await direct.end();
});

/** A store whose connection counts the statements it sends. */
function countingStore(): { storage: PostgresStorage; statements: () => number } {
  let sent = 0;
  const sql = postgres(url, { max: 5, onnotice: () => undefined, debug: () => void sent++ });
  const storage = new PostgresStorage({ sql, db: drizzle(sql, { schema }) });
  opened.push(storage);
  return { storage, statements: () => sent };
}

const leaseRows = () => direct`select key_id, tokens::int from reservations where starts_with(id, 'lease:') order by id`;

describe('PostgreSQL leases', () => {
  it('admit 200 requests of a busy key with a handful of transactions, and record them in a few batches', async () => {
    const { storage, statements } = countingStore();
    const { record } = await storage.createKey({ name: 'busy', tokenLimit: 10_000_000, expiresAt: Date.now() + 3600_000 });
    const before = statements();
    const admissions: Admission[] = [];
    for (let i = 0; i < 200; i++) {
      admissions.push(await storage.admit({ keyId: record.id, tokenLimit: 10_000_000, estimate: 100, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW }));
    }
    expect(admissions.every((a) => a.admitted)).toBe(true);
    // One grant (a few statements in one transaction), plus one more for every 2 s the loop takes.
    expect(statements() - before).toBeLessThan(20);
    const last = admissions.at(-1)!;
    expect(last.window).toEqual({ used: 0, reserved: 200 * 100, oldestBucketStart: undefined });

    const beforeSettles = statements();
    await Promise.all(admissions.map((a, i) => (a.admitted ? storage.settle(a.reservation, { id: `r${i}`, keyId: record.id, tokens: 60, at: Date.now() }) : undefined)));
    expect(statements() - beforeSettles).toBeLessThan(10);
    expect(await storage.getKey(record.id)).toMatchObject({ totalRequests: 200, totalLifetimeTokens: 200 * 60 });
    expect(await storage.windowUsage(record.id, Date.now(), WINDOW)).toMatchObject({ used: 200 * 60, reserved: 0 });
    // The lease row gave up what was charged: used + held never exceeds the limit.
    const [lease] = await leaseRows();
    expect(lease!.tokens + 200 * 60).toBeLessThanOrEqual(10_000_000);
  });

  it("of a busy key read the window again in the background, so that the key's requests never wait for its view to run out", async () => {
    const { storage, statements } = countingStore();
    const { record } = await storage.createKey({ name: 'busy', tokenLimit: 10_000_000, expiresAt: Date.now() + 3600_000 });
    const at = Date.now();
    const admit = (now: number) => storage.admit({ keyId: record.id, tokenLimit: 10_000_000, estimate: 100, requestId: randomUUID(), now, windowMs: WINDOW });
    expect(await admit(at)).toMatchObject({ admitted: true }); // the grant: its view is of `at`
    // Late in the view's life: admitted on the lease at once, and the window is read again behind it.
    const sent = statements();
    const second = await admit(at + LEASE_REFRESH_MS + 100);
    expect(second).toMatchObject({ admitted: true, window: { reserved: 200 } });
    const expiry = () => direct`select expires_at::bigint as at from reservations where starts_with(id, 'lease:')`.then((rows) => rows.map((row) => Number(row.at)));
    await expect.poll(expiry).toEqual([at + LEASE_REFRESH_MS + 100 + LEASE_TTL_MS]);
    expect(statements()).toBeGreaterThan(sent);
    // Past the first view's life, within the second's: no round trip.
    const quiet = statements();
    expect(await admit(at + LEASE_VIEW_MS + 100)).toMatchObject({ admitted: true, window: { used: 0, reserved: 300 } });
    expect(statements()).toBe(quiet);
  });

  it('of a key with several limits, one per limit, admit its busy requests and record them per limit in a few statements', async () => {
    const { storage, statements } = countingStore();
    const plan = [
      { name: '5h', tokens: 10_000_000, windowMs: WINDOW },
      { name: '7d', tokens: 20_000_000, windowMs: 7 * 24 * 3600_000 },
    ];
    const { record } = await storage.createKey({ name: 'busy', limits: plan, expiresAt: Date.now() + 3600_000 });
    const before = statements();
    const admissions: Admission[] = [];
    for (let i = 0; i < 200; i++) {
      admissions.push(await storage.admit({ keyId: record.id, tokenLimit: 10_000_000, limits: plan, estimate: 100, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW }));
    }
    expect(admissions.every((a) => a.admitted)).toBe(true);
    expect(statements() - before).toBeLessThan(20);
    expect(admissions.at(-1)!.limits?.map((seen) => [seen.limit.name, seen.used, seen.reserved])).toEqual([
      ['5h', 0, 200 * 100],
      ['7d', 0, 200 * 100],
    ]);
    expect(await direct`select limit_name, key_id from reservations order by limit_name`).toEqual([
      { limit_name: '5h', key_id: record.id },
      { limit_name: '7d', key_id: record.id },
    ]);

    const beforeSettles = statements();
    await Promise.all(admissions.map((a, i) => (a.admitted ? storage.settle(a.reservation, { id: `r${i}`, keyId: record.id, tokens: 60, at: Date.now() }) : undefined)));
    expect(statements() - beforeSettles).toBeLessThan(10);
    expect(await storage.getKey(record.id)).toMatchObject({ totalRequests: 200, totalLifetimeTokens: 200 * 60 });
    expect((await storage.limitsUsage(record.id, plan, Date.now())).map((seen) => [seen.limit.name, seen.used, seen.reserved])).toEqual([
      ['5h', 200 * 60, 0],
      ['7d', 200 * 60, 0],
    ]);
    // Each lease row gave up what was charged against its limit: used + held never exceeds it.
    for (const [index, lease] of (await direct`select tokens::int from reservations order by limit_name`).entries()) {
      expect(lease.tokens + 200 * 60).toBeLessThanOrEqual(plan[index]!.tokens);
    }
  });

  it('of a key whose scoped limit is spent keep serving its other models from the unscoped lease', async () => {
    const { storage, statements } = countingStore();
    const plan = [
      { name: '5h', tokens: 1_000_000, windowMs: WINDOW },
      { name: 'glm', tokens: 100, windowMs: WINDOW, models: ['glm-*'] },
    ];
    const { record } = await storage.createKey({ name: 'mixed', limits: plan, expiresAt: Date.now() + 3600_000 });
    const admit = (limits: typeof plan) => storage.admit({ keyId: record.id, tokenLimit: 1_000_000, limits, estimate: 30, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW });
    expect((await admit([plan[0]!])).admitted).toBe(true); // the 5h lease is granted
    const glm: Admission[] = [];
    for (let i = 0; i < 6; i++) glm.push(await admit(plan));
    expect(glm.map((a) => (a.admitted ? a.reservation.meters!.map((meter) => meter.tokens) : (a as { refusedBy?: string }).refusedBy))).toEqual([[30, 30], [30, 30], [30, 30], [30, 10], 'glm', 'glm']);
    // The spent glm limit shrank its own lease only: the 5h lease still admits without the database.
    const before = statements();
    for (let i = 0; i < 20; i++) expect((await admit([plan[0]!])).admitted).toBe(true);
    expect(statements() - before).toBe(0);
  });

  it("of a key with several limits give up what blocks a request decided alone: a lease whose row leaves its limit too little shrinks", async () => {
    const storage = await open();
    const plan = [
      { name: '5h', tokens: 1000, windowMs: WINDOW },
      { name: 'glm', tokens: 40, windowMs: WINDOW, models: ['glm-*'] },
    ];
    const { record } = await storage.createKey({ name: 'tight', limits: plan, expiresAt: Date.now() + 3600_000 });
    const admit = (limits: typeof plan) => storage.admit({ keyId: record.id, tokenLimit: 1000, limits, estimate: 30, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW });
    expect((await admit([plan[0]!])).admitted).toBe(true); // a 5h lease of 120, 30 in flight
    // Another instance holds what else there is: the 5h lease's own row is what leaves too little.
    await direct`insert into reservations (id, key_id, limit_name, tokens, partial, expires_at) values ('elsewhere', ${record.id}, '5h', 870, false, ${Date.now() + 60_000})`;
    const glm = await admit(plan); // glm has too little for a lease: decided alone
    if (!glm.admitted) throw new Error('refused');
    expect(glm.reservation.meters!.map((meter) => [meter.limit, meter.tokens, meter.partial])).toEqual([
      ['5h', 30, false],
      ['glm', 30, false],
    ]);
    const [lease] = await direct`select tokens::int from reservations where starts_with(id, 'lease:') and limit_name = '5h'`;
    expect(lease!.tokens).toBe(30); // what is in flight on it, no more
  });

  it('decide a key near its limit request by request: a full reservation, then one partial, then nothing', async () => {
    const storage = await open();
    const { record } = await storage.createKey({ name: 'small', tokenLimit: 100, expiresAt: Date.now() + 3600_000 });
    const admit = () => storage.admit({ keyId: record.id, tokenLimit: 100, estimate: 30, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW });
    const results: Admission[] = [];
    for (let i = 0; i < 5; i++) results.push(await admit());
    expect(results.map((a) => (a.admitted ? a.reservation.tokens : 'refused'))).toEqual([30, 30, 30, 10, 'refused']);
    expect(results.map((a) => a.admitted && a.reservation.partial)).toEqual([false, false, false, true, false]);
    expect(results[4]!.window).toMatchObject({ used: 0, reserved: 100 });
    // Whatever went through the lease or alone, the database holds exactly the 100 tokens in flight.
    const [held] = await direct`select sum(tokens)::int as n from reservations where key_id = ${record.id}`;
    expect(held!.n).toBe(100);
  });

  it('are counted by another instance, and given back when their instance closes', async () => {
    const [a, b] = [await open(), await open()];
    const { record } = await a.createKey({ name: 'shared', tokenLimit: 1600, expiresAt: Date.now() + 3600_000 });
    const first = await a.admit({ keyId: record.id, tokenLimit: 1600, estimate: 10, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW });
    expect(first.admitted).toBe(true);
    const [lease] = await leaseRows();
    expect(lease).toEqual({ key_id: record.id, tokens: 100 }); // 1/16 of the limit
    // b sees a's whole lease as reserved; a counts only what it has in flight.
    expect((await b.windowUsage(record.id, Date.now(), WINDOW)).reserved).toBe(100);
    expect((await a.windowUsage(record.id, Date.now(), WINDOW)).reserved).toBe(10);
    const onB = await b.admit({ keyId: record.id, tokenLimit: 1600, estimate: 10, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW });
    expect(onB).toMatchObject({ admitted: true, window: { reserved: 110 } });

    await a.close();
    expect((await leaseRows()).map((row) => row.tokens)).toEqual([100]); // b's lease only
    expect((await b.windowUsage(record.id, Date.now(), WINDOW)).reserved).toBe(10);
  });

  it('of an instance that crashed stop counting one TTL after they were taken', async () => {
    const crashed = connectPostgres(url);
    const storage = await open();
    const { record } = await storage.createKey({ name: 'orphaned', tokenLimit: 1600, expiresAt: Date.now() + 3600_000 });
    const now = Date.now();
    const lost = new PostgresStorage(crashed);
    expect((await lost.admit({ keyId: record.id, tokenLimit: 1600, estimate: 10, requestId: randomUUID(), now, windowMs: WINDOW })).admitted).toBe(true);
    await crashed.sql.end(); // gone without giving anything back (its renewal timer does not keep the test alive)

    expect((await storage.windowUsage(record.id, now + LEASE_TTL_MS - 1, WINDOW)).reserved).toBe(100);
    expect((await storage.windowUsage(record.id, now + LEASE_TTL_MS, WINDOW)).reserved).toBe(0);
    const later = await storage.admit({ keyId: record.id, tokenLimit: 1600, estimate: 1500, requestId: randomUUID(), now: now + LEASE_TTL_MS, windowMs: WINDOW });
    expect(later).toMatchObject({ admitted: true, reservation: { tokens: 1500, partial: false } });
  });

  it('never let two instances together record more than the limit, with estimates above actual usage', async () => {
    const [a, b] = [await open(), await open()];
    const limit = 20_000;
    const { record } = await a.createKey({ name: 'contended', tokenLimit: limit, expiresAt: Date.now() + 3600_000 });
    let admitted = 0;
    await Promise.all(
      Array.from({ length: 400 }, async (_, i) => {
        const store = i % 2 ? a : b;
        const requestId = randomUUID();
        const admission = await store.admit({ keyId: record.id, tokenLimit: limit, estimate: 120, requestId, now: Date.now(), windowMs: WINDOW });
        if (!admission.admitted) return;
        admitted++;
        await new Promise((resolve) => setTimeout(resolve, i % 7));
        await store.settle(admission.reservation, { id: requestId, keyId: record.id, tokens: Math.min(100, admission.reservation.tokens), at: Date.now() });
      }),
    );
    const key = await a.getKey(record.id);
    expect(key?.totalRequests).toBe(admitted);
    expect(key?.totalLifetimeTokens).toBeLessThanOrEqual(limit);
    // Leases near the limit go back to request-by-request decisions, not to early refusals: most of the budget is used.
    expect(key?.totalLifetimeTokens).toBeGreaterThan(limit / 2);
  });
});
