// tokengate export: the old key file format, from SQLite and PostgreSQL, without plaintext keys.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { generate, run, sqliteTarget, targets, writeKeyFile } from '../helpers/cli-targets.js';
import { tempDir } from '../helpers/temp.js';

beforeAll(requireBuiltCli);

describe('tokengate export', () => {
  it.each(targets)("carries each limit's usage on %s: import takes it in that limit's buckets, export writes back what still counts", async (_name, makeTarget) => {
    const target = await makeTarget();
    const now = Date.now();
    const iso = (ms: number) => new Date(ms).toISOString();
    const HOUR = 3_600_000;
    const entry = {
      key: 'pk_plan_user',
      name: 'plan',
      token_limit_per_5h: 1000,
      expiry_date: iso(now + 30 * 24 * HOUR),
      limits: [
        { window: '5h', tokens: 1000 },
        { name: 'weekly', window: '7d', tokens: 5000 },
      ],
      usage_windows: [{ window_start: iso(now - HOUR), tokens_used: 300 }],
      // Two days ago counts in the week, eight days ago does not.
      limit_usage_windows: { weekly: [{ window_start: iso(now - 2 * 24 * HOUR), tokens_used: 1200 }, { window_start: iso(now - HOUR), tokens_used: 300 }, { window_start: iso(now - 8 * 24 * HOUR), tokens_used: 999 }] },
    };
    const imported = run(target, ['import', '--json', writeKeyFile([entry])]);
    expect(imported.status, imported.stderr).toBe(0);
    expect(JSON.parse(imported.stdout)).toMatchObject({ usage_windows_in_window: 3, usage_windows_outside_window: 1 });
    const out = join(tempDir(), 'export.json');
    expect(run(target, ['export', '--out', out]).status).toBe(0);
    const [exported] = (JSON.parse(readFileSync(out, 'utf8')) as { keys: { usage_windows: { tokens_used: number }[]; limit_usage_windows: Record<string, { window_start: string; tokens_used: number }[]> }[] }).keys;
    expect(exported!.usage_windows.map((w) => w.tokens_used)).toEqual([300]);
    expect(exported!.limit_usage_windows.weekly!.map((w) => w.tokens_used)).toEqual([1200, 300]);
    // The weekly limit's buckets are 30 minutes wide.
    expect(exported!.limit_usage_windows.weekly!.every((w) => Date.parse(w.window_start) % (30 * 60_000) === 0)).toBe(true);
  });

  it.each(targets)('writes the old format from %s without plaintext keys, with the usage inside the window', async (_name, makeTarget) => {
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
