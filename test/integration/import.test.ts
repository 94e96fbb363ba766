// tokengate import of 1 000 keys of the old gateway's key file, through the built CLI, into SQLite and PostgreSQL.
import { readdirSync, readFileSync } from 'node:fs';
import { beforeAll, describe, expect, it } from 'vitest';
import { digestKey } from '../../src/keys/secret.js';
import { createStorage } from '../../src/storage/create.js';
import { expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { generate, postgresTarget, run, sqliteTarget, storeState, withStore, writeKeyFile, type Generated, targets, usageUpstream, type Target } from '../helpers/cli-targets.js';
import { post, quietLogger, startGate } from '../helpers/gate.js';

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

beforeAll(requireBuiltCli);

const upstream = usageUpstream();

describe.each(targets)('tokengate import of 1 000 keys into %s', (_name, makeTarget) => {
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
    const gate = await startGate(upstream(), { now: () => Date.now() }, storage);
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
