// tokengate export: the old key file format, from SQLite and PostgreSQL, without plaintext keys.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { generate, run, sqliteTarget, targets, writeKeyFile } from '../helpers/cli-targets.js';
import { tempDir } from '../helpers/temp.js';

beforeAll(requireBuiltCli);

describe('tokengate export', () => {
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
