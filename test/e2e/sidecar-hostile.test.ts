// `tokengate serve` against clients that attack the edge: floods of unfinished bodies, odd request targets, rule bypasses.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { rawRequest, rssOf, type RawAnswer } from '../helpers/raw-http.js';
import { startSidecar, type Sidecar } from '../helpers/sidecar.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const MiB = 1024 * 1024;
let upstream: Upstream;

beforeAll(async () => {
  upstream = await startUpstream(json({ usage: { total_tokens: 1 } }));
});
afterAll(async () => {
  await upstream?.close();
});

const upload = (key: string, length: number): string =>
  `POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n\r\n`;

/** Opens `count` uploads of a declared 9 MiB body that never finishes, watching the sidecar's RSS; returns the answers and the peak growth. */
async function flood(sidecar: Sidecar, key: string, count: number): Promise<{ answers: RawAnswer[]; growth: number }> {
  const pid = sidecar.process.pid!;
  const before = await rssOf(pid);
  let peak = before;
  const watching = setInterval(() => void rssOf(pid).then((rss) => (peak = Math.max(peak, rss)), () => undefined), 20);
  try {
    const answers = await Promise.all(
      Array.from({ length: count }, () => rawRequest(sidecar.url, upload(key, 9 * MiB), { body: Buffer.alloc(256 * 1024, 0x20), trickle: Buffer.alloc(16 * 1024, 0x20), timeoutMs: 30_000 })),
    );
    await Promise.all(answers.map((answer) => answer.closed));
    peak = Math.max(peak, await rssOf(pid));
    console.log(`${count} unfinished 9 MiB uploads: sidecar peak RSS growth ${((peak - before) / 1e6).toFixed(1)} MB`);
    return { answers, growth: peak - before };
  } finally {
    clearInterval(watching);
  }
}

describe('300 connections sending unfinished 9 MiB bodies', () => {
  let sidecar: Sidecar;
  afterEach(async () => {
    await sidecar?.stop();
  });

  it('with an unknown key: each gets 401 at once, its connection is closed, and RSS grows by less than 50 MB', async () => {
    sidecar = await startSidecar({ UPSTREAM_URL: upstream.url });
    const hits = upstream.hits;
    const { answers, growth } = await flood(sidecar, 'tg-no-such-key-anywhere', 300);
    expect(answers.map((answer) => answer.status)).toEqual(Array(300).fill(401));
    expect(Math.max(...answers.map((answer) => answer.answeredAfterMs))).toBeLessThan(10_000);
    expect(growth).toBeLessThan(50 * 1000 * 1000);
    expect(upstream.hits).toBe(hits);
  });

  it('with a valid key: what is read stays within BODY_MEMORY_LIMIT, the rest get 503, and the body timeout ends the readers', async () => {
    sidecar = await startSidecar({ UPSTREAM_URL: upstream.url, BODY_MEMORY_LIMIT: String(32 * MiB), BODY_TIMEOUT_MS: '2000' });
    const { key } = await sidecar.createKey();
    const hits = upstream.hits;
    const { answers, growth } = await flood(sidecar, key, 300);
    const statuses = answers.map((answer) => answer.status);
    // A declared 9 MiB is taken from the budget in full: three fit in 32 MiB.
    expect(statuses.filter((status) => status === 408).length).toBe(3);
    expect(statuses.filter((status) => status === 503).length).toBe(297);
    for (const answer of answers.filter((each) => each.status === 408)) expect(answer.answeredAfterMs).toBeGreaterThanOrEqual(1900);
    expect(growth).toBeLessThan(32 * MiB + 50 * 1000 * 1000);
    expect(upstream.hits).toBe(hits);
  });
});

describe('request targets and rules', () => {
  let sidecar: Sidecar;
  let key: string;
  beforeAll(async () => {
    sidecar = await startSidecar({ UPSTREAM_URL: `${upstream.url}/base`, OVERRIDE_MODEL: 'true', INCLUDE_STREAM_USAGE: 'true' });
    ({ key } = await sidecar.createKey({ model: 'cheap-model' }));
  });
  afterAll(async () => {
    await sidecar?.stop();
  });

  it('refuses absolute-form targets, dot-segments raw or encoded, and CONNECT with 400; an upgrade with 501; none reaches the upstream', async () => {
    const hits = upstream.hits;
    const auth = `Authorization: Bearer ${key}`;
    const { port } = new URL(upstream.url);
    for (const target of [`http://127.0.0.1:${port}/x`, '/../x', '/%2e%2e/x', '/v1/%2E./x', '/v1/.%2E/x', '/v1/./x', '/v1/..%2Fx', '/v1/..\\x', '/v1/%zz', '/v1/..;/x', '/v1/%252e%252e/x', '//evil.example/x', '/v1//x']) {
      const answer = await rawRequest(sidecar.url, `GET ${target} HTTP/1.1\r\nHost: gate\r\n${auth}`);
      expect([target, answer.status]).toEqual([target, 400]);
      expect(JSON.parse(answer.body)).toMatchObject({ error: { type: 'invalid_request_error', code: 'invalid_request_target' } });
    }
    const connect = await rawRequest(sidecar.url, `CONNECT 127.0.0.1:${port} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${auth}`);
    expect(connect.status).toBe(400);
    // An upstream answering TRACE would echo the upstream key back.
    expect((await rawRequest(sidecar.url, `TRACE /v1/x HTTP/1.1\r\nHost: gate\r\n${auth}`)).status).toBe(405);
    const upgrade = await rawRequest(sidecar.url, `GET /v1/realtime HTTP/1.1\r\nHost: gate\r\n${auth}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==`);
    expect(upgrade.status).toBe(501);
    expect(JSON.parse(upgrade.body)).toMatchObject({ error: { code: 'upgrade_not_supported' } });
    expect(upstream.hits).toBe(hits);
    // A plain path still goes through, under the upstream's own path.
    expect((await rawRequest(sidecar.url, `GET /v1/models?x=%2e%2e HTTP/1.1\r\nHost: gate\r\n${auth}`)).status).toBe(200);
    expect(upstream.last?.url).toBe('/base/v1/models?x=%2e%2e');
  });

  it('OVERRIDE_MODEL rewrites a JSON body whatever its Content-Type, BOM included, and refuses one it cannot parse', async () => {
    const sent = Buffer.from(JSON.stringify({ model: 'dear-model', messages: [] }));
    const bodies: [string, Buffer][] = [
      ['', sent],
      ['Content-Type: text/plain\r\n', sent],
      ['Content-Type: application/json\r\n', Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), sent])],
      ['Content-Type: application/json\r\n', Buffer.from('{"model":"cheap-model","model":"dear-model"}')],
    ];
    for (const [type, body] of bodies) {
      const answer = await rawRequest(sidecar.url, `POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer ${key}\r\n${type}Content-Length: ${body.length}\r\n\r\n`, { body });
      expect(answer.status).toBe(200);
      expect(JSON.parse(upstream.last!.body.toString('utf8')).model).toBe('cheap-model');
    }
    const hits = upstream.hits;
    for (const [type, body] of [['text/plain', 'model=dear-model'], ['application/json', '{"model":"dear-model",'], ['application/json', '["dear-model"]']] as const) {
      const answer = await rawRequest(sidecar.url, `POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer ${key}\r\nContent-Type: ${type}\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
      expect(answer.status).toBe(400);
      expect(JSON.parse(answer.body)).toMatchObject({ error: { type: 'invalid_request_error', code: 'invalid_body' } });
    }
    const gzipped = await rawRequest(sidecar.url, `POST /v1/chat/completions HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd`);
    expect(gzipped.status).toBe(400);
    expect(upstream.hits).toBe(hits);
  });
});
