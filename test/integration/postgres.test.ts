// PostgreSQL across instances: shared budgets, crashed reservations, indexes, migrations, retries.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/postgres-js';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import { createStorage } from '../../src/storage/create.js';
import { recordingStatement } from '../../src/storage/postgres.js';
import type { Storage } from '../../src/storage/types.js';
import { StorageError } from '../../src/errors.js';
import { createLogger } from '../../src/logger.js';
import { tempDir, quietLogger } from '../helpers/gate.js';
import { captureLogs, ERROR } from '../helpers/logs.js';
import { freshDatabase } from '../helpers/postgres.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

// These tests are about the database itself: a long fallback timeout keeps the file fallback from
// taking over when a loaded machine makes a query slow.
const HOUR = 3600_000;
const WINDOW = 5 * HOUR;
const ROOT = join(import.meta.dirname, '../..');

async function serve(storage: Storage, upstream: Upstream): Promise<{ url: string; close(): Promise<void> }> {
  const { app } = createProxyApp({ storage, upstreamUrl: upstream.url, gate: { logger: createLogger(new PassThrough()) } });
  const server: http.Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('two gate instances on one PostgreSQL database', () => {
  let upstream: Upstream;
  let url: string;
  const actual = 40;
  beforeAll(async () => {
    upstream = await startUpstream((_req, _body, res) => {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ usage: { total_tokens: actual } }));
      }, 10);
    });
    url = await freshDatabase();
  });
  afterAll(() => upstream.close());

  it('holds the limit under 200 concurrent requests split across both, counting each admitted request once', async () => {
    const [a, b] = await Promise.all([createStorage({ fallbackDir: tempDir(), logger: quietLogger(), fallbackTimeoutMs: 30_000, databaseUrl: url, poolSize: 5 }), createStorage({ fallbackDir: tempDir(), logger: quietLogger(), fallbackTimeoutMs: 30_000, databaseUrl: url, poolSize: 5 })]);
    const [gateA, gateB] = await Promise.all([serve(a!, upstream), serve(b!, upstream)]);
    try {
      const limit = 3000;
      const { key, record } = await a!.createKey({ name: 'shared', tokenLimit: limit, expiresAt: Date.now() + HOUR });
      const body = JSON.stringify({ model: 'm', messages: [], max_tokens: 50 }); // estimate 50 + ceil(45 / 4) > 40
      const responses = await Promise.all(
        Array.from({ length: 200 }, (_, i) =>
          fetch(`${i % 2 ? gateA.url : gateB.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body }).then(async (r) => {
            await r.text();
            return r.status;
          }),
        ),
      );
      expect(responses.filter((s) => s !== 200 && s !== 429)).toEqual([]);
      const admitted = responses.filter((s) => s === 200).length;
      expect(admitted).toBeGreaterThan(0);
      expect(responses).toContain(429);
      await expect.poll(async () => (await a!.getKey(record.id))?.totalRequests, { timeout: 5000 }).toBe(admitted);
      const final = await b!.getKey(record.id);
      expect(final?.totalLifetimeTokens).toBe(admitted * actual);
      expect(final?.totalLifetimeTokens).toBeLessThanOrEqual(limit);
      expect(await a!.windowUsage(record.id, Date.now(), WINDOW)).toMatchObject({ used: admitted * actual, reserved: 0 });
    } finally {
      await Promise.all([gateA.close(), gateB.close()]);
      await Promise.all([a!.close(), b!.close()]);
    }
  });

  it('hold each limit of a key with two under 200 concurrent requests split across both, counting each admitted request once in each', async () => {
    const url = await freshDatabase();
    const open = () => createStorage({ fallbackDir: tempDir(), logger: quietLogger(), fallbackTimeoutMs: 30_000, databaseUrl: url, poolSize: 5 });
    const [a, b] = await Promise.all([open(), open()]);
    const [gateA, gateB] = await Promise.all([serve(a!, upstream), serve(b!, upstream)]);
    const database = postgres(url, { max: 1, onnotice: () => undefined });
    try {
      // Every request counts against 5h; the glm ones also against a weekly glm limit, which binds first for them.
      const plan = [
        { name: '5h', tokens: 3000, windowMs: WINDOW },
        { name: 'glm', tokens: 1000, windowMs: 7 * 24 * HOUR, models: ['glm-*'] },
      ];
      const { key, record } = await a!.createKey({ name: 'plan', limits: plan, expiresAt: Date.now() + HOUR });
      const responses = await Promise.all(
        Array.from({ length: 200 }, async (_, i) => {
          const model = i % 4 < 2 ? 'glm-4.7' : 'gpt-4o';
          const body = JSON.stringify({ model, messages: [], max_tokens: 50 }); // an estimate above 40
          const response = await fetch(`${i % 2 ? gateA.url : gateB.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body });
          const answer = (await response.json()) as { error?: { limit?: string } };
          return { model, status: response.status, limit: answer.error?.limit };
        }),
      );
      expect(responses.filter(({ status }) => status !== 200 && status !== 429)).toEqual([]);
      const admitted = responses.filter(({ status }) => status === 200);
      const glm = admitted.filter(({ model }) => model === 'glm-4.7').length;
      expect(new Set(responses.map(({ limit }) => limit))).toEqual(new Set([undefined, '5h', 'glm']));
      await expect.poll(async () => (await a!.getKey(record.id))?.totalRequests, { timeout: 5000 }).toBe(admitted.length);
      expect((await b!.getKey(record.id))?.totalLifetimeTokens).toBe(admitted.length * actual);
      const used = Object.fromEntries((await database`select limit_name, sum(tokens)::int as tokens from usage_buckets where key_id = ${record.id} group by limit_name`).map((row) => [row.limit_name, row.tokens]));
      expect(used).toEqual({ '5h': admitted.length * actual, glm: glm * actual });
      // Within the limit, but for the one request admitted on a partial reservation.
      expect(used['5h']).toBeLessThanOrEqual(3000 + actual);
      expect(used.glm).toBeLessThanOrEqual(1000 + actual);
      expect(await database`select id from reservations where key_id = ${record.id} and not starts_with(id, 'lease:')`).toEqual([]);
    } finally {
      await database.end();
      await Promise.all([gateA.close(), gateB.close()]);
      await Promise.all([a!.close(), b!.close()]);
    }
  });
});

describe('PostgreSQL storage', () => {
  let url: string;
  let storage: Storage;
  beforeAll(async () => {
    url = await freshDatabase();
    storage = await createStorage({ fallbackDir: tempDir(), logger: quietLogger(), fallbackTimeoutMs: 30_000, databaseUrl: url, reservationTtlMs: 60_000 });
  });
  afterAll(() => storage.close());

  it("builds each change of a key's limits on the one before, however many arrive at once from two instances", async () => {
    const other = await createStorage({ databaseUrl: url, fallback: false, logger: quietLogger() });
    try {
      for (let round = 0; round < 10; round++) {
        const { record } = await storage.createKey({ name: `race ${round}`, tokenLimit: 100, expiresAt: Date.now() + HOUR });
        // One sets a plan, the other the 5h limit alone: whichever goes second must see the first.
        await Promise.all([
          storage.updateKey(record.id, { limits: [{ name: '5h', tokens: 1000, windowMs: WINDOW }, { name: '7d', tokens: 5000, windowMs: 7 * 24 * HOUR }] }),
          other.updateKey(record.id, { tokenLimit: 2000 }),
        ]);
        const final = (await storage.getKey(record.id))!;
        const five = final.limits === null ? final.tokenLimit : (JSON.parse(final.limits) as { name: string; tokens: number }[]).find((limit) => limit.name === '5h')!.tokens;
        expect(final.tokenLimit, `round ${round}`).toBe(five);
        expect([1000, 2000]).toContain(five);
      }
    } finally {
      await other.close();
    }
  });

  it('stops counting the reservations of a crashed instance after the reservation TTL', async () => {
    const now = Date.UTC(2026, 10, 28, 12);
    const { record } = await storage.createKey({ name: 'ttl', tokenLimit: 100, expiresAt: now + HOUR }, now);
    const crashed = await createStorage({ fallbackDir: tempDir(), logger: quietLogger(), fallbackTimeoutMs: 30_000, databaseUrl: url, reservationTtlMs: 60_000 });
    const held = await crashed.admit({ keyId: record.id, tokenLimit: 100, estimate: 100, requestId: 'lost', now, windowMs: WINDOW });
    expect(held.admitted).toBe(true);
    await crashed.close(); // never settles: its process is gone
    const admit = (at: number, requestId: string) => storage.admit({ keyId: record.id, tokenLimit: 100, estimate: 10, requestId, now: at, windowMs: WINDOW });
    expect((await admit(now + 59_999, 'early')).admitted).toBe(false);
    expect(await admit(now + 60_000, 'later')).toMatchObject({ admitted: true, window: { used: 0, reserved: 10 } });
  });

  it('answers a retried admission (its first acknowledgement lost) with the reservation it already made', async () => {
    const now = Date.now();
    const { record } = await storage.createKey({ name: 'retry', tokenLimit: 100, expiresAt: now + HOUR }, now);
    const request = { keyId: record.id, tokenLimit: 100, estimate: 100, requestId: 'same-request', now, windowMs: WINDOW };
    const first = await storage.admit(request);
    const again = await storage.admit(request);
    expect(first).toMatchObject({ admitted: true, reservation: { tokens: 100 } });
    expect(again).toMatchObject({ admitted: true, reservation: { id: 'same-request', tokens: 100 } });
    expect((await storage.windowUsage(record.id, now, WINDOW)).reserved).toBe(100);
  });

  it('uses indexes for admission and recording, however many keys and buckets there are', async () => {
    const sql = postgres(url, { max: 1 });
    try {
      const now = Date.now();
      // 10^5 other keys, and one hot key with 5 h of dense minute buckets.
      await sql`insert into api_keys (id, key_hash, key_prefix, name, token_limit_per_5h, expiry_date, created_at)
                select 'bulk_' || i, md5(i::text), 'x', 'bulk', 1000, ${now + HOUR}, ${now} from generate_series(1, 100000) i`;
      await sql`insert into api_keys (id, key_hash, key_prefix, name, token_limit_per_5h, expiry_date, created_at) values ('hot', 'hot-hash', 'x', 'hot', 1000000, ${now + HOUR}, ${now})`;
      await sql`insert into usage_buckets (key_id, bucket_start, tokens) select 'bulk_' || (i % 100000 + 1), ${now}::bigint - (i % 300) * 60000, 1 from generate_series(1, 300000) i`;
      await sql`insert into usage_buckets (key_id, bucket_start, tokens) select 'hot', ${now}::bigint - i::bigint * 60000, 5 from generate_series(0, 299) i`;
      await sql`analyze`;
      const plans = [
        await sql.unsafe(`explain select sum(tokens) from usage_buckets where key_id = 'hot' and bucket_start > ${now - WINDOW}`),
        await sql.unsafe(`explain select * from api_keys where key_hash = 'hot-hash'`),
        await sql.unsafe(`explain update api_keys set total_requests = total_requests + 1 where id = 'hot'`),
      ].map((rows) => rows.map((r) => String(r['QUERY PLAN'])).join('\n'));
      for (const plan of plans) {
        expect(plan).not.toMatch(/Seq Scan on (usage_buckets|api_keys)/);
        expect(plan).toMatch(/Index|Bitmap/);
      }
      const admission = await storage.admit({ keyId: 'hot', tokenLimit: 1_000_000, estimate: 10, requestId: 'hot-1', now, windowMs: WINDOW });
      expect(admission).toMatchObject({ admitted: true, window: { used: 5 * 300 } });
    } finally {
      await sql.end();
    }
  });

  it('records a batch through the key index at 10^4 keys, where the planner once scanned the key table', async () => {
    // Its own database: the test above left 10^5 keys in the shared one, a size at which the index was always used.
    const fresh = await freshDatabase();
    const store = await createStorage({ databaseUrl: fresh, fallback: false, logger: quietLogger() });
    const client = postgres(fresh, { max: 1 });
    try {
      const now = Date.now();
      await client`insert into api_keys (id, key_hash, key_prefix, name, token_limit_per_5h, expiry_date, created_at)
                   select 'bulk_' || i, md5(i::text), 'x', 'bulk', 1000, ${now + HOUR}, ${now} from generate_series(1, 10000) i`;
      await client`analyze`;
      // A batch as the gate writes one under load: 32 records over a few keys, each through a lease.
      const rows = Array.from({ length: 32 }, (_, i) => ({
        id: `record-${i}`,
        key_id: `bulk_${(i % 4) + 1}`,
        tokens: 40,
        at: now,
        bucket: Math.floor(now / 60_000) * 60_000,
        buckets: null,
        leases: [[`lease-${i % 4}`, 40] as const],
      }));
      const plan = (await drizzle(client).execute(sql`explain ${recordingStatement(rows, ['reservation-1'])}`)).map((row) => String(row['QUERY PLAN'])).join('\n');
      expect(plan).toMatch(/Index Scan using api_keys_pkey|Bitmap Index Scan on api_keys_pkey/);
      expect(plan).not.toMatch(/Seq Scan on api_keys/);
    } finally {
      await client.end();
      await store.close();
    }
  });

  it('retries an operation whose connection the server terminates (57P01)', async () => {
    const admin = postgres(url, { max: 1 });
    try {
      await storage.listKeys(); // warm the pool
      await admin`select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'tokengate' and pid <> pg_backend_pid()`;
      expect((await storage.listKeys()).length).toBeGreaterThan(0);
    } finally {
      await admin.end();
    }
  });

  it('reports a permanent failure as a StorageError naming the operation', async () => {
    const brokenUrl = await freshDatabase();
    const broken = await createStorage({ databaseUrl: brokenUrl, fallback: false, logger: quietLogger() });
    const admin = postgres(brokenUrl, { max: 1, onnotice: () => undefined });
    try {
      await admin`drop table usage_records`;
      const error = await broken.settle({ id: 'r', keyId: 'k', tokens: 1, partial: false }, { id: 'r', keyId: 'k', tokens: 1, at: Date.now() }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StorageError);
      expect((error as StorageError).transient).toBe(false);
      expect((error as Error).message).toMatch(/^PostgreSQL recording usage failed: .*usage_records.* \(42P01\)$/);
    } finally {
      await admin.end();
      await broken.close();
    }
  });

  it('journals a record the database refuses for good, keeps counting it, and replays it once the database takes it', async () => {
    const brokenUrl = await freshDatabase();
    const logs = captureLogs();
    const gate = await createStorage({ fallbackDir: tempDir(), logger: logs.logger, fallbackTimeoutMs: 30_000, databaseUrl: brokenUrl });
    const admin = postgres(brokenUrl, { max: 1, onnotice: () => undefined });
    try {
      const { record: key } = await gate.createKey({ name: 'k', tokenLimit: 1000, expiresAt: Date.now() + 86_400_000 });
      // The gate role cannot write usage any more, though it still reads: a refusal no retry gets past.
      await admin`alter table usage_records rename to usage_records_away`;
      const now = Date.now();
      await gate.settle({ id: 'r1', keyId: key.id, tokens: 0, partial: false }, { id: 'r1', keyId: key.id, tokens: 700, at: now });
      expect(gate.health()).toMatchObject({ mode: 'primary', recording: 'journal', journalPendingRecords: 1, recordingFailures: { database: 1, journal: 0 } });
      expect(logs.at(ERROR).some((line) => /refused a usage record/.test(String(line.msg)))).toBe(true);
      await admin`alter table usage_records_away rename to usage_records`;
      await expect.poll(() => gate.health(), { timeout: 10_000, interval: 100 }).toMatchObject({ recording: 'ok', journalPendingRecords: 0, quarantinedFiles: [] });
      const [totals] = await admin`select total_lifetime_tokens::int as tokens, total_requests::int as requests from api_keys where id = ${key.id}`;
      expect(totals).toEqual({ tokens: 700, requests: 1 });
    } finally {
      await admin.end();
      await gate.close();
    }
  });
});

describe('migrations', () => {
  const migrate = (databaseUrl: string) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, ['dist/src/cli/main.js', 'db', 'migrate'], { cwd: ROOT, env: { ...process.env, DATABASE_URL: databaseUrl } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      child.on('exit', (code) => resolve({ code, stdout, stderr }));
    });

  it('run from two processes at once, and then again, leave one correct schema; each says what it did to which database', async () => {
    const url = await freshDatabase();
    const migrations = JSON.parse(readFileSync(join(ROOT, 'drizzle/postgres/meta/_journal.json'), 'utf8')) as { entries: { tag: string }[] };
    const latest = migrations.entries.at(-1)!.tag;
    const store = `postgres ${new URL(url).hostname}:${new URL(url).port}${new URL(url).pathname}`;
    const results = await Promise.all([migrate(url), migrate(url), migrate(url)]);
    expect(results.map(({ code, stderr }) => ({ code, stderr }))).toEqual([0, 0, 0].map((code) => ({ code, stderr: '' })));
    // The advisory lock lets one of them do the work; the others find nothing left to apply.
    const lines = results.map(({ stdout }) => stdout).sort();
    expect(lines).toEqual([
      `${store}: applied ${migrations.entries.length} migrations; schema ${latest}\n`,
      `${store}: up to date, no migrations applied; schema ${latest}\n`,
      `${store}: up to date, no migrations applied; schema ${latest}\n`,
    ]);
    expect(await migrate(url)).toEqual({ code: 0, stdout: `${store}: up to date, no migrations applied; schema ${latest}\n`, stderr: '' });
    const sql = postgres(url, { max: 1 });
    try {
      const applied = await sql`select count(*)::int as n from drizzle.__drizzle_migrations`;
      expect(applied[0]?.n).toBe(migrations.entries.length);
      const tables = await sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`;
      expect(tables.map((t) => t.table_name)).toEqual(['api_keys', 'health_probes', 'reservations', 'usage_buckets', 'usage_records']);
    } finally {
      await sql.end();
    }
  });
});
