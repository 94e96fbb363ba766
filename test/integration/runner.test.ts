// The suite's own harness: a failing test must fail the run, whatever the global setup started.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '../..');

it('exits non-zero when a test fails, with the PostgreSQL global setup in place', () => {
  const run = spawnSync(process.execPath, ['node_modules/vitest/vitest.mjs', 'run', '--config', 'test/fixtures/vitest.fails.config.ts'], {
    cwd: ROOT,
    env: { ...process.env, TEST_DATABASE_URL: '' },
    encoding: 'utf8',
    timeout: 60_000,
  });
  expect(run.stdout + run.stderr).toMatch(/1 failed/);
  expect(run.status).toBe(1);
});
