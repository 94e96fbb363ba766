// Where a CLI run points (a fresh SQLite file or PostgreSQL database), and the old gateway's key file to import into it.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { createStorage, type StorageConfig } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { cli, cliAsync, type Run } from './cli.js';
import { quietLogger } from './gate.js';
import { freshDatabase } from './postgres.js';
import { tempDir } from './temp.js';
import { json, startUpstream, type Upstream } from './upstream.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const iso = (ms: number): string => new Date(ms).toISOString();

/** Where a CLI run points: a SQLite file, or a PostgreSQL database. */
export interface Target {
  name: string;
  env: Record<string, string>;
  config: StorageConfig;
}

export function sqliteTarget(): Target {
  const dir = tempDir();
  const databasePath = join(dir, 'tokengate.db');
  return { name: 'sqlite', env: { DATABASE_PATH: databasePath, BACKUP_DIR: join(dir, 'backups') }, config: { databasePath } };
}

export async function postgresTarget(): Promise<Target> {
  const databaseUrl = await freshDatabase();
  return { name: 'postgres', env: { DATABASE_URL: databaseUrl, BACKUP_DIR: join(tempDir(), 'backups') }, config: { databaseUrl, fallback: false, logger: quietLogger() } };
}

/** Both stores, for `describe.each` / `it.each`: a name and a way to make a fresh target. */
export const targets: [string, () => Promise<Target>][] = [
  ['sqlite', async () => sqliteTarget()],
  ['postgres', postgresTarget],
];

/** An upstream answering 10 tokens of usage to every request, up for the whole test file. */
export function usageUpstream(): () => Upstream {
  let upstream: Upstream | undefined;
  beforeAll(async () => {
    upstream = await startUpstream(json({ id: 'x', usage: { prompt_tokens: 4, completion_tokens: 6, total_tokens: 10 } }));
  });
  afterAll(() => upstream?.close());
  return () => upstream!;
}

export const run = (target: Target, args: string[]): Run => cli(target.env.DATABASE_PATH ?? '', args, target.env);
export const runAsync = (target: Target, args: string[]): Promise<Run> => cliAsync(target.env.DATABASE_PATH ?? '', args, target.env);

export async function withStore<T>(target: Target, use: (storage: Storage) => Promise<T>): Promise<T> {
  const storage = await createStorage({ ...target.config, fallback: false, logger: quietLogger() });
  try {
    return await use(storage);
  } finally {
    await storage.close();
  }
}

/** Key i of the generated file: what it holds, and what the store must show for it after an import. */
export interface Generated {
  entry: Record<string, unknown>;
  plaintext: string;
  expired: boolean;
  lifetime: number;
  windowUsage: number;
  limit: number;
}

/**
 * 1 000 keys as the earlier gateway wrote them: each with usage windows inside and outside the
 * 5-hour window, every tenth one expired, every fifth (from 1) in the rolling_window_cache variant,
 * whose buckets then hold the window's usage.
 */
export function generate(now: number, count = 1000): Generated[] {
  return Array.from({ length: count }, (_, i) => {
    const plaintext = `pk_user_${i}_${'x'.repeat(i % 7)}`;
    const cached = i % 5 === 1;
    const windows = [
      { window_start: iso(now - HOUR), tokens_used: 100 + i },
      { window_start: iso(now - 3 * HOUR), tokens_used: 50 },
      { window_start: iso(now - 6 * HOUR), tokens_used: 1000 },
      { window_start: iso(now - 30 * HOUR), tokens_used: 77 },
    ];
    const cache = { buckets: [{ timestamp: now - 2 * HOUR, tokens: 30 + i }, { timestamp: now - 4 * HOUR, tokens: 20 }, { timestamp: now - 5.5 * HOUR, tokens: 999 }], runningTotal: 1049 + i };
    const limit = i === 3 ? 150 + i : 100_000 + i; // key 3: its window usage leaves it 0 remaining
    const entry = {
      key: plaintext,
      name: `user ${i}`,
      ...(i % 3 === 0 ? { model: 'gpt-4o-mini' } : {}),
      token_limit_per_5h: limit,
      expiry_date: iso(i % 10 === 0 ? now - DAY : now + 30 * DAY),
      created_at: iso(now - 90 * DAY + i * 1000),
      last_used: iso(now - HOUR + i),
      total_lifetime_tokens: 10_000 + i,
      usage_windows: windows,
      ...(cached ? { rolling_window_cache: cache } : {}),
    };
    const windowUsage = cached ? 50 + i : 150 + i;
    return { entry, plaintext, expired: i % 10 === 0, lifetime: 10_000 + i, windowUsage, limit };
  });
}

export function writeKeyFile(entries: unknown[]): string {
  const path = join(tempDir(), 'api_keys.json');
  writeFileSync(path, JSON.stringify({ keys: entries }, null, 2));
  return path;
}

/** Every key's totals and current-window usage, by digest. */
export async function storeState(target: Target): Promise<Map<string, { lifetime: number; lastUsed: number | null; window: number; limit: number; name: string }>> {
  return withStore(target, async (storage) => {
    const now = Date.now();
    const state = new Map<string, { lifetime: number; lastUsed: number | null; window: number; limit: number; name: string }>();
    const keys = await storage.listKeys();
    for (const key of keys) {
      const usage = await storage.windowUsage(key.id, now, 5 * HOUR);
      state.set(key.id, { lifetime: key.totalLifetimeTokens, lastUsed: key.lastUsedAt, window: usage.used, limit: key.tokenLimit, name: key.name });
    }
    return state;
  });
}
