// Retention: pruning keeps usage_records and usage_buckets bounded and never drops what still counts, on real SQLite and PostgreSQL.
import Database from 'better-sqlite3';
import postgres from 'postgres';
import { beforeAll, describe, expect, it } from 'vitest';
import { readEnvironment } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { createStorage, describeUrl } from '../../src/storage/create.js';
import type { PostgresStorage } from '../../src/storage/postgres.js';
import type { SqliteStorage } from '../../src/storage/sqlite.js';
import type { Storage, UsageRecord } from '../../src/storage/types.js';
import { BUCKET_MS } from '../../src/quota/window.js';
import { newRecordId } from '../../src/usage/record-id.js';
import { cli, expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { quietLogger } from '../helpers/gate.js';
import { freshDatabase } from '../helpers/postgres.js';
import { tempDbPath } from '../helpers/temp.js';

const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;
const START = Date.parse('2030-01-01T00:00:00Z');

/** Reads the tables behind a store's back, on a connection of its own. */
interface Peek {
  count(table: 'usage_records' | 'usage_buckets' | 'reservations'): Promise<number>;
  hasRecord(id: string): Promise<boolean>;
  /** Tokens in the key's buckets that count at `now` under `windowMs`, straight from the table. */
  windowSum(keyId: string, now: number, windowMs: number): Promise<number>;
  exec(statement: string): Promise<void>;
  close(): Promise<void>;
}

interface Backend {
  name: 'sqlite' | 'postgres';
  /** Config selecting a fresh database of this backend. */
  fresh(): Promise<{ databasePath?: string; databaseUrl?: string }>;
  peek(config: { databasePath?: string; databaseUrl?: string }): Peek;
}

const backends: Backend[] = [
  {
    name: 'sqlite',
    fresh: async () => ({ databasePath: tempDbPath() }),
    peek: ({ databasePath }) => {
      const db = new Database(databasePath!);
      return {
        count: async (table) => (db.prepare(`select count(*) as n from ${table}`).get() as { n: number }).n,
        hasRecord: async (id) => db.prepare('select 1 from usage_records where id = ?').get(id) !== undefined,
        windowSum: async (keyId, now, windowMs) =>
          (db.prepare('select coalesce(sum(tokens), 0) as n from usage_buckets where key_id = ? and bucket_start > ?').get(keyId, now - windowMs) as { n: number }).n,
        exec: async (statement) => void db.exec(statement),
        close: async () => void db.close(),
      };
    },
  },
  {
    name: 'postgres',
    fresh: async () => ({ databaseUrl: await freshDatabase() }),
    peek: ({ databaseUrl }) => {
      const sql = postgres(databaseUrl!, { max: 1, onnotice: () => undefined });
      return {
        count: async (table) => Number((await sql.unsafe(`select count(*) as n from ${table}`))[0]!.n),
        hasRecord: async (id) => (await sql`select 1 from usage_records where id = ${id}`).length > 0,
        windowSum: async (keyId, now, windowMs) =>
          Number((await sql`select coalesce(sum(tokens), 0) as n from usage_buckets where key_id = ${keyId} and bucket_start > ${now - windowMs}`)[0]!.n),
        exec: async (statement) => void (await sql.unsafe(statement)),
        close: () => sql.end({ timeout: 5 }),
      };
    },
  },
];

/** A store whose pruner reads the clock the test moves (its own timer fires only after a minute). */
async function openStore(config: { databasePath?: string; databaseUrl?: string }, clock: { now: number }, settings: { recordRetentionMs: number; windowMs: number }) {
  const storage = await createStorage({ ...config, ...settings, fallback: false, logger: quietLogger(), now: () => clock.now });
  const pruner = (storage as SqliteStorage | PostgresStorage).pruner;
  if (!pruner) throw new Error('the store was opened without a pruner');
  return { storage, pruner };
}

/** Admits and settles one request of `tokens` at `at`, through the store's own API. */
async function record(storage: Storage, keyId: string, at: number, tokens: number, id = newRecordId(at)): Promise<UsageRecord> {
  const admission = await storage.admit({ keyId, tokenLimit: 1e12, estimate: 1, requestId: id, now: at, windowMs: 5 * 60 * MINUTE });
  if (!admission.admitted) throw new Error('not admitted');
  const usage = { id, keyId, tokens, at };
  await storage.settle(admission.reservation, usage);
  return usage;
}

for (const backend of backends) {
  describe(`pruning on ${backend.name}`, () => {
    it('keeps usage_records and usage_buckets bounded over 10^5 requests (half of them 0-token) with a retention of seconds', async () => {
      const config = await backend.fresh();
      const clock = { now: START };
      const retentionMs = 30_000;
      const windowMs = 10 * MINUTE;
      const { storage, pruner } = await openStore(config, clock, { recordRetentionMs: retentionMs, windowMs });
      const peek = backend.peek(config);
      try {
        const keys = await Promise.all(Array.from({ length: 10 }, (_, i) => storage.createKey({ name: `k${i}`, tokenLimit: 1e12, expiresAt: START + 365 * DAY }, START)));
        const stepMs = 100; // 10^5 requests over 10^4 simulated seconds: 16 windows of 10 minutes
        const group = 1000;
        const total = 100_000;
        let pruned = 0; // by the passes this test runs
        for (let done = 0; done < total; done += group) {
          await Promise.all(
            Array.from({ length: group }, (_, i) => {
              const n = done + i;
              clock.now = START + n * stepMs;
              const keyId = keys[n % keys.length]!.record.id;
              const id = newRecordId(clock.now);
              // Settled as a replayed record is (the fallback's way): no admission round trip per request.
              return storage.settle({ id, keyId, tokens: 0, partial: false }, { id, keyId, tokens: n % 2 === 0 ? 0 : 7, at: clock.now });
            }),
          );
          const counts = await pruner.run();
          pruned += counts.usageRecords;
          // Kept: the records of the last 30 s (300 of them) and nothing older.
          expect(await peek.count('usage_records')).toBeLessThanOrEqual(retentionMs / stepMs + 1);
          // Kept per key: the buckets of the window, the spare one, and the one being filled.
          expect(await peek.count('usage_buckets')).toBeLessThanOrEqual(keys.length * (windowMs / BUCKET_MS + 2));
        }
        // Every request was recorded, and pruning touched no key's totals.
        const lifetime = (await storage.listKeys()).reduce((sum, key) => sum + key.totalRequests, 0);
        expect(lifetime).toBe(total);
        // What the passes deleted is all the rest (the store's own timer may have run one as well on a slow machine).
        expect(pruned).toBeGreaterThan(total - (retentionMs / stepMs + 1) - 2 * group);
      } finally {
        await peek.close();
        await storage.close();
      }
    }, 240_000);

    it('never prunes a record id within the retention (a replay of it changes nothing) nor a bucket that still counts', async () => {
      const config = await backend.fresh();
      const clock = { now: START };
      const retentionMs = 10_000;
      const windowMs = 5 * 60 * MINUTE;
      const { storage, pruner } = await openStore(config, clock, { recordRetentionMs: retentionMs, windowMs });
      const peek = backend.peek(config);
      try {
        const { record: key } = await storage.createKey({ name: 'k', tokenLimit: 1e12, expiresAt: START + 365 * DAY }, START);
        // Usage spread over seven hours: the first two leave the window.
        for (let minute = 0; minute < 7 * 60; minute += 5) await record(storage, key.id, START + minute * MINUTE, 100);
        const last = await record(storage, key.id, START + 7 * 60 * MINUTE, 42);
        clock.now = last.at + retentionMs - 1;

        const usedBefore = await storage.windowUsage(key.id, clock.now, windowMs);
        const sumBefore = await peek.windowSum(key.id, clock.now, windowMs);
        const totalsBefore = await storage.getKey(key.id);
        const counts = await pruner.run();
        expect(counts.usageRecords).toBe(7 * 12); // every record but the last is older than 10 s
        expect(counts.usageBuckets).toBeGreaterThan(0);
        expect(await peek.hasRecord(last.id)).toBe(true);
        expect(await peek.windowSum(key.id, clock.now, windowMs)).toBe(sumBefore);
        expect(await storage.windowUsage(key.id, clock.now, windowMs)).toEqual(usedBefore);

        // The replay of the record kept changes nothing: not the totals, not the window.
        const reservation = { id: last.id, keyId: key.id, tokens: 0, partial: false };
        await storage.settle(reservation, last);
        expect(await storage.getKey(key.id)).toEqual(totalsBefore);
        expect(await peek.windowSum(key.id, clock.now, windowMs)).toBe(sumBefore);

        // Once past the retention it goes too.
        clock.now = last.at + retentionMs + 1;
        await pruner.run();
        expect(await peek.hasRecord(last.id)).toBe(false);
        // A bucket is kept while it counts, and for one bucket more; then it goes.
        const lastBucket = Math.floor(last.at / BUCKET_MS) * BUCKET_MS;
        clock.now = lastBucket + windowMs - 1;
        await pruner.run();
        expect(await peek.windowSum(key.id, clock.now, windowMs)).toBe(42);
        clock.now = lastBucket + windowMs + BUCKET_MS - 1;
        await pruner.run();
        expect(await peek.count('usage_buckets')).toBe(1);
        clock.now = lastBucket + windowMs + BUCKET_MS;
        expect((await pruner.run()).usageBuckets).toBe(1);
        expect(await peek.count('usage_buckets')).toBe(0);
      } finally {
        await peek.close();
        await storage.close();
      }
    });
  });
}

describe('which stores prune', () => {
  it('a store opened by createStorage() prunes, one opened with prune: false (the CLI key commands) does not', async () => {
    const databasePath = tempDbPath();
    const gate = await createStorage({ databasePath, logger: quietLogger() });
    await gate.close();
    const tool = await createStorage({ databasePath, prune: false, logger: quietLogger() });
    await tool.close();
    expect((gate as SqliteStorage).pruner).toBeDefined();
    expect((tool as SqliteStorage).pruner).toBeUndefined();
  });

  it('refuses a RECORD_RETENTION that is not a duration with a ConfigError naming it', () => {
    const env = { RECORD_RETENTION: 'a week' };
    expect(() => readEnvironment(env)).toThrow(ConfigError);
    expect(() => readEnvironment(env)).toThrow(/^RECORD_RETENTION must be a duration/);
  });
});

describe('pruning reservations on postgres', () => {
  it('deletes reservations a minute past their expiry and keeps the others', async () => {
    const config = { databaseUrl: await freshDatabase() };
    const clock = { now: START };
    const { storage, pruner } = await openStore(config, clock, { recordRetentionMs: DAY, windowMs: 5 * 60 * MINUTE });
    const peek = backends[1]!.peek(config);
    try {
      const { record: key } = await storage.createKey({ name: 'k', tokenLimit: 1000, expiresAt: START + DAY }, START);
      await peek.exec(
        `insert into reservations (id, key_id, tokens, partial, expires_at) values ` +
          `('gone', '${key.id}', 5, false, ${START - BUCKET_MS}), ('just-expired', '${key.id}', 5, false, ${START - 1}), ('live', '${key.id}', 5, false, ${START + 1})`,
      );
      expect(await pruner.run()).toEqual({ usageRecords: 0, usageBuckets: 0, reservations: 1 });
      expect(await peek.count('reservations')).toBe(2);
    } finally {
      await peek.close();
      await storage.close();
    }
  });
});

describe('tokengate db prune', () => {
  beforeAll(requireBuiltCli);

  /** Usage from 8 days ago (past the default 7-day retention) and from now, through the store's API. */
  async function seed(config: { databasePath?: string; databaseUrl?: string }): Promise<{ recent: UsageRecord }> {
    const storage = await createStorage({ ...config, fallback: false, prune: false, logger: quietLogger() });
    try {
      const now = Date.now();
      const { record: key } = await storage.createKey({ name: 'k', tokenLimit: 1e9, expiresAt: now + DAY });
      for (let i = 0; i < 5; i++) await record(storage, key.id, now - 8 * DAY + i * MINUTE, 10);
      return { recent: await record(storage, key.id, now, 10) };
    } finally {
      await storage.close();
    }
  }

  it('prunes an SQLite file by hand, names it, and reports the counts (also as JSON)', async () => {
    const databasePath = tempDbPath();
    const { recent } = await seed({ databasePath });
    const run = cli(databasePath, ['db', 'prune']);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toBe(`sqlite ${databasePath}: pruned 5 usage records older than 7d, 5 usage buckets outside the 5h window\n`);
    const peek = backends[0]!.peek({ databasePath });
    try {
      expect(await peek.count('usage_records')).toBe(1);
      expect(await peek.hasRecord(recent.id)).toBe(true);
      expect(await peek.count('usage_buckets')).toBe(1);
    } finally {
      await peek.close();
    }
    const again = cli(databasePath, ['db', 'prune', '--json']);
    expect(again.status).toBe(0);
    expect(JSON.parse(again.stdout)).toEqual({ store: `sqlite ${databasePath}`, usage_records: 0, usage_buckets: 0 });
  });

  it('prunes PostgreSQL by hand, naming host and database without credentials, expired reservations included', async () => {
    const databaseUrl = await freshDatabase();
    await seed({ databaseUrl });
    const run = cli('', ['db', 'prune', '--json'], { DATABASE_URL: databaseUrl, RECORD_RETENTION: '1d' });
    expect(run.status).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({ store: `postgres ${describeUrl(databaseUrl)}`, usage_records: 5, usage_buckets: 5, reservations: 0 });
    expect(run.stdout).not.toMatch(/postgres:\/\//);
  });

  it('refuses a RECORD_RETENTION that is not a duration, or shorter than the window, naming the variable', () => {
    const databasePath = tempDbPath();
    expectFailure(cli(databasePath, ['db', 'prune'], { RECORD_RETENTION: '604800000' }), /RECORD_RETENTION must be a duration such as 90s, 30m, 12h or 7d/);
    expectFailure(cli(databasePath, ['db', 'prune', '--window', '7d'], { RECORD_RETENTION: '3d' }), /RECORD_RETENTION must be at least the window \(7d\)/);
  });

  it('has --help', () => {
    const run = cli(tempDbPath(), ['db', 'prune', '--help']);
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/RECORD_RETENTION/);
    expect(run.stdout).toMatch(/--window <duration>/);
  });
});
