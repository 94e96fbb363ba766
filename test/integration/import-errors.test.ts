// tokengate import refusing what it cannot import whole: a write failing halfway, malformed entries, the file store.
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import postgres from 'postgres';
import { beforeAll, describe, expect, it } from 'vitest';
import { cli, expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { generate, run, sqliteTarget, storeState, targets, withStore, writeKeyFile, type Target } from '../helpers/cli-targets.js';
import { tempDir } from '../helpers/temp.js';

const DAY = 24 * 3_600_000;
const iso = (ms: number): string => new Date(ms).toISOString();

beforeAll(requireBuiltCli);

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

describe.each(targets)('tokengate import into %s is one transaction', (_name, makeTarget) => {
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
      // The usage of a key's other limits: only under the name of one of them, never 5h's, dated.
      { ...good, key: 'pk_16', limits: [{ window: '5h', tokens: 10 }, { window: '7d', tokens: 20 }], limit_usage_windows: { '30d': [], '5h': [], '7d': [{ window_start: 'then', tokens_used: 1 }] } },
      { ...good, key: 'pk_17', limit_usage_windows: [] },
      // A year mistyped: usage dated after now would count long after its window.
      { ...good, key: 'pk_18', usage_windows: [{ window_start: iso(now + 36 * 365 * DAY), tokens_used: 5 }] },
    ];
    const line = expectFailure(run(target, ['import', writeKeyFile(entries)]), /22 problem/);
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
      "keys[16].limit_usage_windows.30d: not the name of one of the key's limits",
      "keys[16].limit_usage_windows.5h: the 5h limit's usage is usage_windows",
      'keys[16].limit_usage_windows.7d[0].window_start: not an ISO 8601 date',
      'keys[17].limit_usage_windows: not an object of usage windows by limit name',
      'keys[18].usage_windows[0].window_start: in the future',
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
