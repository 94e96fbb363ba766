// `tokengate restore` refuses every impossible row even when the manifest agrees with it, changes nothing when it does, and takes backups of an older schema with the same columns.
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { createStorage, openAdminStore } from '../../src/storage/create.js';
import { writeBackup } from '../../src/ops/backup.js';
import { cli, expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/temp.js';
import { schemaTag } from '../../src/db/migrations.js';

type Row = Record<string, unknown>;
interface Entry {
  table: string;
  row: Row;
}


beforeAll(requireBuiltCli);

/** A store with two keys, usage buckets and records, and a backup of it. */
async function seeded(): Promise<{ dir: string; dbPath: string; backup: string }> {
  const dir = tempDir();
  const dbPath = join(dir, 'tokengate.db');
  const storage = await createStorage({ databasePath: dbPath, lock: false, prune: false });
  for (const name of ['alice', 'bob']) {
    const { record } = await storage.createKey({ name, tokenLimit: 10_000, expiresAt: Date.now() + 86_400_000 });
    const admission = await storage.admit({ keyId: record.id, requestId: `r-${name}`, estimate: 10, tokenLimit: 10_000, now: Date.now(), windowMs: 5 * 3_600_000 });
    if (!admission.admitted) throw new Error('not admitted');
    await storage.settle(admission.reservation, { id: `rec-${name}`, keyId: record.id, tokens: 42, at: Date.now() });
  }
  await storage.close();
  const store = await openAdminStore({ databasePath: dbPath });
  try {
    return { dir, dbPath, backup: (await writeBackup(store, join(dir, 'backups'))).path };
  } finally {
    await store.close();
  }
}

/**
 * Rewrites a backup with `edit` applied to its rows and header, and a manifest that agrees with the
 * result (row counts, totals, checksum): only the rows themselves can give it away.
 */
function rewritten(path: string, dir: string, edit: (entries: Entry[], header: Row) => Entry[]): string {
  const lines = gunzipSync(readFileSync(path)).toString('utf8').trimEnd().split('\n');
  const header = JSON.parse(lines[0]!) as Row;
  const entries = edit(lines.slice(1, -1).map((line) => JSON.parse(line) as Entry), header);
  const tables: Record<string, number> = { api_keys: 0, usage_buckets: 0, usage_records: 0 };
  const totals = { lifetime_tokens: 0, requests: 0, bucket_tokens: 0, record_tokens: 0 };
  for (const { table, row } of entries) {
    if (Object.hasOwn(tables, table)) tables[table]!++;
    if (table === 'api_keys') {
      totals.lifetime_tokens += Number(row.total_lifetime_tokens);
      totals.requests += Number(row.total_requests);
    } else if (table === 'usage_buckets') totals.bucket_tokens += Number(row.tokens);
    else if (table === 'usage_records') totals.record_tokens += Number(row.tokens);
  }
  const body = [JSON.stringify(header), ...entries.map((entry) => JSON.stringify(entry))].map((line) => `${line}\n`).join('');
  const sha256 = createHash('sha256').update(body).digest('hex');
  const manifest = { ...header, tables, totals, sha256 };
  const out = join(dir, `edited-${Math.random().toString(36).slice(2)}.json.gz`);
  writeFileSync(out, gzipSync(`${body}${JSON.stringify({ manifest })}\n`));
  return out;
}

const editRow = (table: string, change: (row: Row) => Row) => (entries: Entry[]) => {
  const at = entries.findIndex((entry) => entry.table === table);
  return entries.map((entry, i) => (i === at ? { table, row: change({ ...entry.row }) } : entry));
};

/** The keys `keys list --json` shows, which is what a refused restore must leave as it was. */
const listed = (dbPath: string): string => {
  const run = cli(dbPath, ['keys', 'list', '--json']);
  expect(run.status).toBe(0);
  return JSON.stringify((JSON.parse(run.stdout) as { keys: unknown }).keys);
};

describe('restore validation', () => {
  it('restores an untouched backup and one with an edited manifest that agrees (the rewrite itself is sound)', async () => {
    const { dir, dbPath, backup } = await seeded();
    expect(cli(dbPath, ['restore', backup, '--yes'], { BACKUP_DIR: join(dir, 'before') }).status).toBe(0);
    const same = rewritten(backup, dir, (entries) => entries);
    const run = cli(dbPath, ['restore', same, '--yes'], { BACKUP_DIR: join(dir, 'before') });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
  });

  const refusals: [string, (entries: Entry[]) => Entry[], RegExp][] = [
    ['a negative token count in a bucket, the totals agreeing', editRow('usage_buckets', (row) => ({ ...row, tokens: -42 })), /line \d+ \(usage_buckets\): column tokens is -42, a negative number/],
    ['a negative token count in a record', editRow('usage_records', (row) => ({ ...row, tokens: -1 })), /\(usage_records\): column tokens is -1, a negative number/],
    ['a negative request count', editRow('api_keys', (row) => ({ ...row, total_requests: -3 })), /\(api_keys\): column total_requests is -3, a negative number/],
    ['a fractional token count', editRow('usage_buckets', (row) => ({ ...row, tokens: 1.5 })), /\(usage_buckets\): column tokens is 1.5, not an integer/],
    ['a fractional request count', editRow('api_keys', (row) => ({ ...row, total_requests: 0.5 })), /column total_requests is 0.5, not an integer/],
    ['a count given as a string', editRow('api_keys', (row) => ({ ...row, total_lifetime_tokens: '84' })), /column total_lifetime_tokens is "84", not an integer/],
    ['a missing column', editRow('api_keys', ({ name: _name, ...row }) => row), /\(api_keys\): column name is missing/],
    ['an extra column', editRow('usage_records', (row) => ({ ...row, note: 'x' })), /\(usage_records\): unknown column "note"/],
    ['a wrong-typed text column', editRow('api_keys', (row) => ({ ...row, name: 7 })), /\(api_keys\): column name is not a string/],
    ['a zero limit', editRow('api_keys', (row) => ({ ...row, token_limit_per_5h: 0 })), /token_limit_per_5h is 0, not a positive limit/],
    ['token weights that serve tokens free', editRow('api_keys', (row) => ({ ...row, token_weights: 'cache_read=0' })), /\(api_keys\): column token_weights: cache_read: "0" is not a weight/],
    ['a backup of this schema without its token_weights column', editRow('api_keys', ({ token_weights: _weights, ...row }) => row), /\(api_keys\): column token_weights is missing/],
    ['a bucket of a key the backup does not hold', editRow('usage_buckets', (row) => ({ ...row, key_id: 'no-such-key' })), /key_id "no-such-key" is not a key of this backup/],
    ['a table named __proto__', (entries) => [...entries, { table: '__proto__', row: { tokens: 1 } }], /names unknown table "__proto__"; a backup holds only api_keys, usage_buckets, usage_records/],
    ['a table named constructor', (entries) => [...entries, { table: 'constructor', row: {} }], /names unknown table "constructor"/],
    ['a table of another application', (entries) => [...entries, { table: 'users', row: { id: 'u' } }], /names unknown table "users"/],
  ];

  it.each(refusals)('refuses %s in one line, and the store is unchanged', async (_what, edit, message) => {
    const { dir, dbPath, backup } = await seeded();
    const before = listed(dbPath);
    const dbBytes = readFileSync(dbPath);
    const bad = rewritten(backup, dir, edit);
    const line = expectFailure(cli(dbPath, ['restore', bad, '--yes'], { BACKUP_DIR: join(dir, 'before') }), message);
    expect(line).not.toMatch(/NaN/);
    expect(listed(dbPath)).toBe(before);
    expect(readFileSync(dbPath).equals(dbBytes)).toBe(true);
  });

  it('restores a backup taken before keys had token weights: its keys have none', async () => {
    const { dir, dbPath, backup } = await seeded();
    const before = JSON.parse(listed(dbPath)) as Row[];
    const old = rewritten(backup, dir, (entries, header) => {
      header.schema = '0002_health_probes';
      return entries.map(({ table, row }) => {
        const { token_weights: _weights, ...rest } = row;
        return { table, row: table === 'api_keys' ? rest : row };
      });
    });
    const other = join(dir, 'other.db');
    const run = cli(other, ['restore', old, '--yes'], { BACKUP_DIR: join(dir, 'before') });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    const restored = JSON.parse(listed(other)) as Row[];
    expect(restored.map((key) => key.weights)).toEqual([null, null]);
    expect(restored).toEqual(before);
  });

  it('restores a backup taken before keys had several limits: its buckets are those of the 5h limit', async () => {
    const { dir, dbPath, backup } = await seeded();
    const old = rewritten(backup, dir, (entries, header) => {
      header.schema = '0003_token_weights';
      return entries.map(({ table, row }) => {
        const { limits: _limits, limit_name: _name, ...rest } = row;
        return { table, row: table === 'api_keys' || table === 'usage_buckets' ? rest : row };
      });
    });
    const other = join(dir, 'other.db');
    const run = cli(other, ['restore', old, '--yes'], { BACKUP_DIR: join(dir, 'before') });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(listed(other)).toBe(listed(dbPath));
    const storage = await createStorage({ databasePath: other, lock: false, prune: false });
    try {
      const keys = await storage.listKeys();
      expect(keys).toHaveLength(2);
      for (const key of keys) expect((await storage.windowUsage(key.id, Date.now(), 5 * 3_600_000)).used).toBe(42);
    } finally {
      await storage.close();
    }
  });

  it('restores a backup taken before the index-only migration 0001_prune_indexes, and refuses an unknown schema', async () => {
    const { dir, dbPath, backup } = await seeded();
    const before = listed(dbPath);
    const old = rewritten(backup, dir, (entries, header) => {
      header.schema = '0000_init';
      return entries;
    });
    const other = cli(join(dir, 'other.db'), ['restore', old, '--yes'], { BACKUP_DIR: join(dir, 'before') });
    expect(other.stderr).toBe('');
    expect(other.status).toBe(0);
    expect(other.stdout).toMatch(/schema 0000_init: 2 keys, 2 usage buckets, 2 usage records/);
    expect(listed(join(dir, 'other.db'))).toBe(before);

    const future = rewritten(backup, dir, (entries, header) => {
      header.schema = '0099_future_columns';
      return entries;
    });
    expectFailure(cli(dbPath, ['restore', future, '--yes'], { BACKUP_DIR: join(dir, 'before') }), new RegExp(`has schema 0099_future_columns, this sqlite store has ${latestSqliteTag()} with other columns`));
    expect(listed(dbPath)).toBe(before);
  });
});

/** The tag of the newest SQLite migration: what a store migrated by this version says it has. */
function latestSqliteTag(): string {
  return schemaTag('sqlite', readdirSync(join(import.meta.dirname, '../../drizzle/sqlite')).filter((name) => name.endsWith('.sql')).length);
}
