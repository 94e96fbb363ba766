// Runs the built `tokengate serve` as a child process on loopback, with a temp SQLite file and fallback dir.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { StatsView } from '../../src/keys/view.js';
import { tempDir } from './gate.js';

const ROOT = join(import.meta.dirname, '../..');
export const CLI = join(ROOT, 'dist/src/cli/main.js');
export const ADMIN_TOKEN = 'admin-token-for-tests-0123456789';

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Sidecar {
  url: string;
  dir: string;
  dbPath: string;
  process: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** The JSON log lines written so far. */
  logs(): Record<string, unknown>[];
  exited: Promise<Exit>;
  /** An admin API call with the admin token (or `token` instead, or none when `token` is null). */
  admin(method: string, path: string, body?: unknown, token?: string | null): Promise<Response>;
  /** Creates a key through the admin API. */
  createKey(fields?: Record<string, unknown>): Promise<{ key: string; id: string }>;
  stats(key: string): Promise<StatsView>;
  /** Polls /stats until the key has `count` recorded requests and nothing reserved (usage is recorded after the response ends). */
  settled(key: string, count: number): Promise<StatsView>;
  /** Kills the process if it still runs and deletes its files. */
  stop(): Promise<void>;
}

/** The environment of a sidecar on a free loopback port with its own store; `env` adds or overrides. */
export function sidecarEnv(dir: string, env: Record<string, string>): NodeJS.ProcessEnv {
  return {
    ...process.env,
    DATABASE_URL: '',
    STORAGE: '',
    DATABASE_PATH: join(dir, 'tokengate.db'),
    FALLBACK_DIR: join(dir, 'fallback'),
    PORT: '0',
    HOST: '127.0.0.1',
    ADMIN_TOKEN,
    LOG_LEVEL: 'info',
    ...env,
  };
}

export async function startSidecar(env: Record<string, string>, dir = tempDir()): Promise<Sidecar> {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` first`);
  const child = spawn(process.execPath, [CLI, 'serve'], { cwd: dir, env: sidecarEnv(dir, env), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (out += text));
  child.stderr.setEncoding('utf8').on('data', (text: string) => (err += text));
  const exited = new Promise<Exit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const logs = (): Record<string, unknown>[] =>
    out
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);

  const port = await waitFor(
    () => logs().find((line) => line.msg === 'tokengate sidecar listening')?.port as number | undefined,
    () => child.exitCode !== null && `tokengate serve exited with ${child.exitCode}: ${err}`,
  );
  const url = `http://127.0.0.1:${port}`;

  const sidecar: Sidecar = {
    url,
    dir,
    dbPath: join(dir, 'tokengate.db'),
    process: child,
    stdout: () => out,
    stderr: () => err,
    logs,
    exited,
    admin(method, path, body, token = ADMIN_TOKEN) {
      return fetch(`${url}${path}`, {
        method,
        headers: { ...(token === null ? {} : { authorization: `Bearer ${token}` }), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
      });
    },
    async createKey(fields = {}) {
      const response = await sidecar.admin('POST', '/admin/keys', { name: 'test', token_limit_per_5h: 1_000_000, expiry_date: '2999-01-01', ...fields });
      if (response.status !== 201) throw new Error(`creating a key failed: ${response.status} ${await response.text()}`);
      return (await response.json()) as { key: string; id: string };
    },
    async stats(key) {
      const response = await fetch(`${url}/stats`, { headers: { authorization: `Bearer ${key}` } });
      if (response.status !== 200) throw new Error(`/stats answered ${response.status}: ${await response.text()}`);
      return (await response.json()) as StatsView;
    },
    async settled(key, count) {
      let last: StatsView | undefined;
      return waitFor(
        async () => {
          last = await sidecar.stats(key);
          return last.total_requests >= count && last.current_usage.reserved_tokens === 0 ? last : undefined;
        },
        () => false,
        () => `key did not reach ${count} settled requests: ${JSON.stringify(last)}`,
      );
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return sidecar;
}

/** Runs `tokengate serve` expecting it to exit by itself (bad configuration). */
export async function runSidecarToExit(env: Record<string, string>): Promise<Exit & { stdout: string; stderr: string }> {
  const dir = tempDir();
  const child = spawn(process.execPath, [CLI, 'serve'], { cwd: dir, env: sidecarEnv(dir, env), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const exit = await new Promise<Exit>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  clearTimeout(killer);
  rmSync(dir, { recursive: true, force: true });
  return { ...exit, stdout, stderr };
}

/** Polls `probe` until it returns a value; fails early when `failed` says why, or after a generous deadline. */
export async function waitFor<T>(
  probe: () => T | undefined | Promise<T | undefined>,
  failed: () => string | false = () => false,
  timeoutMessage: () => string = () => 'condition not met in time',
  deadlineMs = 20_000,
): Promise<T> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    const reason = failed();
    if (reason) throw new Error(reason);
    if (Date.now() > until) throw new Error(timeoutMessage());
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
