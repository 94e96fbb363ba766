// Import, export, backup and restore through the built CLI, on real SQLite files and real PostgreSQL databases.
import { gunzipSync, gzipSync } from 'node:zlib';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStorage, type StorageConfig } from '../../src/storage/create.js';
import { digestKey } from '../../src/keys/secret.js';
import type { BackupManifest } from '../../src/ops/backup.js';
import type { Storage } from '../../src/storage/types.js';
import { cli, cliAsync, expectFailure, requireBuiltCli, type Run } from '../helpers/cli.js';
import { post, quietLogger, startGate, tempDir } from '../helpers/gate.js';
import { freshDatabase } from '../helpers/postgres.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const iso = (ms: number): string => new Date(ms).toISOString();

/** Where a CLI run points: a SQLite file, or a PostgreSQL database. */
interface Target {
  name: string;
  env: Record<string, string>;
  config: StorageConfig;
}

function sqliteTarget(): Target {
  const dir = tempDir();
  const databasePath = join(dir, 'tokengate.db');
  return { name: 'sqlite', env: { DATABASE_PATH: databasePath, BACKUP_DIR: join(dir, 'backups') }, config: { databasePath } };
}

async function postgresTarget(): Promise<Target> {
  const databaseUrl = await freshDatabase();
  return { name: 'postgres', env: { DATABASE_URL: databaseUrl, BACKUP_DIR: join(tempDir(), 'backups') }, config: { databaseUrl, fallback: false, logger: quietLogger() } };
}

const run = (target: Target, args: string[]): Run => cli(target.env.DATABASE_PATH ?? '', args, target.env);
const runAsync = (target: Target, args: string[]): Promise<Run> => cliAsync(target.env.DATABASE_PATH ?? '', args, target.env);

async function withStore<T>(target: Target, use: (storage: Storage) => Promise<T>): Promise<T> {
  const storage = await createStorage({ ...target.config, fallback: false, logger: quietLogger() });
  try {
    return await use(storage);
  } finally {
    await storage.close();
  }
}

/** Key i of the generated file: what it holds, and what the store must show for it after an import. */
interface Generated {
  entry: Record<string, unknown>;
  plaintext: string;
  expired: boolean;
  lifetime: number;
  windowUsage: number;
  limit: number;
}

/**
 * 1 000 keys as the earlier gateway wrote them: each with usage windows inside and outside the
 * 5-hour window, every tenth one expired, every fifth (from 1) in the rolling_window_cache variant,
 * whose buckets then hold the window's usage.
 */
function generate(now: number, count = 1000): Generated[] {
  return Array.from({ length: count }, (_, i) => {
    const plaintext = `pk_user_${i}_${'x'.repeat(i % 7)}`;
    const cached = i % 5 === 1;
    const windows = [
      { window_start: iso(now - HOUR), tokens_used: 100 + i },
      { window_start: iso(now - 3 * HOUR), tokens_used: 50 },
      { window_start: iso(now - 6 * HOUR), tokens_used: 1000 },
      { window_start: iso(now - 30 * HOUR), tokens_used: 77 },
    ];
    const cache = { buckets: [{ timestamp: now - 2 * HOUR, tokens: 30 + i }, { timestamp: now - 4 * HOUR, tokens: 20 }, { timestamp: now - 5.5 * HOUR, tokens: 999 }], runningTotal: 1049 + i };
    const limit = i === 3 ? 150 + i : 100_000 + i; // key 3: its window usage leaves it 0 remaining
    const entry = {
      key: plaintext,
      name: `user ${i}`,
      ...(i % 3 === 0 ? { model: 'gpt-4o-mini' } : {}),
      token_limit_per_5h: limit,
      expiry_date: iso(i % 10 === 0 ? now - DAY : now + 30 * DAY),
      created_at: iso(now - 90 * DAY + i * 1000),
      last_used: iso(now - HOUR + i),
      total_lifetime_tokens: 10_000 + i,
      usage_windows: windows,
      ...(cached ? { rolling_window_cache: cache } : {}),
    };
    const windowUsage = cached ? 50 + i : 150 + i;
    return { entry, plaintext, expired: i % 10 === 0, lifetime: 10_000 + i, windowUsage, limit };
  });
}

function writeKeyFile(entries: unknown[]): string {
  const path = join(tempDir(), 'api_keys.json');
  writeFileSync(path, JSON.stringify({ keys: entries }, null, 2));
  return path;
}

interface ImportReport {
  dry_run: boolean;
  keys: number;
  new: number;
  unchanged: number;
  conflicts: { id: string; fields: string[] }[];
  usage_windows_in_window: number;
  usage_windows_outside_window: number;
  backup: string | null;
}

function importJson(target: Target, args: string[]): ImportReport {
  const result = run(target, ['import', ...args, '--json']);
  expect(result.stderr).toBe('');
  expect(result.status).toBe(0);
  return JSON.parse(result.stdout) as ImportReport;
}

/** Every key's totals and current-window usage, by digest. */
async function storeState(target: Target): Promise<Map<string, { lifetime: number; lastUsed: number | null; window: number; limit: number; name: string }>> {
  return withStore(target, async (storage) => {
    const now = Date.now();
    const state = new Map<string, { lifetime: number; lastUsed: number | null; window: number; limit: number; name: string }>();
    const keys = await storage.listKeys();
    for (const key of keys) {
      const usage = await storage.windowUsage(key.id, now, 5 * HOUR);
      state.set(key.id, { lifetime: key.totalLifetimeTokens, lastUsed: key.lastUsedAt, window: usage.used, limit: key.tokenLimit, name: key.name });
    }
    return state;
  });
}

beforeAll(requireBuiltCli);

let upstream: Upstream;
beforeAll(async () => {
  upstream = await startUpstream(json({ id: 'x', usage: { prompt_tokens: 4, completion_tokens: 6, total_tokens: 10 } }));
});
afterAll(async () => {
  await upstream.close();
});

describe.each([
  ['sqlite', async () => sqliteTarget()],
  ['postgres', postgresTarget],
])('tokengate import of 1 000 keys into %s', (_name, makeTarget) => {
  let target: Target;
  let generated: Generated[];
  let file: string;

  beforeAll(async () => {
    target = await makeTarget();
    generated = generate(Date.now());
    file = writeKeyFile(generated.map((g) => g.entry));
  });

  it('a dry run reports what would happen and writes nothing', async () => {
    const report = importJson(target, [file, '--dry-run']);
    expect(report).toEqual({
      dry_run: true,
      keys: 1000,
      new: 1000,
      unchanged: 0,
      conflicts: [],
      // 800 keys: windows at -1 h and -3 h inside, -6 h and -30 h outside; 200 cache keys: buckets at -2 h and -4 h inside, -5.5 h outside.
      usage_windows_in_window: 800 * 2 + 200 * 2,
      usage_windows_outside_window: 800 * 2 + 200,
      backup: null,
      store: target.name === 'sqlite' ? `sqlite ${target.env.DATABASE_PATH}` : expect.stringMatching(/^postgres 127\.0\.0\.1:\d+\/tokengate_test_\w+$/),
    });
    expect((await storeState(target)).size).toBe(0);
  });

  it('imports every key with its lifetime total, last use and current-window usage, digests only', async () => {
    const report = importJson(target, [file]);
    expect(report).toMatchObject({ dry_run: false, keys: 1000, new: 1000, unchanged: 0, conflicts: [] });
    expect(report.backup).toMatch(/tokengate-(sqlite|postgres)-.+\.json\.gz$/);

    const state = await storeState(target);
    expect(state.size).toBe(1000);
    await withStore(target, async (storage) => {
      for (const [i, g] of generated.entries()) {
        const record = await storage.findKeyByDigest(digestKey(g.plaintext));
        expect(record, `key ${i}`).toBeDefined();
        const seen = state.get(record!.id)!;
        expect(seen, `key ${i}`).toEqual({ lifetime: g.lifetime, lastUsed: Date.parse(g.entry.last_used as string), window: g.windowUsage, limit: g.limit, name: `user ${i}` });
        expect(record!.keyPrefix.length).toBeLessThanOrEqual(8);
        // A random id: nothing of it can be found in the key's digest.
        expect(digestKey(g.plaintext), `key ${i}`).not.toContain(record!.id.slice(4));
      }
    });
    if (target.name === 'sqlite') {
      const bytes = readFileSync(target.env.DATABASE_PATH!);
      for (const g of generated.slice(0, 50)) expect(bytes.includes(g.plaintext), g.plaintext).toBe(false);
    }
  });

  it('imported keys authenticate through the gate with their old plaintext, and their quota reflects imported usage', async () => {
    const storage = await createStorage({ ...target.config, logger: quietLogger(), fallback: false });
    const gate = await startGate(upstream, { now: () => Date.now() }, storage);
    try {
      for (const i of [1, 2, 7, 555, 999]) {
        const response = await post(gate, generated[i]!.plaintext);
        expect(response.status, `key ${i}`).toBe(200);
      }
      const expired = await post(gate, generated[10]!.plaintext);
      expect(expired.status).toBe(403);

      const stats = await fetch(`${gate.url}/stats`, { headers: { authorization: `Bearer ${generated[42]!.plaintext}` } });
      const body = (await stats.json()) as { current_usage: { tokens_used_in_current_window: number; remaining_tokens: number }; total_lifetime_tokens: number };
      expect(body.current_usage.tokens_used_in_current_window).toBe(generated[42]!.windowUsage);
      expect(body.current_usage.remaining_tokens).toBe(generated[42]!.limit - generated[42]!.windowUsage);
      expect(body.total_lifetime_tokens).toBe(generated[42]!.lifetime);

      // Key 3's imported window usage is exactly its limit: refused, and the 429 says why.
      const refused = await post(gate, generated[3]!.plaintext);
      expect(refused.status).toBe(429);
      const error = ((await refused.json()) as { error: { tokens_used: number; tokens_limit: number } }).error;
      expect(error).toMatchObject({ tokens_used: generated[3]!.windowUsage, tokens_limit: generated[3]!.limit });
    } finally {
      await gate.close();
    }
  });

  it('a second import changes nothing and says 0 new', async () => {
    const before = await storeState(target);
    const backups = readdirSync(target.env.BACKUP_DIR!).length;
    const report = importJson(target, [file]);
    expect(report).toMatchObject({ new: 0, unchanged: 1000, conflicts: [], backup: null });
    expect(await storeState(target)).toEqual(before);
    expect(readdirSync(target.env.BACKUP_DIR!)).toHaveLength(backups); // nothing to write, no backup taken

    const human = run(target, ['import', file]);
    expect(human.status).toBe(0);
    expect(human.stdout).toMatch(/^imported 0 new key\(s\) of 1000 into (sqlite|postgres) \S+: 1000 unchanged, 0 conflict\(s\)$/m);
  });

  it('reports a stored key whose fields differ as a conflict and leaves it as stored', async () => {
    const changed = generated.slice(0, 3).map((g, i) => (i === 1 ? { ...g.entry, name: 'renamed', token_limit_per_5h: 5 } : g.entry));
    const report = importJson(target, [writeKeyFile(changed)]);
    expect(report.new).toBe(0);
    expect(report.unchanged).toBe(2);
    expect(report.conflicts).toEqual([{ id: expect.stringMatching(/^key_/), fields: ['name', 'token_limit_per_5h'] }]);
    await withStore(target, async (storage) => {
      expect(await storage.findKeyByDigest(digestKey(generated[1]!.plaintext))).toMatchObject({ name: 'user 1', tokenLimit: generated[1]!.limit });
    });
  });

  it('a file with one bad entry among 1 000 imports nothing and names the entry and field', async () => {
    const fresh = target.name === 'sqlite' ? sqliteTarget() : await postgresTarget();
    const entries = generate(Date.now()).map((g) => g.entry);
    entries[613] = { ...entries[613], token_limit_per_5h: -40 };
    const result = run(fresh, ['import', writeKeyFile(entries)]);
    const line = expectFailure(result, /keys\[613\]\.token_limit_per_5h: not a positive integer/);
    expect(line).toContain('1 problem');
    expect(line).not.toMatch(/pk_user_/);
    expect((await storeState(fresh)).size).toBe(0);
  });
});

/** Makes the target's database refuse to insert a key with this name, as a failing disk or constraint would. */
async function refuseKeyNamed(target: Target, name: string): Promise<void> {
  await withStore(target, () => Promise.resolve()); // the schema exists
  if (target.config.databasePath) {
    const db = new Database(target.config.databasePath);
    db.exec(`create trigger refuse before insert on api_keys when new.name = '${name}' begin select raise(abort, 'api_keys insert refused'); end`);
    db.close();
    return;
  }
  const sql = postgres(target.config.databaseUrl!, { max: 1, onnotice: () => undefined });
  await sql.unsafe(`create function refuse() returns trigger language plpgsql as $$ begin raise exception 'api_keys insert refused'; end $$;
    create trigger refuse before insert on api_keys for each row when (new.name = '${name}') execute function refuse()`);
  await sql.end();
}

describe.each([
  ['sqlite', async () => sqliteTarget()],
  ['postgres', postgresTarget],
])('tokengate import into %s is one transaction', (_name, makeTarget) => {
  it('a write failing halfway leaves nothing of the import behind', async () => {
    const target = await makeTarget();
    const generated = generate(Date.now(), 600);
    // The database itself refuses key 500 (a trigger), after 500 keys went in.
    await refuseKeyNamed(target, 'user 500');
    await withStore(target, (storage) => storage.createKey({ name: 'clash', tokenLimit: 1, expiresAt: Date.now() + DAY }));
    const result = run(target, ['import', writeKeyFile(generated.map((g) => g.entry))]);
    expectFailure(result, /^tokengate: import rolled back, nothing was written: .*api_keys/);
    const state = await storeState(target);
    expect([...state.values()].map((key) => key.name)).toEqual(['clash']);
  });
});

describe('tokengate import: malformed input', () => {
  it('names every bad entry and field, and writes nothing', () => {
    const target = sqliteTarget();
    const now = Date.now();
    const good = { key: 'pk_ok', name: 'ok', token_limit_per_5h: 10, expiry_date: iso(now + DAY) };
    const entries: unknown[] = [
      good,
      { ...good, key: 42 },
      { ...good, key: 'pk_ok' },
      { ...good, key: undefined },
      { ...good, key: 'k'.repeat(513) },
      { ...good, key: 'pk_tab\there' },
      { ...good, key: 'pk_5', name: undefined },
      { ...good, key: 'pk_6', token_limit_per_5h: -1 },
      { ...good, key: 'pk_7', expiry_date: 'soon' },
      { ...good, key: 'pk_8', last_used: 'yesterday' },
      { ...good, key: 'pk_9', usage_windows: [{ window_start: 'x', tokens_used: -3 }] },
      { ...good, key: 'pk_10', rolling_window_cache: { buckets: [{ timestamp: 'nope', tokens: 1 }] } },
      'not an object',
      // Dates are ISO 8601 with a time zone: epoch milliseconds and local times are refused.
      { ...good, key: 'pk_13', expiry_date: now + DAY },
      { ...good, key: 'pk_14', created_at: '2026-01-10T09:00:00', last_used: now },
      { ...good, key: 'pk_15', usage_windows: [{ window_start: now, tokens_used: 1 }] },
    ];
    const line = expectFailure(run(target, ['import', writeKeyFile(entries)]), /17 problem/);
    for (const field of [
      'keys[1].key: not a string',
      'keys[2].key: duplicate of keys[0]',
      'keys[3].key: missing',
      'keys[4].key: the key is longer than 512 bytes',
      'keys[5].key: the key may only contain visible ASCII characters (! to ~), no spaces or control characters',
      'keys[6].name: missing',
      'keys[7].token_limit_per_5h',
      'keys[8].expiry_date: not an ISO 8601 date, or date-time with a time zone',
      'keys[9].last_used: not an ISO 8601 date',
      'keys[10].usage_windows[0].window_start',
      'keys[10].usage_windows[0].tokens_used',
      'keys[11].rolling_window_cache.buckets[0].timestamp',
      'keys[12]: not an object',
      'keys[13].expiry_date: not an ISO 8601 date',
      'keys[14].created_at: not an ISO 8601 date',
      'keys[14].last_used: not an ISO 8601 date',
      'keys[15].usage_windows[0].window_start: not an ISO 8601 date',
    ]) {
      expect(line).toContain(field);
    }
    expect(readdirSync(tempDirOf(target))).not.toContain('backups');
  });

  it('refuses the file store, which has no database to import into', () => {
    const target = sqliteTarget();
    const file = writeKeyFile([{ key: 'pk_ok', name: 'ok', token_limit_per_5h: 10, expiry_date: iso(Date.now() + DAY) }]);
    const env = { ...target.env, STORAGE: 'file', FALLBACK_DIR: tempDir() };
    for (const args of [['import', file], ['backup'], ['export']]) {
      expectFailure(cli(target.env.DATABASE_PATH!, args, env), /STORAGE=file has no database/);
    }
  });

  it('fails in one line on a missing file and on unreadable JSON', () => {
    const target = sqliteTarget();
    expectFailure(run(target, ['import', join(tempDir(), 'missing.json')]), /missing\.json cannot be read: no such file/);
    const broken = join(tempDir(), 'broken.json');
    writeFileSync(broken, '{"keys": [');
    expectFailure(run(target, ['import', broken]), /broken\.json is not valid JSON/);
    const shapeless = join(tempDir(), 'shapeless.json');
    writeFileSync(shapeless, '[1, 2]');
    expectFailure(run(target, ['import', shapeless]), /has no "keys" array/);
  });
});

function tempDirOf(target: Target): string {
  return join(target.env.DATABASE_PATH!, '..');
}

describe('tokengate export', () => {
  it.each([
    ['sqlite', async () => sqliteTarget()],
    ['postgres', postgresTarget],
  ])('writes the old format from %s without plaintext keys, with the usage inside the window', async (_name, makeTarget) => {
    const target = await makeTarget();
    const now = Date.now();
    const generated = generate(now, 12);
    expect(run(target, ['import', writeKeyFile(generated.map((g) => g.entry))]).status).toBe(0);
    const out = join(tempDir(), 'export.json');
    const result = run(target, ['export', '--out', out]);
    expect(result.status).toBe(0);
    const text = readFileSync(out, 'utf8');
    for (const g of generated) expect(text).not.toContain(g.plaintext);
    const exported = JSON.parse(text) as { keys: { key: null; key_id: string; key_prefix: string; name: string; total_lifetime_tokens: number; last_used: string; usage_windows: { tokens_used: number }[] }[] };
    expect(exported.keys).toHaveLength(12);
    for (const [i, g] of generated.entries()) {
      const entry = exported.keys.find((k) => k.name === `user ${i}`)!;
      expect(entry.key).toBeNull();
      expect(entry.key_id).toMatch(/^key_/);
      expect(entry.key_prefix).toMatch(/^pk.*\.\.\.$/);
      expect(entry.total_lifetime_tokens).toBe(g.lifetime);
      expect(entry.last_used).toBe(g.entry.last_used);
      expect(entry.usage_windows.reduce((sum, w) => sum + w.tokens_used, 0)).toBe(g.windowUsage);
    }
    // Re-importing an export fails loudly on the missing plaintext instead of inventing keys.
    expectFailure(run(sqliteTarget(), ['import', out]), /keys\[0\]\.key: missing/);
  });
});

/** Sums over the whole store, straight from its tables. */
async function totals(target: Target): Promise<{ keys: number; lifetime: number; requests: number }> {
  return withStore(target, async (storage) => {
    const keys = await storage.listKeys();
    return { keys: keys.length, lifetime: keys.reduce((s, k) => s + k.totalLifetimeTokens, 0), requests: keys.reduce((s, k) => s + k.totalRequests, 0) };
  });
}

function backupJson(target: Target, outDir?: string): { path: string; manifest: BackupManifest } {
  const result = run(target, ['backup', '--json', ...(outDir ? ['--out', outDir] : [])]);
  expect(result.stderr).toBe('');
  expect(result.status).toBe(0);
  return JSON.parse(result.stdout) as { path: string; manifest: BackupManifest };
}

describe('tokengate backup and restore', () => {
  it.each([
    ['sqlite', async () => sqliteTarget()],
    ['postgres', postgresTarget],
  ])('backs up %s while a gate records usage; the restored store equals the backup', async (_name, makeTarget) => {
    const target = await makeTarget();
    const storage = await createStorage({ ...target.config, logger: quietLogger(), fallback: false });
    const gate = await startGate(upstream, { now: () => Date.now() }, storage);
    const keys = await Promise.all(Array.from({ length: 4 }, () => storage.createKey({ name: 'traffic', tokenLimit: 10_000_000, expiresAt: Date.now() + DAY })));
    let stop = false;
    let sent = 0;
    const traffic = (async () => {
      while (!stop) {
        await Promise.all(keys.map(async ({ key }) => expect((await post(gate, key)).status).toBe(200)));
        sent += keys.length;
      }
    })();
    try {
      while (sent < 40) await new Promise((resolve) => setTimeout(resolve, 20));
      const backup = await runAsync(target, ['backup', '--json']);
      expect(backup.status, backup.stderr).toBe(0);
      const afterBackup = sent;
      while (sent < afterBackup + 40) await new Promise((resolve) => setTimeout(resolve, 20)); // traffic went on during and after
      stop = true;
      await traffic;
      const { path, manifest } = JSON.parse(backup.stdout) as { path: string; manifest: BackupManifest };

      // A consistent snapshot: every recorded request is in its key's totals, its bucket and its record id.
      expect(manifest.tables.api_keys).toBe(4);
      expect(manifest.tables.usage_records).toBe(manifest.totals.requests);
      expect(manifest.totals.record_tokens).toBe(manifest.totals.lifetime_tokens);
      expect(manifest.totals.bucket_tokens).toBe(manifest.totals.lifetime_tokens);
      expect(manifest.totals.requests).toBeGreaterThan(0);
      expect(manifest.totals.lifetime_tokens).toBe(10 * manifest.totals.requests);

      for (const fresh of [sqliteTarget(), await postgresTarget()]) {
        const restored = run(fresh, ['restore', path, '--yes', '--json']);
        expect(restored.status, restored.stderr).toBe(0);
        expect(await totals(fresh)).toEqual({ keys: 4, lifetime: manifest.totals.lifetime_tokens, requests: manifest.totals.requests });
        // The restored store backs up to the same tables and totals.
        const again = backupJson(fresh).manifest;
        expect(again.tables).toEqual(manifest.tables);
        expect(again.totals).toEqual(manifest.totals);
      }
    } finally {
      stop = true;
      await traffic.catch(() => undefined);
      await gate.close();
    }
  });

  it('SQLite → PostgreSQL → SQLite preserves every key field, bucket and record', async () => {
    const source = sqliteTarget();
    const now = Date.now();
    expect(run(source, ['import', writeKeyFile(generate(now, 30).map((g) => g.entry))]).status).toBe(0);
    await withStore(source, async (storage) => {
      const [first] = await storage.listKeys();
      const admission = await storage.admit({ keyId: first!.id, tokenLimit: first!.tokenLimit, estimate: 5, requestId: 'req-1', now, windowMs: 5 * HOUR });
      if (!admission.admitted) throw new Error('not admitted');
      await storage.settle(admission.reservation, { id: 'req-1', keyId: first!.id, tokens: 321, at: now });
    });
    const original = backupJson(source);
    const rowsOf = (path: string): string[] => gunzipSync(readFileSync(path)).toString('utf8').trimEnd().split('\n').slice(1, -1).sort();

    const postgres = await postgresTarget();
    expect(run(postgres, ['restore', original.path, '--yes']).status).toBe(0);
    const viaPostgres = backupJson(postgres);
    expect(viaPostgres.manifest.backend).toBe('postgres');

    const back = sqliteTarget();
    expect(run(back, ['restore', viaPostgres.path, '--yes']).status).toBe(0);
    const final = backupJson(back);

    expect(rowsOf(viaPostgres.path)).toEqual(rowsOf(original.path));
    expect(rowsOf(final.path)).toEqual(rowsOf(original.path));
    expect(final.manifest.tables).toEqual({ api_keys: 30, usage_buckets: original.manifest.tables.usage_buckets, usage_records: 1 });
  });

  it('refuses a backup with one byte flipped, whether gzip notices or not, and leaves the store untouched', async () => {
    for (const target of [sqliteTarget(), await postgresTarget()]) {
      expect(run(target, ['import', writeKeyFile(generate(Date.now(), 20).map((g) => g.entry))]).status).toBe(0);
      const { path } = backupJson(target);
      const before = await storeState(target);
      const bytes = readFileSync(path);
      const dir = tempDir();

      const flippedCompressed = Buffer.from(bytes);
      flippedCompressed[Math.floor(bytes.length / 2)]! ^= 0x01;
      const damaged = join(dir, 'compressed.json.gz');
      writeFileSync(damaged, flippedCompressed);

      // A byte flipped in the contents and compressed again: gzip is satisfied, the checksum is not.
      const plain = gunzipSync(bytes);
      const at = plain.indexOf('"total_lifetime_tokens":') + '"total_lifetime_tokens":'.length;
      plain[at] = plain[at] === 0x31 ? 0x32 : 0x31;
      const regzipped = join(dir, 'contents.json.gz');
      writeFileSync(regzipped, gzipSync(plain));

      for (const file of [damaged, regzipped]) {
        const line = expectFailure(run(target, ['restore', file, '--yes']), /is (damaged|not a tokengate backup, or it is damaged)/);
        expect(line).toContain(file);
      }
      expectFailure(run(target, ['restore', regzipped, '--yes']), /checksum mismatch/);
      expect(await storeState(target)).toEqual(before);
    }
  });

  it('fails in one line on a missing file and on a file that is not a backup; off a terminal it needs no --yes', () => {
    const target = sqliteTarget();
    const dir = tempDir();
    expectFailure(run(target, ['restore', join(dir, 'nope.json.gz'), '--yes']), /nope\.json\.gz cannot be read/);
    const notGzip = join(dir, 'keys.json');
    writeFileSync(notGzip, '{"keys":[]}');
    expectFailure(run(target, ['restore', notGzip, '--yes']), /is not a tokengate backup/);
    const otherGzip = join(dir, 'other.json.gz');
    writeFileSync(otherGzip, gzipSync('{"keys":[]}\n'));
    expectFailure(run(target, ['restore', otherGzip, '--yes']), /is not a tokengate backup \(no "tokengate-backup" header\)/);
    const { path } = backupJson(target);
    expect(run(target, ['restore', path]).status).toBe(0);
  });

  it('writes backups into --out, else BACKUP_DIR, named by backend and UTC time; restore keeps the state before it', () => {
    const target = sqliteTarget();
    const out = join(tempDir(), 'elsewhere');
    mkdirSync(out);
    const first = backupJson(target, out);
    expect(first.path.startsWith(out)).toBe(true);
    expect(first.path).toMatch(/tokengate-sqlite-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z\.json\.gz$/);
    const second = backupJson(target);
    expect(second.path.startsWith(target.env.BACKUP_DIR!)).toBe(true);
    const restored = JSON.parse(run(target, ['restore', first.path, '--yes', '--json']).stdout) as { backup_before_restore: string };
    expect(readdirSync(target.env.BACKUP_DIR!)).toContain(restored.backup_before_restore.split('/').at(-1));
  });

  it('has --help on every new command', () => {
    const target = sqliteTarget();
    for (const command of ['import', 'export', 'backup', 'restore']) {
      const help = run(target, [command, '--help']);
      expect(help.status, command).toBe(0);
      expect(help.stdout, command).toMatch(/^Usage: tokengate /);
    }
  });
});
