// The package as users get it: plain node imports the built entry point, and the demo runs.
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDbPath } from '../helpers/gate.js';

const ROOT = join(import.meta.dirname, '../..');

describe('the package', () => {
  it('imports with plain node, by its name, from the built files', () => {
    const script = `
      import { tokenGate, statsHandler, createStorage } from 'tokengate';
      const storage = await createStorage({ databasePath: process.env.DB });
      const gate = tokenGate({ storage });
      console.log(typeof gate, gate.length, typeof statsHandler({ storage }), storage.backend);
      await storage.close();`;
    const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, env: { ...process.env, DB: tempDbPath() }, encoding: 'utf8' });
    expect(result.stderr).toBe('');
    // The new database is migrated first, and that is logged (JSON, default logger on stdout).
    const [migrated, printed, ...rest] = result.stdout.trim().split('\n');
    const migrations = (JSON.parse(readFileSync(join(ROOT, 'drizzle/sqlite/meta/_journal.json'), 'utf8')) as { entries: unknown[] }).entries;
    expect(JSON.parse(migrated ?? '')).toMatchObject({ level: 30, backend: 'sqlite', applied: migrations.length, msg: 'database migrations applied' });
    expect(printed).toBe('function 3 function sqlite');
    expect(rest).toEqual([]);
  });

  it('publishes the built code, its types and the migrations', () => {
    const result = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' });
    const files = (JSON.parse(result.stdout) as [{ files: { path: string }[] }])[0].files.map((f) => f.path);
    expect(files).toEqual(expect.arrayContaining(['dist/src/index.js', 'dist/src/index.d.ts', 'dist/middleware/gate.js', 'dist/src/cli/main.js', 'drizzle/sqlite/0000_init.sql', 'drizzle/sqlite/meta/_journal.json']));
    expect(files.some((f) => f.startsWith('test/') || f.startsWith('src/'))).toBe(false);
  });

  it('runs the demo the README starts with: a real request through the gate, usage recorded', () => {
    const result = spawnSync(process.execPath, ['examples/express-proxy/demo.js', '--once'], {
      cwd: ROOT,
      env: { ...process.env, DATABASE_PATH: tempDbPath(), PORT: '0' },
      encoding: 'utf8',
      timeout: 20_000,
    });
    expect(result.status).toBe(0);
    expect(result.stdout).toMatch(/POST \/v1\/chat\/completions -> 200/);
    const reported = /Upstream reported (\d+) tokens; \/stats shows (\d+) more used/.exec(result.stdout);
    expect(reported?.[1]).toBeDefined();
    expect(reported?.[2]).toBe(reported?.[1]);
  });

  it('runs the demo again on another port when 8080 is taken, with the same demo key', async () => {
    const databasePath = tempDbPath();
    const taken = net.createServer();
    // Whoever holds 8080 (this test, or anything else on the machine), the demo must not need it.
    await new Promise<void>((resolve) => taken.once('error', () => resolve()).listen(8080, '127.0.0.1', resolve));
    try {
      const runs = [0, 1].map(() => spawnSync(process.execPath, ['examples/express-proxy/demo.js', '--once'], { cwd: ROOT, env: { ...process.env, DATABASE_PATH: databasePath, PORT: '' }, encoding: 'utf8', timeout: 20_000 }));
      for (const run of runs) {
        expect(run.status, run.stderr).toBe(0);
        expect(Number(/Example proxy on http:\/\/127\.0\.0\.1:(\d+)/.exec(run.stdout)?.[1])).not.toBe(8080);
      }
      const ids = runs.map((run) => /demo key (key_\w+)/.exec(run.stdout)?.[1]);
      expect(ids[0]).toBeDefined();
      expect(ids[1]).toBe(ids[0]);
      expect(runs[1]?.stdout).toMatch(/^Using demo key/m);
    } finally {
      await new Promise((resolve) => taken.close(resolve));
    }
  });
});
