// The file store behind the example proxy, started from the old gateway's JSON key file (KEY_FILE).
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it, onTestFinished } from 'vitest';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import { ConfigError } from '../../src/errors.js';
import { digestKey } from '../../src/keys/secret.js';
import type { Logger } from '../../src/types.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { closeAtEnd, close, filesOf, journalFiles, SNAPSHOT } from '../helpers/file-store.js';
import { quietLogger } from '../helpers/gate.js';
import { captureLogs } from '../helpers/logs.js';
import { tempDir } from '../helpers/temp.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const iso = (ms: number): string => new Date(ms).toISOString();

const PLAINTEXTS = ['pk_user_123', 'pk_user_456', 'pk_user_789', 'pk_team_ops'];

/** The old gateway's api_keys.json: Alice in use, Bob never used, Carol expired, the ops team at its limit. */
function writeOldKeyFile(now: number): string {
  const keyFile = join(tempDir(), 'api_keys.json');
  writeFileSync(
    keyFile,
    JSON.stringify(
      {
        keys: [
          {
            key: 'pk_user_123',
            name: 'Alice',
            model: 'gpt-4o-mini',
            token_limit_per_5h: 50_000,
            expiry_date: iso(now + 30 * DAY),
            created_at: iso(now - 90 * DAY),
            last_used: iso(now - HOUR),
            total_lifetime_tokens: 123_456,
            usage_windows: [
              { window_start: iso(now - 30 * HOUR), tokens_used: 9_000 },
              { window_start: iso(now - 6 * HOUR), tokens_used: 5_000 },
              { window_start: iso(now - 2 * HOUR), tokens_used: 1_200 },
              { window_start: iso(now - HOUR), tokens_used: 300 },
            ],
          },
          {
            key: 'pk_user_456',
            name: 'Bob',
            model: null,
            token_limit_per_5h: 20_000,
            expiry_date: iso(now + 7 * DAY),
            created_at: iso(now - 10 * DAY),
            last_used: null,
            total_lifetime_tokens: 0,
            usage_windows: [],
          },
          {
            key: 'pk_user_789',
            name: 'Carol (left)',
            model: 'gpt-4o',
            token_limit_per_5h: 10_000,
            expiry_date: iso(now - DAY),
            created_at: iso(now - 200 * DAY),
            last_used: iso(now - 2 * DAY),
            total_lifetime_tokens: 777,
            usage_windows: [{ window_start: iso(now - 49 * HOUR), tokens_used: 777 }],
          },
          {
            key: 'pk_team_ops',
            name: 'Ops team',
            model: null,
            token_limit_per_5h: 1_000,
            expiry_date: iso(now + DAY),
            created_at: iso(now - 5 * DAY),
            last_used: iso(now - 20 * MINUTE),
            total_lifetime_tokens: 4_000,
            usage_windows: [
              { window_start: iso(now - 20 * HOUR), tokens_used: 3_000 },
              { window_start: iso(now - 20 * MINUTE), tokens_used: 1_000 },
            ],
          },
        ],
      },
      null,
      2,
    ),
  );
  return keyFile;
}

type Stats = Record<string, unknown> & { current_usage: Record<string, unknown> };

interface Proxy {
  upstream: Upstream;
  /** POSTs a chat completion with the key; resolves to the status. */
  call(key: string): Promise<number>;
  stats(key: string): Promise<Stats>;
}

/** The example proxy on `storage`, in front of an upstream charging 42 tokens a request; both closed when the test ends. */
async function serveProxy(storage: Storage, logger: Logger): Promise<Proxy> {
  const upstream = await startUpstream(json({ usage: { total_tokens: 42 } }));
  const { app } = createProxyApp({ storage, upstreamUrl: upstream.url, gate: { logger } });
  const server = await new Promise<Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  onTestFinished(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    await upstream.close();
  });
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    upstream,
    async call(key) {
      const response = await fetch(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }] }),
      });
      await response.arrayBuffer();
      return response.status;
    },
    async stats(key) {
      const response = await fetch(`${base}/stats`, { headers: { authorization: `Bearer ${key}` } });
      expect(response.status).toBe(200);
      return (await response.json()) as Stats;
    },
  };
}

/** What /stats shows for each old key after Alice's two requests and Bob's one. */
async function expectStatsAfterTraffic({ stats }: Proxy, now: number): Promise<void> {
  await expect.poll(async () => (await stats('pk_user_123')).total_requests).toBe(2);
  const alice = await stats('pk_user_123');
  expect(alice).toMatchObject({
    name: 'Alice',
    model: 'gpt-4o-mini',
    token_limit_per_5h: 50_000,
    expiry_date: iso(now + 30 * DAY),
    created_at: iso(now - 90 * DAY),
    is_expired: false,
    total_lifetime_tokens: 123_456 + 2 * 42,
    total_requests: 2,
  });
  // Only the windows of the last 5 h (1 200 + 300), plus the new usage.
  expect(alice.current_usage.tokens_used_in_current_window).toBe(1_500 + 2 * 42);
  expect(alice.current_usage.remaining_tokens).toBe(50_000 - 1_500 - 2 * 42);
  expect(Date.parse(alice.last_used as string)).toBeGreaterThan(now - HOUR);

  await expect.poll(async () => (await stats('pk_user_456')).total_requests).toBe(1);
  expect((await stats('pk_user_456')).total_lifetime_tokens).toBe(42);
  expect((await stats('pk_user_456')).current_usage.tokens_used_in_current_window).toBe(42);

  const carol = await stats('pk_user_789');
  expect(carol).toMatchObject({ is_expired: true, total_lifetime_tokens: 777, total_requests: 0, last_used: iso(now - 2 * DAY) });
  expect(carol.current_usage.tokens_used_in_current_window).toBe(0);

  const ops = await stats('pk_team_ops');
  expect(ops).toMatchObject({ total_lifetime_tokens: 4_000, total_requests: 0 });
  expect(ops.current_usage.tokens_used_in_current_window).toBe(1_000);
}

function expectNoPlaintext(dir: string): void {
  const files = filesOf(dir);
  expect(files.size).toBeGreaterThan(0);
  for (const [name, bytes] of files) for (const plaintext of PLAINTEXTS) expect(bytes.includes(plaintext), `${plaintext} in ${name}`).toBe(false);
}

describe('file store: the old JSON key file behind the example proxy', () => {
  it('imports it: old plaintext keys authenticate, usage in the window counts, no plaintext on disk', async () => {
    const now = Date.now();
    const keyFile = writeOldKeyFile(now);
    const dir = tempDir();
    const logs = captureLogs();
    const storage = closeAtEnd(await createStorage({ storage: 'file', fallbackDir: dir, keyFile, logger: logs.logger }));
    expect(existsSync(join(dir, SNAPSHOT))).toBe(true);
    const firstId = (await storage.findKeyByDigest(digestKey('pk_user_123')))!.id;
    expect(digestKey('pk_user_123')).not.toContain(firstId.slice(4));

    const proxy = await serveProxy(storage, logs.logger);
    expect(await proxy.call('pk_user_123')).toBe(200);
    expect(await proxy.call('pk_user_123')).toBe(200);
    expect(await proxy.call('pk_user_456')).toBe(200);
    expect(await proxy.call('pk_user_789')).toBe(403); // expired
    expect(await proxy.call('pk_user_000')).toBe(401); // never issued
    expect(await proxy.call('pk_team_ops')).toBe(429); // its 1 000 in-window tokens fill its limit
    expect(proxy.upstream.hits).toBe(3);
    await expectStatsAfterTraffic(proxy, now);

    // While running (snapshot and journal), and once closed (everything folded into the snapshot).
    expect(journalFiles(dir).length).toBeGreaterThan(0);
    expectNoPlaintext(dir);
    await close(storage);
    expectNoPlaintext(dir);

    // A restart with the same KEY_FILE does not import it again over the live store.
    const restarted = closeAtEnd(await createStorage({ storage: 'file', fallbackDir: dir, keyFile, logger: quietLogger() }));
    // Ids are random, and a restart keeps them: the snapshot holds them.
    expect(await restarted.findKeyByDigest(digestKey('pk_user_123'))).toMatchObject({ id: firstId, totalLifetimeTokens: 123_456 + 84, totalRequests: 2 });
  });

  it('refuses a key file with bad entries in one error naming each, and writes nothing', async () => {
    const now = Date.now();
    const keyFile = join(tempDir(), 'api_keys.json');
    const expiry = new Date(now + DAY).toISOString();
    writeFileSync(
      keyFile,
      JSON.stringify({
        keys: [
          { key: 'pk_user_123', name: 'fine', token_limit_per_5h: 100, expiry_date: expiry },
          { key: 'pk_user_2', token_limit_per_5h: 100, expiry_date: expiry },
          { key: 'pk_user_3', name: 'negative', token_limit_per_5h: -5, expiry_date: expiry },
          { key: 'pk_user_123', name: 'duplicate', token_limit_per_5h: 100, expiry_date: expiry },
          { key: 'pk_user_5', name: 'bad date', token_limit_per_5h: 100, expiry_date: 'next tuesday' },
        ],
      }),
    );
    const dir = tempDir();
    const error = await createStorage({ storage: 'file', fallbackDir: dir, keyFile, logger: quietLogger() }).then(
      () => undefined,
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    for (const field of ['keys[1].name', 'keys[2].token_limit_per_5h', 'keys[3].key', 'keys[4].expiry_date']) expect(message).toContain(field);
    expect(message).not.toContain('keys[0].');
    expect(message).not.toMatch(/pk_user_\d/); // it ends up in logs: no key values in it
    expect(message).toContain('4 problem');
    expect(existsSync(join(dir, SNAPSHOT))).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
  });
});
