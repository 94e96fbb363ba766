// The benchmark in miniature (a few hundred requests per variant), so that it keeps working.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/gate.js';

interface ProxyRow {
  variant: string;
  response: string;
  requests: number;
  failures: number;
  ratioToBare: number;
  cpuUsPerRequest: number;
  alone: { p99Ms: number };
  peakRssMiB: number;
  databaseCpuUsPerRequest: number | null;
}

describe('npm run bench -- --smoke', () => {
  it('drives every variant without a failed request, writes the JSON and Markdown tables and leaves no file store behind', () => {
    const benchDirs = () => new Set(readdirSync(tmpdir()).filter((name) => name.startsWith('tokengate-bench-')));
    const before = benchDirs();
    const out = tempDir();
    const run = spawnSync(process.execPath, ['bench/run.js', '--smoke', '--out', out], { cwd: join(import.meta.dirname, '../..'), encoding: 'utf8', timeout: 150_000 });
    expect(run.status, run.stderr).toBe(0);
    const result = JSON.parse(readFileSync(join(out, 'latest.json'), 'utf8')) as { proxy: ProxyRow[]; scale: { backend: string; keys: number; history: string; decisionsPerSecond: number; recordsPerSecond: number }[] };
    expect(result.proxy.map((row) => `${row.variant} ${row.response}`)).toEqual([
      'bare proxy JSON',
      'gate, SQLite JSON',
      'gate, PostgreSQL JSON',
      'sidecar, SQLite JSON',
      'gate, file fallback (PostgreSQL down) JSON',
      'rate-limiter-flexible, SQLite JSON',
      'rate-limiter-flexible, PostgreSQL JSON',
      'rate-limiter-flexible, SQLite (answer reused 2 s) JSON',
      'rate-limiter-flexible, PostgreSQL (answer reused 2 s) JSON',
      'bare proxy SSE',
      'gate, SQLite SSE',
      'sidecar, SQLite SSE',
    ]);
    for (const row of result.proxy) {
      expect(row, row.variant).toMatchObject({ requests: 300, failures: 0 });
      expect(row.ratioToBare, row.variant).toBeGreaterThan(0);
      expect(row.cpuUsPerRequest, row.variant).toBeGreaterThan(0);
      expect(row.alone.p99Ms, row.variant).toBeGreaterThan(0);
      expect(row.peakRssMiB, row.variant).toBeGreaterThan(0);
      // The PostgreSQL server's CPU is measured for the rows that use it, and only for them.
      expect(typeof row.databaseCpuUsPerRequest, row.variant).toBe(row.variant.includes('PostgreSQL') && !row.variant.includes('down') ? 'number' : 'object');
    }
    expect(result.scale.map((row) => `${row.backend} ${row.keys} ${row.history}`)).toEqual([
      'sqlite 1 empty',
      'sqlite 1 dense',
      'sqlite 1 plan',
      'sqlite 100 empty',
      'sqlite 100 dense',
      'sqlite 100 plan',
      'postgres 1 empty',
      'postgres 1 dense',
      'postgres 1 plan',
      'postgres 100 empty',
      'postgres 100 dense',
      'postgres 100 plan',
    ]);
    for (const row of result.scale) {
      expect(row.decisionsPerSecond).toBeGreaterThan(0);
      expect(row.recordsPerSecond).toBeGreaterThan(0);
    }
    expect(readFileSync(join(out, 'latest.md'), 'utf8')).toContain('| gate, SQLite | JSON | ');
    expect(readFileSync(join(out, 'latest.md'), 'utf8')).toContain('| sqlite | 100 | a 5 h and a 7 d limit: ');
    expect(readFileSync(join(out, 'latest.md'), 'utf8')).toContain('| postgres | 100 | a 5 h and a 7 d limit: ');
    expect([...benchDirs()].filter((name) => !before.has(name))).toEqual([]);
  }, 180_000);
});
