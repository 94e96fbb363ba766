// What reads which variables: createStorage() only where the store is, `serve` and the CLI all of them; one window per gate and store.
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import express from 'express';
import request from 'supertest';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { statsHandler } from '../../middleware/stats.js';
import { tokenGate } from '../../middleware/gate.js';
import { ConfigError } from '../../src/errors.js';
import { createStorage } from '../../src/storage/create.js';
import { cli, expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { quietLogger, tempDbPath, tempDir } from '../helpers/gate.js';
import { runSidecarToExit, startSidecar } from '../helpers/sidecar.js';

const HOUR = 3_600_000;

/** A key file of the earlier gateway with one key, as KEY_FILE names it. */
function keyFile(key: string): string {
  const path = join(tempDir(), 'api_keys.json');
  writeFileSync(path, JSON.stringify({ keys: [{ key, name: 'from-file', token_limit_per_5h: 1000, expiry_date: new Date(Date.now() + 24 * HOUR).toISOString() }] }));
  return path;
}

describe('createStorage() in a host app', () => {
  afterEach(() => vi.unstubAllEnvs());

  it('reads DATABASE_PATH, and ignores the variables it leaves to `serve` and the CLI, bad values included', async () => {
    const databasePath = tempDbPath();
    vi.stubEnv('DATABASE_URL', '');
    vi.stubEnv('DATABASE_PATH', databasePath);
    // What a host app might use these names for, none of which is tokengate's business.
    vi.stubEnv('STORAGE', 's3');
    vi.stubEnv('KEY_FILE', '/nonexistent/keys.pem');
    vi.stubEnv('KEY_CACHE_TTL_MS', 'garbage');
    vi.stubEnv('RESERVATION_TTL_MS', 'forever');
    vi.stubEnv('RECORD_RETENTION', 'a week');
    vi.stubEnv('DATABASE_POOL_SIZE', 'zero');
    vi.stubEnv('FALLBACK_TIMEOUT_MS', '-1');
    const storage = await createStorage({ logger: quietLogger() });
    try {
      expect(storage.backend).toBe('sqlite');
      expect(existsSync(databasePath)).toBe(true);
    } finally {
      await storage.close();
    }
  });

  it('does not take STORAGE=file from the environment: the file store is an option', async () => {
    vi.stubEnv('DATABASE_URL', '');
    vi.stubEnv('DATABASE_PATH', tempDbPath());
    vi.stubEnv('STORAGE', 'file');
    const fallbackDir = tempDir();
    const storage = await createStorage({ fallbackDir, logger: quietLogger() });
    await storage.close();
    expect(storage.backend).toBe('sqlite');
    const file = await createStorage({ storage: 'file', fallbackDir, logger: quietLogger() });
    await file.close();
    expect(file.backend).toBe('file');
  });
});

describe('`tokengate serve` and the CLI', () => {
  beforeAll(() => requireBuiltCli());

  it('serve honours STORAGE=file and KEY_FILE', async () => {
    const sidecar = await startSidecar({ UPSTREAM_URL: 'http://127.0.0.1:9', STORAGE: 'file', KEY_FILE: keyFile('pk_from_file_1') });
    try {
      expect(sidecar.logs().find((line) => line.msg === 'tokengate sidecar listening')?.backend).toBe('file');
      expect(await sidecar.stats('pk_from_file_1')).toMatchObject({ name: 'from-file', token_limit_per_5h: 1000 });
    } finally {
      await sidecar.stop();
    }
  });

  it('serve refuses a bad store variable in one line naming it', async () => {
    const run = await runSidecarToExit({ UPSTREAM_URL: 'http://127.0.0.1:9', KEY_CACHE_TTL_MS: 'garbage' });
    expect(run.code).toBe(1);
    expect(run.stderr.trim()).toBe('tokengate: KEY_CACHE_TTL_MS must be a non-negative integer, not "garbage"');
  });

  it('the CLI honours STORAGE=file and KEY_FILE, and refuses a bad store variable naming it', () => {
    const env = { STORAGE: 'file', FALLBACK_DIR: tempDir(), KEY_FILE: keyFile('pk_from_file_2') };
    const listed = cli(tempDbPath(), ['keys', 'list', '--json'], env);
    expect(listed.status).toBe(0);
    expect(JSON.parse(listed.stdout)).toMatchObject({ keys: [{ name: 'from-file' }], store: `file ${env.FALLBACK_DIR}` });
    expectFailure(cli(tempDbPath(), ['keys', 'list'], { DATABASE_POOL_SIZE: '0' }), /^tokengate: DATABASE_POOL_SIZE must be a positive integer, not "0"$/);
  });
});

describe('the window of a gate and of its storage', () => {
  const storages: { close(): Promise<void> }[] = [];
  afterAll(async () => {
    for (const storage of storages) await storage.close();
  });

  async function storageWithWindow(windowMs?: number) {
    const storage = await createStorage({ databasePath: tempDbPath(), logger: quietLogger(), ...(windowMs === undefined ? {} : { windowMs }) });
    storages.push(storage);
    return storage;
  }

  it("is the storage's by default", async () => {
    const storage = await storageWithWindow(HOUR);
    const { key } = await storage.createKey({ name: 'w', tokenLimit: 1000, expiresAt: Date.now() + 24 * HOUR });
    const app = express().use(tokenGate({ storage, logger: quietLogger() }), (_req, res) => void res.json({}));
    const response = await request(app).post('/').set('authorization', `Bearer ${key}`).send({});
    expect(response.status).toBe(200);
    expect(response.headers['ratelimit-policy']).toMatch(/;w=3600$/);
  });

  it('may be shorter than the storage keeps, never longer', async () => {
    const storage = await storageWithWindow();
    expect(() => tokenGate({ storage, windowMs: HOUR })).not.toThrow();
    expect(() => tokenGate({ storage, windowMs: 5 * HOUR })).not.toThrow();
    expect(() => tokenGate({ storage, windowMs: 7 * 24 * HOUR })).toThrow(ConfigError);
    expect(() => tokenGate({ storage, windowMs: 7 * 24 * HOUR })).toThrow(
      'tokenGate: `windowMs` (7d) is longer than the window its storage keeps (5h): pass the same windowMs to createStorage()',
    );
    expect(() => statsHandler({ storage, windowMs: 6 * HOUR })).toThrow(/^statsHandler: `windowMs` \(6h\) is longer than the window its storage keeps \(5h\)/);
    const weekly = await storageWithWindow(7 * 24 * HOUR);
    expect(() => tokenGate({ storage: weekly, windowMs: 7 * 24 * HOUR })).not.toThrow();
  });
});
