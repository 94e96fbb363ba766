// loadSidecarConfig(): defaults, parsing, and one message naming the bad variable.
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../../src/errors.js';
import { loadSidecarConfig } from '../../../src/sidecar/config.js';

const base = { UPSTREAM_URL: 'https://api.example.com/v1' };

describe('loadSidecarConfig', () => {
  it('applies the defaults', () => {
    const config = loadSidecarConfig(base);
    expect(config).toMatchObject({
      port: 8080,
      host: '0.0.0.0',
      upstreamApiKey: undefined,
      adminToken: undefined,
      upstreamTimeoutMs: 600_000,
      bodyLimit: 10 * 1024 * 1024,
      bodyTimeoutMs: 60_000,
      bodyMemoryLimit: 100 * 1024 * 1024,
      overrideModel: false,
      includeStreamUsage: false,
      allowQueryKey: false,
      shutdownTimeoutMs: 30_000,
    });
    expect(config.upstreamUrl.href).toBe('https://api.example.com/v1');
  });

  it('reads TOKEN_WEIGHTS, and refuses weights that would serve tokens free, naming the variable', () => {
    expect(loadSidecarConfig(base).tokenWeights).toEqual({});
    expect(loadSidecarConfig({ ...base, TOKEN_WEIGHTS: 'cache_read=0.1, cache_creation=1.25' }).tokenWeights).toEqual({ cache_read: 0.1, cache_creation: 1.25 });
    expect(() => loadSidecarConfig({ ...base, TOKEN_WEIGHTS: 'cache_read=0' })).toThrow(ConfigError);
    expect(() => loadSidecarConfig({ ...base, TOKEN_WEIGHTS: 'cache_read=0' })).toThrow(/^TOKEN_WEIGHTS: cache_read: "0" is not a weight/);
    expect(() => loadSidecarConfig({ ...base, TOKEN_WEIGHTS: 'reasoning=1' })).toThrow(/^TOKEN_WEIGHTS: "reasoning=1" is not kind=weight/);
  });

  it('keeps BODY_MEMORY_LIMIT at least BODY_LIMIT by default', () => {
    expect(loadSidecarConfig({ ...base, BODY_LIMIT: String(200 * 1024 * 1024) }).bodyMemoryLimit).toBe(200 * 1024 * 1024);
  });

  it('reads every variable, blank ones counting as unset', () => {
    const config = loadSidecarConfig({
      ...base,
      UPSTREAM_API_KEY: 'sk-x',
      UPSTREAM_AUTH_HEADER: 'X-API-Key',
      PORT: '0',
      HOST: '127.0.0.1',
      ADMIN_TOKEN: 'a'.repeat(16),
      UPSTREAM_TIMEOUT_MS: '1500',
      BODY_LIMIT: '2048',
      BODY_TIMEOUT_MS: '5000',
      BODY_MEMORY_LIMIT: '4096',
      OVERRIDE_MODEL: 'TRUE',
      INCLUDE_STREAM_USAGE: 'true',
      ALLOW_QUERY_KEY: 'false',
      SHUTDOWN_TIMEOUT_MS: ' ',
      LOG_LEVEL: 'debug',
    });
    expect(config).toMatchObject({ upstreamApiKey: 'sk-x', upstreamAuthHeader: 'x-api-key', port: 0, host: '127.0.0.1', upstreamTimeoutMs: 1500, bodyLimit: 2048, bodyTimeoutMs: 5000, bodyMemoryLimit: 4096, overrideModel: true, includeStreamUsage: true, shutdownTimeoutMs: 30_000 });
  });

  it.each([
    [{}, /^UPSTREAM_URL is required/],
    [{ UPSTREAM_URL: 'ftp://x' }, /^UPSTREAM_URL must be an http:\/\/ or https:\/\/ URL$/],
    [{ UPSTREAM_URL: 'http://user:secret@x' + '/?q=1' }, /^UPSTREAM_URL must not have a query string or fragment$/],
    [{ ...base, PORT: '65536' }, /^PORT must be an integer from 0 to 65535, not "65536"$/],
    [{ ...base, PORT: '8080.5' }, /^PORT /],
    [{ ...base, BODY_LIMIT: '1e6' }, /^BODY_LIMIT /],
    [{ ...base, UPSTREAM_TIMEOUT_MS: '0' }, /^UPSTREAM_TIMEOUT_MS /],
    [{ ...base, BODY_TIMEOUT_MS: '0' }, /^BODY_TIMEOUT_MS /],
    [{ ...base, UPSTREAM_AUTH_HEADER: 'cookie' }, /^UPSTREAM_AUTH_HEADER must be authorization or x-api-key/],
    [{ ...base, BODY_MEMORY_LIMIT: '1024' }, /^BODY_MEMORY_LIMIT must be at least BODY_LIMIT \(10485760\), not 1024$/],
    [{ ...base, OVERRIDE_MODEL: '1' }, /^OVERRIDE_MODEL must be true or false/],
    [{ ...base, ADMIN_TOKEN: 'short' }, /^ADMIN_TOKEN must be at least 16 characters$/],
    [{ ...base, ADMIN_TOKEN: 'has a space in the middle' }, /^ADMIN_TOKEN must be printable ASCII/],
    [{ ...base, LOG_LEVEL: 'loud' }, /^LOG_LEVEL must be one of/],
  ])('refuses %j', (env, message) => {
    expect(() => loadSidecarConfig(env)).toThrow(ConfigError);
    expect(() => loadSidecarConfig(env)).toThrow(message);
  });

  it('never repeats a secret in its message', () => {
    expect(() => loadSidecarConfig({ UPSTREAM_URL: 'http://user:secret@x/?q=1' })).toThrow(/^(?!.*secret)/);
    expect(() => loadSidecarConfig({ ...base, ADMIN_TOKEN: 'secret' })).toThrow(/^(?!.*secret)/);
  });
});
