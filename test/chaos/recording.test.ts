// Chaos: the database, then the journal too, cannot take usage (a real full filesystem, a corrupt
// page, a tampered journal). Every request served is charged, or the gate refuses with 503.
import { existsSync, readFileSync, readdirSync, openSync, writeSync, closeSync, mkdirSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import postgres from 'postgres';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import { createStorage } from '../../src/storage/create.js';
import { journalLine } from '../../src/storage/journal.js';
import { createMetrics } from '../../src/ops/metrics.js';
import { monitorStorage, type StorageMonitor } from '../../src/ops/health.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDir } from '../helpers/gate.js';
import { smallDisk, type SmallDisk } from '../helpers/disk.js';
import { startPostgres, type PostgresServer } from '../helpers/postgres.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const DAY = 86_400_000;

interface Served {
  statuses: number[];
  /** Tokens the upstream reported for the requests that were served (2xx). */
  tokens: number;
  served: number;
}

interface Rig {
  storage: Storage;
  monitor: StorageMonitor;
  base: string;
  upstream: Upstream;
  health(): Promise<{ status: number; body: { status: string; recording: string; quarantinedFiles: string[]; recordingFailures: { database: number; journal: number } } }>;
  /** Sends `count` requests with `key`, `concurrency` at a time; the upstream reports 10 + (n % 7) tokens for request n. */
  send(key: string, count: number, concurrency?: number): Promise<Served>;
}

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function disk(sizeKiB: number): SmallDisk {
  const made = smallDisk(sizeKiB);
  cleanups.push(() => made.remove());
  return made;
}

async function rig(storage: Storage): Promise<Rig> {
  cleanups.push(() => storage.close());
  const monitor = monitorStorage(storage, { intervalMs: 50, metrics: createMetrics({ defaultMetrics: false }) });
  cleanups.push(() => monitor.stop());
  const upstream = await startUpstream((_req, body, res) => {
    const n = (JSON.parse(body.toString()) as { n: number }).n;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id: `r${n}`, usage: { total_tokens: 10 + (n % 7) } }));
  });
  cleanups.push(() => upstream.close());
  const { app } = createProxyApp({ storage, upstreamUrl: upstream.url, monitor, gate: { logger: quietLogger() } });
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  cleanups.push(() => new Promise((resolve) => (server.closeAllConnections(), server.close(resolve))));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  let n = 0;
  return {
    storage,
    monitor,
    base,
    upstream,
    async health() {
      const response = await fetch(`${base}/healthz`);
      return { status: response.status, body: (await response.json()) as never };
    },
    async send(key, count, concurrency = 4) {
      const result: Served = { statuses: [], tokens: 0, served: 0 };
      let left = count;
      const worker = async (): Promise<void> => {
        while (left-- > 0) {
          const i = n++;
          const response = await fetch(`${base}/v1/chat/completions`, {
            method: 'POST',
            headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
            body: JSON.stringify({ n: i, max_tokens: 20 }),
          });
          const body = (await response.json()) as { usage?: { total_tokens: number } };
          result.statuses.push(response.status);
          if (response.status === 200) {
            result.served++;
            result.tokens += body.usage!.total_tokens;
          }
        }
      };
      await Promise.all(Array.from({ length: concurrency }, worker));
      return result;
    },
  };
}

/** Empties the WAL into the database file, so that the next write must grow the WAL on disk. */
function truncateWal(path: string): void {
  const other = new Database(path);
  try {
    other.pragma('wal_checkpoint(TRUNCATE)');
  } finally {
    other.close();
  }
}

/** What the database file itself says, read by a connection of its own. */
function totalsInFile(path: string, keyId: string): { tokens: number; requests: number } {
  const db = new Database(path, { readonly: true });
  try {
    return db.prepare('select total_lifetime_tokens as tokens, total_requests as requests from api_keys where id = ?').get(keyId) as { tokens: number; requests: number };
  } finally {
    db.close();
  }
}

describe('SQLite on a full disk', () => {
  it('journals what the database refuses when the journal has room: every request served and charged, the limit holds, /healthz degraded', async () => {
    const small = disk(1024);
    const databasePath = join(small.dir, 'tokengate.db');
    const storage = await createStorage({ databasePath, fallbackDir: tempDir(), logger: quietLogger() });
    const gate = await rig(storage);
    const { record, key } = await storage.createKey({ name: 'k', tokenLimit: 500, expiresAt: Date.now() + DAY });
    const before = await gate.send(key, 3, 1);
    expect(before.statuses).toEqual([200, 200, 200]);

    truncateWal(databasePath);
    small.fill();
    await expect.poll(async () => (await gate.health()).body.recording, { timeout: 5000 }).toBe('journal');
    const during = await gate.send(key, 60);
    const health = await gate.health();
    expect(health.status).toBe(200);
    expect(health.body.status).toBe('degraded');
    // Charged from the journal: the key's 500 tokens still stop it (one partial reservation may overshoot by one request).
    expect(during.statuses).toContain(429);
    expect(before.tokens + during.tokens).toBeLessThanOrEqual(500 + 16);
    expect(during.statuses.every((status) => status === 200 || status === 429)).toBe(true);
    expect(storage.health().journalPendingRecords).toBeGreaterThan(0);

    small.free();
    await expect.poll(async () => (await gate.health()).body, { timeout: 10_000, interval: 100 }).toMatchObject({ status: 'ok', recording: 'ok' });
    expect(storage.health().journalPendingRecords).toBe(0);
    expect(totalsInFile(databasePath, record.id)).toEqual({ tokens: before.tokens + during.tokens, requests: before.served + during.served });
  });

  it('refuses with 503 once the journal on the same disk cannot take usage either, and records every served token once the disk has room', async () => {
    const small = disk(1024);
    const databasePath = join(small.dir, 'tokengate.db');
    const storage = await createStorage({ databasePath, logger: quietLogger() }); // journal next to the database, on the same disk
    const gate = await rig(storage);
    const { record, key } = await storage.createKey({ name: 'k', tokenLimit: 1_000_000, expiresAt: Date.now() + DAY });
    const before = await gate.send(key, 3, 1);
    expect(before.statuses).toEqual([200, 200, 200]);

    truncateWal(databasePath);
    small.fill();
    const during = await gate.send(key, 40);
    expect(during.statuses).toContain(503);
    expect(during.statuses.every((status) => status === 200 || status === 503)).toBe(true);
    const health = await gate.health();
    expect(health.status).toBe(503);
    expect(health.body).toMatchObject({ status: 'unhealthy', recording: 'failing' });
    expect(health.body.recordingFailures.journal).toBeGreaterThan(0);
    expect((await fetch(`${gate.base}/readyz`)).status).toBe(503);

    small.free();
    await expect.poll(async () => (await gate.health()).body, { timeout: 10_000, interval: 100 }).toMatchObject({ status: 'ok', recording: 'ok' });
    const after = await gate.send(key, 3, 1);
    expect(after.statuses).toEqual([200, 200, 200]);
    await expect.poll(() => totalsInFile(databasePath, record.id).requests, { timeout: 5000 }).toBe(before.served + during.served + after.served);
    expect(totalsInFile(databasePath, record.id).tokens).toBe(before.tokens + during.tokens + after.tokens);
  });
});

describe('SQLite with a corrupt usage_records page', () => {
  it('serves nothing uncharged: usage is journaled and counted, the limit holds, health reports the refusals', async () => {
    const dir = tempDir();
    const databasePath = join(dir, 'tokengate.db');
    let keyId: string;
    let key: string;
    {
      const storage = await createStorage({ databasePath, logger: quietLogger() });
      const created = await storage.createKey({ name: 'k', tokenLimit: 400, expiresAt: Date.now() + DAY });
      keyId = created.record.id;
      key = created.key;
      await storage.close();
    }
    // Overwrite the table's root page with garbage, as a bad sector or a torn copy would.
    const db = new Database(databasePath);
    db.pragma('wal_checkpoint(TRUNCATE)');
    const { rootpage } = db.prepare("select rootpage from sqlite_master where name = 'usage_records'").get() as { rootpage: number };
    const pageSize = db.pragma('page_size', { simple: true }) as number;
    db.close();
    const fd = openSync(databasePath, 'r+');
    writeSync(fd, Buffer.alloc(pageSize, 0xa5), 0, pageSize, (rootpage - 1) * pageSize);
    closeSync(fd);

    const storage = await createStorage({ databasePath, logger: quietLogger() });
    const gate = await rig(storage);
    const served = await gate.send(key, 50);
    expect(served.served).toBeGreaterThan(0);
    expect(served.statuses).toContain(429);
    expect(served.tokens).toBeLessThanOrEqual(400 + 16);
    // Every served request is on disk in the journal (the last settles end just after their responses), waiting for a database that can take it.
    await expect.poll(() => storage.health().journalPendingRecords, { timeout: 5000 }).toBe(served.served);
    const health = await gate.health();
    expect(health.body.status).toBe('degraded');
    expect(health.body.recording).toBe('journal');
    expect(health.body.recordingFailures.database).toBeGreaterThan(0);
    const journaled = readdirSync(join(dir, 'fallback'))
      .filter((name) => /^journal-\d{8}\.ndjson$/.test(name))
      .flatMap((name) => readFileSync(join(dir, 'fallback', name), 'utf8').split('\n').filter(Boolean))
      .map((line) => JSON.parse(line) as { keyId: string; tokens: number });
    expect(journaled.every((line) => line.keyId === keyId)).toBe(true);
    expect(journaled.reduce((sum, line) => sum + line.tokens, 0)).toBe(served.tokens);
  });
});

describe('a journal that cannot be trusted', () => {
  it('sets aside a file with an altered line, one with a truncated line and one with an unknown key; replays only the good records (and lines from before checksums); deletes nothing', async () => {
    const dir = tempDir();
    const databasePath = join(dir, 'tokengate.db');
    const journalDir = join(dir, 'fallback');
    let keyId: string;
    {
      const storage = await createStorage({ databasePath, logger: quietLogger() });
      keyId = (await storage.createKey({ name: 'k', tokenLimit: 1_000_000, expiresAt: Date.now() + DAY })).record.id;
      await storage.close();
    }
    const at = Date.now();
    const line = (id: string, tokens: number, key = keyId) => journalLine({ id, keyId: key, tokens, at });
    mkdirSync(journalDir, { recursive: true });
    const files = {
      good: join(journalDir, 'journal-00000001.ndjson'),
      altered: join(journalDir, 'journal-00000002.ndjson'),
      truncated: join(journalDir, 'journal-00000003.ndjson'),
      unknown: join(journalDir, 'journal-00000004.ndjson'),
    };
    writeFileSync(files.good, line('g1', 100) + line('g2', 200));
    writeFileSync(files.altered, line('a1', 10) + line('a2', 20).replace('"tokens":20', '"tokens":2'));
    writeFileSync(files.truncated, line('t1', 30) + line('t2', 40).slice(0, 25));
    writeFileSync(files.unknown, line('u1', 50) + line('u2', 60, 'no-such-key'));
    // Written by a version before checksums: taken as it is, so that an upgrade loses nothing.
    const legacy = join(journalDir, 'journal-00000005.ndjson');
    writeFileSync(legacy, `${JSON.stringify({ id: 'l1', keyId, tokens: 7, at })}\n`);
    const contents = Object.fromEntries(Object.entries(files).map(([name, path]) => [name, readFileSync(path, 'utf8')]));

    const metrics = createMetrics({ defaultMetrics: false });
    const storage = await createStorage({ databasePath, logger: quietLogger() });
    cleanups.push(() => storage.close());
    const monitor = monitorStorage(storage, { intervalMs: 50, metrics });
    cleanups.push(() => monitor.stop());
    await expect.poll(() => storage.health().journalPendingRecords, { timeout: 5000 }).toBe(0);

    // The good records of every file are in; the altered and the truncated line are not.
    expect(totalsInFile(databasePath, keyId)).toEqual({ tokens: 100 + 200 + 10 + 30 + 50 + 7, requests: 6 });
    expect(existsSync(files.good)).toBe(false); // replayed whole: deleted
    expect(existsSync(legacy)).toBe(false);
    const aside = storage.health().quarantinedFiles;
    expect(aside).toHaveLength(3);
    const byGeneration = (generation: string) => aside.find((path) => path.includes(`journal-${generation}.quarantined-`));
    expect(readFileSync(byGeneration('00000002')!, 'utf8')).toBe(contents.altered);
    expect(readFileSync(byGeneration('00000003')!, 'utf8')).toBe(contents.truncated);
    expect(readFileSync(byGeneration('00000004')!, 'utf8')).toBe(contents.unknown);
    expect(monitor.health().body).toMatchObject({ status: 'degraded', quarantinedFiles: aside });
    expect(await metrics.registry.getSingleMetricAsString('tokengate_journal_quarantined_files')).toMatch(/tokengate_journal_quarantined_files 3$/m);

    // A restart replays nothing again and still names the files.
    await storage.close();
    const again = await createStorage({ databasePath, logger: quietLogger() });
    cleanups.push(() => again.close());
    expect(again.health().quarantinedFiles).toEqual(aside);
    expect(totalsInFile(databasePath, keyId)).toEqual({ tokens: 397, requests: 6 });
  });
});

describe('PostgreSQL down', () => {
  let pg: PostgresServer;
  beforeAll(async () => {
    pg = await startPostgres();
  });
  afterAll(async () => {
    await pg?.close();
  });
  const open = (fallbackDir: string) => createStorage({ databaseUrl: pg.url, fallbackDir, fallbackTimeoutMs: 500, logger: quietLogger() });
  async function totalsInDatabase(keyId: string): Promise<{ tokens: number; requests: number }> {
    const sql = postgres(pg.url, { max: 1 });
    try {
      const [row] = await sql<{ tokens: number; requests: number }[]>`select total_lifetime_tokens::int as tokens, total_requests::int as requests from api_keys where id = ${keyId}`;
      return row!;
    } finally {
      await sql.end();
    }
  }

  it('with the journal directory full: refuses with 503 after the first unwritable record, and every served token reaches the database', async () => {
    const small = disk(512);
    const storage = await open(small.dir);
    const gate = await rig(storage);
    const { record, key } = await storage.createKey({ name: 'k', tokenLimit: 1_000_000, expiresAt: Date.now() + DAY });
    const before = await gate.send(key, 3, 1);
    expect(before.statuses).toEqual([200, 200, 200]);

    await pg.stop();
    try {
      small.fill();
      // Served on a lease the gate holds; its usage can be written neither to the database nor to the journal.
      const last = await gate.send(key, 1, 1);
      expect(last.statuses).toEqual([200]);
      await expect.poll(() => storage.health(), { timeout: 10_000, interval: 50 }).toMatchObject({ mode: 'fallback', recording: 'failing' });
      const refused = await gate.send(key, 10);
      expect(refused.statuses).toEqual(Array(10).fill(503));
      expect((await gate.health()).status).toBe(503);
      const during = { tokens: last.tokens + refused.tokens, served: last.served + refused.served };

      small.free();
      await expect.poll(() => storage.health().recording, { timeout: 5000, interval: 100 }).toBe('journal');
      await pg.start();
      await expect.poll(() => storage.health(), { timeout: 20_000, interval: 100 }).toMatchObject({ mode: 'primary', recording: 'ok', journalPendingRecords: 0 });
      expect(await totalsInDatabase(record.id)).toEqual({ tokens: before.tokens + during.tokens, requests: before.served + during.served });
    } finally {
      await pg.start().catch(() => undefined);
    }
  });

  it('a gate restarted during the outage still counts its own usage from before it', async () => {
    const fallbackDir = tempDir();
    const first = await open(fallbackDir);
    const gate = await rig(first);
    const { record, key } = await first.createKey({ name: 'k', tokenLimit: 1_000_000, expiresAt: Date.now() + DAY });
    // Usage recorded after the last periodic snapshot, then the outage.
    const before = await gate.send(key, 10, 2);
    await expect.poll(async () => (await totalsInDatabase(record.id)).requests).toBe(10);
    await pg.stop();
    try {
      const during = await gate.send(key, 5, 1);
      // Admissions are decided on leases held in process: the switch comes when their usage cannot be written.
      await expect.poll(() => first.health(), { timeout: 5000 }).toMatchObject({ mode: 'fallback', journalPendingRecords: 5 });
      await first.close();

      const restarted = await open(fallbackDir);
      cleanups.push(() => restarted.close());
      expect(restarted.health().mode).toBe('fallback');
      const window = await restarted.windowUsage(record.id, Date.now(), 5 * 3600_000);
      expect(window.used).toBe(before.tokens + during.tokens);
    } finally {
      await pg.start();
    }
  });
});
