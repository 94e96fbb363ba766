// `tokengate serve` start and stop: graceful SIGTERM with usage recorded, one-line refusals of bad config.
import net, { type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createStorage } from '../../src/storage/create.js';
import { quietLogger, tempDir } from '../helpers/gate.js';
import { runSidecarToExit, startSidecar, waitFor, type Sidecar } from '../helpers/sidecar.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

let upstream: Upstream;

beforeAll(async () => {
  upstream = await startUpstream();
});
afterAll(async () => {
  await upstream?.close();
});

/** An SSE stream that sends one event, then waits for `release` before its usage chunk and end. */
function heldSse(release: Promise<void>, totalTokens: number): Upstream['respond'] {
  return (_req, _body, res) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n');
    void release.then(() => {
      res.write(`data: ${JSON.stringify({ choices: [], usage: { total_tokens: totalTokens } })}\n\n`);
      res.end('data: [DONE]\n\n');
    });
  };
}

async function recorded(sidecar: Sidecar, id: string): Promise<{ requests: number; tokens: number }> {
  const storage = await createStorage({ databasePath: sidecar.dbPath, logger: quietLogger() });
  try {
    const record = await storage.getKey(id);
    return { requests: record?.totalRequests ?? -1, tokens: record?.totalLifetimeTokens ?? -1 };
  } finally {
    await storage.close();
  }
}

async function openStream(sidecar: Sidecar, key: string): Promise<ReadableStreamDefaultReader<Uint8Array>> {
  const response = await fetch(`${sidecar.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: '{"model":"m","stream":true,"messages":[]}',
  });
  expect(response.status).toBe(200);
  const reader = response.body!.getReader();
  await reader.read(); // the first event arrived: the stream is in flight
  return reader;
}

async function readRest(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<string> {
  let text = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return text;
    text += Buffer.from(value).toString('utf8');
  }
}

const shuttingDown = (sidecar: Sidecar) => () => sidecar.logs().find((line) => String(line.msg).startsWith('shutting down')) ?? undefined;

describe('SIGTERM', () => {
  it('lets an active stream finish, records its usage, refuses new connections, and exits 0', async () => {
    const sidecar = await startSidecar({ UPSTREAM_URL: upstream.url });
    try {
      let release!: () => void;
      upstream.respond = heldSse(new Promise<void>((resolve) => (release = resolve)), 77);
      const { key, id } = await sidecar.createKey();
      const reader = await openStream(sidecar, key);

      sidecar.process.kill('SIGTERM');
      await waitFor(shuttingDown(sidecar));
      await expect(fetch(`${sidecar.url}/stats`, { headers: { authorization: `Bearer ${key}` } })).rejects.toThrow();
      release();
      expect(await readRest(reader)).toContain('data: [DONE]');

      expect(await sidecar.exited).toEqual({ code: 0, signal: null });
      expect(sidecar.stderr()).toBe('');
      expect(sidecar.logs().some((line) => String(line.msg).startsWith('tokengate sidecar stopped'))).toBe(true);
      expect(await recorded(sidecar, id)).toEqual({ requests: 1, tokens: 77 });
    } finally {
      await sidecar.stop();
    }
  });

  it('closes a stream still running after SHUTDOWN_TIMEOUT_MS, charges what it streamed, and exits 0', async () => {
    const sidecar = await startSidecar({ UPSTREAM_URL: upstream.url, SHUTDOWN_TIMEOUT_MS: '300' });
    try {
      upstream.respond = heldSse(new Promise<void>(() => undefined), 1); // never finishes by itself
      const { key, id } = await sidecar.createKey();
      const reader = await openStream(sidecar, key);
      sidecar.process.kill('SIGTERM');
      await expect(readRest(reader)).rejects.toThrow();
      expect(await sidecar.exited).toEqual({ code: 0, signal: null });
      const { requests, tokens } = await recorded(sidecar, id);
      expect(requests).toBe(1);
      expect(tokens).toBeGreaterThan(0);
    } finally {
      await sidecar.stop();
    }
  });
});

describe('bad configuration', () => {
  it.each([
    ['UPSTREAM_URL', { UPSTREAM_URL: '' }],
    ['UPSTREAM_URL', { UPSTREAM_URL: 'not a url' }],
    ['PORT', { UPSTREAM_URL: 'http://127.0.0.1:9', PORT: 'eighty' }],
    ['PORT', { UPSTREAM_URL: 'http://127.0.0.1:9', PORT: '70000' }],
    ['DATABASE_URL', { UPSTREAM_URL: 'http://127.0.0.1:9', DATABASE_URL: 'mysql://db/tokengate' }],
    ['UPSTREAM_TIMEOUT_MS', { UPSTREAM_URL: 'http://127.0.0.1:9', UPSTREAM_TIMEOUT_MS: '-1' }],
    ['INCLUDE_STREAM_USAGE', { UPSTREAM_URL: 'http://127.0.0.1:9', INCLUDE_STREAM_USAGE: 'yes' }],
  ])('exits non-zero with one stderr line naming %s', async (variable, env) => {
    const run = await runSidecarToExit(env);
    expect(run.code).not.toBe(0);
    expect(run.code).not.toBeNull();
    const lines = run.stderr.split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(new RegExp(`^tokengate: ${variable} `));
    expect(lines[1]).toBe('');
  });

  it('exits 1 with one line when its port is taken, even with scheduled backups', async () => {
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as AddressInfo).port;
    try {
      const run = await runSidecarToExit({ UPSTREAM_URL: 'http://127.0.0.1:9', HOST: '127.0.0.1', PORT: String(port), BACKUP_SCHEDULE: '*/1 * * * * *', BACKUP_DIR: tempDir() });
      expect(run.signal).toBeNull(); // it ended by itself, not by the helper's kill
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/^tokengate: .*EADDRINUSE.*\n$/);
    } finally {
      taken.close();
    }
  });
});
