// Runs the built `tokengate` binary as a child process, as users run it, and checks its one-line errors.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';

export const ROOT = join(import.meta.dirname, '../..');
export const CLI = join(ROOT, 'dist/src/cli/main.js');

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Throws unless the CLI was built (`npm run build`). */
export function requireBuiltCli(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
}

function environment(dbPath: string, env: Record<string, string>): NodeJS.ProcessEnv {
  return { ...process.env, DATABASE_URL: '', DATABASE_PATH: dbPath, ...env };
}

/** Runs the CLI on the SQLite file `dbPath` (or whatever `env` selects) and waits for it. */
export function cli(dbPath: string, args: string[], env: Record<string, string> = {}): Run {
  const result = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, env: environment(dbPath, env), encoding: 'utf8', timeout: 120_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** The same, without blocking this process (so a server in it keeps answering meanwhile). */
export function cliAsync(dbPath: string, args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: environment(dbPath, env) });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** Asserts the run failed with exit 1, nothing on stdout and exactly one stderr line `tokengate: …`. */
export function expectFailure(run: Run, mentions: RegExp): string {
  expect(run.status).toBe(1);
  expect(run.stdout).toBe('');
  const lines = run.stderr.split('\n');
  expect(lines).toHaveLength(2); // one line and its newline
  expect(lines[1]).toBe('');
  const line = lines[0] ?? '';
  expect(line).toMatch(/^tokengate: /);
  expect(line).toMatch(mentions);
  expect(run.stderr).not.toMatch(/\bat .*\.js:\d+/); // no stack trace
  return line;
}
