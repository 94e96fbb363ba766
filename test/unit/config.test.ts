// The environment schema: each variable read into the setting it names, blank ones unset, and one message naming a bad one.
import { describe, expect, it } from 'vitest';
import { readEnvironment, readServeEnvironment, storageForWindow, storageLocation } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';

const HOUR = 3_600_000;

describe('readEnvironment', () => {
  it('leaves unset store settings undefined, so that createStorage() applies its own defaults', () => {
    const environment = readEnvironment({});
    expect(Object.values(environment.storage).every((value) => value === undefined)).toBe(true);
    expect(environment).toMatchObject({ backupDir: './backups', backups: undefined, logLevel: undefined });
  });

  it("reads every store variable into createStorage()'s option of the same meaning, blank ones counting as unset", () => {
    const { storage } = readEnvironment({
      DATABASE_URL: 'postgres://db/tokengate',
      DATABASE_PATH: '/data/t.db',
      FALLBACK_DIR: '/data/fallback',
      DATABASE_POOL_SIZE: '4',
      DATABASE_CONNECT_TIMEOUT: ' 9 ',
      DATABASE_STATEMENT_TIMEOUT_MS: '7000',
      RESERVATION_TTL_MS: '60000',
      KEY_CACHE_TTL_MS: '0',
      RECORD_RETENTION: '30d',
      FALLBACK_TIMEOUT_MS: '',
      FALLBACK_SNAPSHOT_INTERVAL_MS: '1000',
      STORAGE: 'file',
      KEY_FILE: '/data/api_keys.json',
    });
    expect(storage).toEqual({
      databaseUrl: 'postgres://db/tokengate',
      databasePath: '/data/t.db',
      fallbackDir: '/data/fallback',
      poolSize: 4,
      connectTimeoutSeconds: 9,
      statementTimeoutMs: 7000,
      reservationTtlMs: 60_000,
      keyCacheTtlMs: 0,
      recordRetentionMs: 30 * 24 * HOUR,
      fallbackTimeoutMs: undefined,
      snapshotIntervalMs: 1000,
      storage: 'file',
      keyFile: '/data/api_keys.json',
    });
  });

  it.each([
    [{ DATABASE_POOL_SIZE: '0' }, /^DATABASE_POOL_SIZE must be a positive integer, not "0"$/],
    [{ DATABASE_CONNECT_TIMEOUT: '2.5' }, /^DATABASE_CONNECT_TIMEOUT must be a positive integer, not "2.5"$/],
    [{ RESERVATION_TTL_MS: '-1' }, /^RESERVATION_TTL_MS must be a positive integer/],
    [{ KEY_CACHE_TTL_MS: 'garbage' }, /^KEY_CACHE_TTL_MS must be a non-negative integer, not "garbage"$/],
    [{ FALLBACK_TIMEOUT_MS: '1e3' }, /^FALLBACK_TIMEOUT_MS must be a positive integer/],
    [{ FALLBACK_SNAPSHOT_INTERVAL_MS: '99999999999999999999' }, /^FALLBACK_SNAPSHOT_INTERVAL_MS must be a positive integer/],
    [{ RECORD_RETENTION: '604800000' }, /^RECORD_RETENTION must be a duration such as 90s, 30m, 12h or 7d, not "604800000"$/],
    [{ STORAGE: 'sqlite' }, /^STORAGE must be "file" or unset, not "sqlite"$/],
    [{ LOG_LEVEL: 'verbose' }, /^LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, not "verbose"$/],
  ])('refuses %j with a ConfigError naming the variable', (env, message) => {
    expect(() => readEnvironment(env)).toThrow(ConfigError);
    expect(() => readEnvironment(env)).toThrow(message);
  });

  it("does not read the sidecar's own variables, which only `serve` uses", () => {
    expect(() => readEnvironment({ PORT: 'eighty' })).not.toThrow();
    expect(() => readServeEnvironment({ UPSTREAM_URL: 'http://up', PORT: 'eighty' })).toThrow(/^PORT must be an integer from 0 to 65535, not "eighty"$/);
  });
});

describe('storageForWindow', () => {
  const storage = (env: NodeJS.ProcessEnv) => readEnvironment(env).storage;

  it('adds the window, RECORD_RETENTION being at least as long', () => {
    expect(storageForWindow(storage({ RECORD_RETENTION: '5h' }), 5 * HOUR)).toMatchObject({ recordRetentionMs: 5 * HOUR, windowMs: 5 * HOUR });
    expect(storageForWindow(storage({}), 7 * 24 * HOUR)).toMatchObject({ recordRetentionMs: undefined, windowMs: 7 * 24 * HOUR });
  });

  it('refuses a RECORD_RETENTION shorter than the window', () => {
    expect(() => storageForWindow(storage({ RECORD_RETENTION: '3d' }), 7 * 24 * HOUR)).toThrow(/^RECORD_RETENTION must be at least the window \(7d\), not "3d"$/);
  });
});

describe('storageLocation', () => {
  it("reads DATABASE_URL, DATABASE_PATH and FALLBACK_DIR, and nothing else, not even a bad value of the other variables", () => {
    const env = { DATABASE_URL: '', DATABASE_PATH: '/data/t.db', FALLBACK_DIR: ' ', STORAGE: 'file', KEY_CACHE_TTL_MS: 'garbage', LOG_LEVEL: 'verbose' };
    expect(storageLocation(env)).toEqual({ databaseUrl: undefined, databasePath: '/data/t.db', fallbackDir: undefined });
  });
});
