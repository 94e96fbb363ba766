// The sidecar's admin API and /stats over HTTP: CRUD, token checks, invalid input, never proxied.
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { ADMIN_TOKEN, startSidecar, type Sidecar } from '../helpers/sidecar.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

interface ErrorAnswer {
  error: { message: string; type: string; code: string; param?: string };
}

let upstream: Upstream;
let sidecar: Sidecar;
let closed: Sidecar;

beforeAll(async () => {
  upstream = await startUpstream(json({ usage: { total_tokens: 40 } }));
  [sidecar, closed] = await Promise.all([startSidecar({ UPSTREAM_URL: upstream.url }), startSidecar({ UPSTREAM_URL: upstream.url, ADMIN_TOKEN: '' })]);
});
afterAll(async () => {
  await sidecar?.stop();
  await closed?.stop();
  await upstream?.close();
});

const valid = { name: 'alice', token_limit_per_5h: 200_000, expiry_date: '2999-01-01T00:00:00Z' };

describe('admin API', () => {
  it('creates (plaintext once), lists masked, shows, updates and deletes a key; never reaching the upstream', async () => {
    const hits = upstream.hits;
    const created = await sidecar.admin('POST', '/admin/keys', { ...valid, model: 'gpt-x' });
    expect(created.status).toBe(201);
    const record = (await created.json()) as Record<string, unknown> & { id: string; key: string };
    expect(record).toMatchObject({ name: 'alice', model: 'gpt-x', token_limit_per_5h: 200_000, expiry_date: '2999-01-01T00:00:00.000Z', total_requests: 0 });
    expect(record.key).toMatch(/^tg-/);
    expect(created.headers.get('location')).toBe(`/admin/keys/${record.id}`);

    const listed = await sidecar.admin('GET', '/admin/keys');
    const listText = await listed.text();
    expect(listText).not.toContain(record.key);
    const { keys } = JSON.parse(listText) as { keys: { id: string; key: string }[] };
    expect(keys.find((k) => k.id === record.id)?.key).toMatch(/^tg-.*\.\.\.$/);

    const shown = (await (await sidecar.admin('GET', `/admin/keys/${record.id}`)).json()) as { key: string; name: string };
    expect(shown.name).toBe('alice');
    expect(shown.key).not.toBe(record.key);

    const patched = await sidecar.admin('PATCH', `/admin/keys/${record.id}`, { token_limit_per_5h: 5, model: null, name: 'alice2' });
    expect(patched.status).toBe(200);
    expect(await patched.json()).toMatchObject({ token_limit_per_5h: 5, model: null, name: 'alice2' });

    const deleted = await sidecar.admin('DELETE', `/admin/keys/${record.id}`);
    expect(deleted.status).toBe(200);
    expect(await deleted.json()).toEqual({ id: record.id, deleted: true });
    expect((await sidecar.admin('GET', `/admin/keys/${record.id}`)).status).toBe(404);
    const gone = await fetch(`${sidecar.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${record.key}` }, body: '{}' });
    expect(gone.status).toBe(401);
    expect(upstream.hits).toBe(hits);
  });

  it.each([
    ['no Authorization', null],
    ['a wrong token', 'admin-token-for-tests-012345678X'],
    ['a shorter token', 'admin'],
    ['a much longer token', 'admin-token-for-tests-0123456789'.repeat(10)],
  ])('answers 401 with %s', async (_name, token) => {
    const response = await sidecar.admin('GET', '/admin/keys', undefined, token);
    expect(response.status).toBe(401);
    expect(((await response.json()) as ErrorAnswer).error.type).toBe('authentication_error');
    expect((await sidecar.admin('POST', '/admin/keys', valid, token)).status).toBe(401);
  });

  it.each([
    ['name', { ...valid, name: undefined }],
    ['name', { ...valid, name: '' }],
    ['name', { ...valid, name: 'n'.repeat(201) }],
    ['token_limit_per_5h', { ...valid, token_limit_per_5h: '100' }],
    ['token_limit_per_5h', { ...valid, token_limit_per_5h: 0 }],
    ['token_limit_per_5h', { ...valid, token_limit_per_5h: -5 }],
    ['token_limit_per_5h', { ...valid, token_limit_per_5h: 1.5 }],
    ['token_limit_per_5h', { ...valid, token_limit_per_5h: 2 ** 53 }],
    ['expiry_date', { ...valid, expiry_date: undefined }],
    ['expiry_date', { ...valid, expiry_date: 'tomorrow' }],
    ['expiry_date', { ...valid, expiry_date: '2027-02-30' }],
    ['expiry_date', { ...valid, expiry_date: 1893456000000 }],
    ['model', { ...valid, model: 42 }],
    ['key', { ...valid, key: 'has space' }],
    ['key', { ...valid, key: 12345 }],
    ['limit', { ...valid, limit: 5 }],
  ])('answers 400 naming %s for %j', async (field, body) => {
    const response = await sidecar.admin('POST', '/admin/keys', body);
    expect(response.status).toBe(400);
    const { error } = (await response.json()) as ErrorAnswer;
    expect(error).toMatchObject({ type: 'invalid_request_error', param: field });
    expect(error.message).toContain(field);
  });

  it("sets a key's token weights, which the gate then charges by, over TOKEN_WEIGHTS; clears them; refuses bad ones naming the field", async () => {
    const weighing = await startSidecar({ UPSTREAM_URL: upstream.url, TOKEN_WEIGHTS: 'input=0.5' });
    onTestFinished(() => weighing.stop());
    const created = await weighing.admin('POST', '/admin/keys', { ...valid, weights: { cache_read: 0.1 } });
    expect(created.status).toBe(201);
    const record = (await created.json()) as { id: string; key: string; weights: unknown };
    expect(record.weights).toEqual({ cache_read: 0.1 });
    expect(await (await weighing.admin('GET', `/admin/keys/${record.id}`)).json()).toMatchObject({ weights: { cache_read: 0.1 } });

    // The upstream reports 40 tokens without a split, which count as input: the key's own
    // input=0.25 charges 10 of them, over TOKEN_WEIGHTS's input=0.5.
    const patched = await weighing.admin('PATCH', `/admin/keys/${record.id}`, { weights: 'input=0.25,output=3' });
    expect(await patched.json()).toMatchObject({ weights: { input: 0.25, output: 3 } });
    const charged = async (): Promise<number> => ((await (await weighing.admin('GET', `/admin/keys/${record.id}`)).json()) as { total_lifetime_tokens: number }).total_lifetime_tokens;
    const send = async (): Promise<void> => {
      const answer = await fetch(`${weighing.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${record.key}` }, body: '{}' });
      expect(answer.status).toBe(200);
      await answer.text();
    };
    await send();
    await expect.poll(charged).toBe(10);

    const cleared = await weighing.admin('PATCH', `/admin/keys/${record.id}`, { weights: null });
    expect(await cleared.json()).toMatchObject({ weights: null });
    // TOKEN_WEIGHTS alone now: 20 more.
    await send();
    await expect.poll(charged).toBe(30);
    for (const weights of [{ cache_read: 0 }, { cache: 1 }, 'input=-1', [0.1], { output: '2' }]) {
      const refused = await weighing.admin('PATCH', `/admin/keys/${record.id}`, { weights });
      expect(refused.status).toBe(400);
      expect(((await refused.json()) as ErrorAnswer).error.param).toBe('weights');
    }
  });

  it('creates a key with several limits, which the gate then decides by; changes and clears them; refuses bad ones naming the field', async () => {
    const created = await sidecar.admin('POST', '/admin/keys', { name: 'plan', expiry_date: valid.expiry_date, limits: [{ window: '5h', tokens: 100 }, { name: 'weekly', window: '7d', tokens: 1000 }] });
    expect(created.status).toBe(201);
    const record = (await created.json()) as { id: string; key: string };
    expect(record).toMatchObject({ token_limit_per_5h: 100, limits: [{ name: '5h', tokens: 100, window: '5h' }, { name: 'weekly', tokens: 1000, window: '7d', window_seconds: 604_800 }] });
    // 40 tokens an answer: after three of them the 5-hour limit has nothing left.
    for (let i = 0; i < 3; i++) {
      const answer = await fetch(`${sidecar.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${record.key}` }, body: '{}' });
      expect(answer.status).toBe(200);
      expect(answer.headers.get('ratelimit-policy')).toBe('"tokens-5h";q=100;qu="tokens";w=18000, "tokens-weekly";q=1000;qu="tokens";w=604800');
      await answer.text();
      await expect.poll(async () => ((await sidecar.stats(record.key)) as { total_requests: number }).total_requests).toBe(i + 1);
    }
    const refused = await fetch(`${sidecar.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${record.key}` }, body: '{}' });
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({ error: { limit: '5h', tokens_limit: 100 } });

    const patched = await sidecar.admin('PATCH', `/admin/keys/${record.id}`, { token_limit_per_5h: 500 });
    expect(await patched.json()).toMatchObject({ token_limit_per_5h: 500, limits: [{ name: '5h', tokens: 500 }, { name: 'weekly', tokens: 1000 }] });
    const cleared = await sidecar.admin('PATCH', `/admin/keys/${record.id}`, { limits: null });
    expect(await cleared.json()).toMatchObject({ token_limit_per_5h: 500, limits: [{ name: '5h', tokens: 500, window: '5h' }] });
    const weekly = (await (await sidecar.admin('POST', '/admin/keys', { name: 'weekly', expiry_date: valid.expiry_date, limits: [{ window: '7d', tokens: 2_000_000 }] })).json()) as { id: string; token_limit_per_5h: number | null };
    expect(weekly.token_limit_per_5h).toBeNull();
    // Clearing its limits would leave it 2 000 000 tokens per 5 hours: token_limit_per_5h must say how many.
    const unclear = await sidecar.admin('PATCH', `/admin/keys/${weekly.id}`, { limits: null });
    expect(unclear.status).toBe(400);
    expect(((await unclear.json()) as ErrorAnswer).error.param).toBe('token_limit_per_5h');
    expect(await (await sidecar.admin('PATCH', `/admin/keys/${weekly.id}`, { limits: null, token_limit_per_5h: 1000 })).json()).toMatchObject({ token_limit_per_5h: 1000, limits: [{ name: '5h', tokens: 1000 }] });
    await sidecar.admin('DELETE', `/admin/keys/${weekly.id}`);
    for (const [limits, param] of [
      [[{ window: '5h', tokens: 0 }], 'limits[0]'],
      [[{ window: '40d', tokens: 5 }], 'limits[0]'],
      [[{ window: '5h', tokens: 5, model: 'x' }], 'limits[0]'],
      [[{ window: '5h', tokens: 5 }, { window: '5h', tokens: 6 }], 'limits'],
      [[{ name: 'glm', window: '5h', tokens: 5, models: ['glm-*'] }], 'limits'],
      [[{ name: '5h', window: '7d', tokens: 5 }], 'limits'],
      ['5h=100', 'limits'],
    ] as const) {
      const answer = await sidecar.admin('PATCH', `/admin/keys/${record.id}`, { limits });
      expect(answer.status).toBe(400);
      expect(((await answer.json()) as ErrorAnswer).error.param).toBe(param);
    }
    await sidecar.admin('DELETE', `/admin/keys/${record.id}`);
  });

  it('refuses malformed JSON, a non-object, an oversized body and a duplicate key with 4xx, and keeps serving', async () => {
    const malformed = await sidecar.admin('POST', '/admin/keys', '{"name": "a",');
    expect(malformed.status).toBe(400);
    expect(((await malformed.json()) as ErrorAnswer).error.code).toBe('invalid_json');
    expect((await sidecar.admin('POST', '/admin/keys', '[1,2]')).status).toBe(400);
    expect((await sidecar.admin('POST', '/admin/keys', { ...valid, name: 'x'.repeat(20_000) })).status).toBe(413);
    expect((await sidecar.admin('POST', '/admin/keys', { ...valid, key: 'pk_user_123' })).status).toBe(201);
    const duplicate = await sidecar.admin('POST', '/admin/keys', { ...valid, key: 'pk_user_123' });
    expect(duplicate.status).toBe(400);
    expect(((await duplicate.json()) as ErrorAnswer).error.param).toBe('key');
    expect((await sidecar.admin('GET', '/admin/keys')).status).toBe(200);
  });

  it('refuses keys HTTP cannot carry, dates without a time zone, and an expiry in the past on create, naming the field', async () => {
    for (const [fields, param] of [
      [{ key: 'pk_ünïcode' }, 'key'],
      [{ key: 'has space' }, 'key'],
      [{ expiry_date: '2099-01-01T00:00' }, 'expiry_date'],
      [{ expiry_date: '2099-01-01 12:00 PST' }, 'expiry_date'],
      [{ expiry_date: '2020-01-01T00:00:00Z' }, 'expiry_date'],
    ] as const) {
      const refused = await sidecar.admin('POST', '/admin/keys', { ...valid, ...fields });
      expect([JSON.stringify(fields), refused.status]).toEqual([JSON.stringify(fields), 400]);
      expect(((await refused.json()) as ErrorAnswer).error.param).toBe(param);
    }
    // An update may set a past expiry: that revokes the key.
    const { id } = (await (await sidecar.admin('POST', '/admin/keys', valid)).json()) as { id: string };
    expect((await sidecar.admin('PATCH', `/admin/keys/${id}`, { expiry_date: '2020-01-01T00:00:00+02:00' })).status).toBe(200);
  });

  it.each(['gzip', 'deflate', 'br'])('answers 400 to a body that does not decode as its Content-Encoding %s says', async (coding) => {
    const response = await fetch(`${sidecar.url}/admin/keys`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json', 'content-encoding': coding }, body: 'definitely not compressed' });
    expect(response.status).toBe(400);
    expect(((await response.json()) as ErrorAnswer).error).toMatchObject({ type: 'invalid_request_error', code: 'invalid_body' });
  });

  it('answers 404 for unknown ids and routes, 400 for an empty patch, 405 for other methods', async () => {
    expect((await sidecar.admin('GET', '/admin/keys/key_0000000000000000')).status).toBe(404);
    expect((await sidecar.admin('PATCH', '/admin/keys/key_0000000000000000', { name: 'x' })).status).toBe(404);
    expect((await sidecar.admin('DELETE', '/admin/keys/key_0000000000000000')).status).toBe(404);
    expect((await sidecar.admin('GET', '/admin/other')).status).toBe(404);
    const { id } = await sidecar.createKey();
    const empty = await sidecar.admin('PATCH', `/admin/keys/${id}`, {});
    expect(empty.status).toBe(400);
    expect(((await empty.json()) as ErrorAnswer).error.param).toBe('body');
    expect((await sidecar.admin('PUT', '/admin/keys', valid)).status).toBe(405);
  });

  it('answers 404 on every admin route when ADMIN_TOKEN is unset, and proxies none of them', async () => {
    const hits = upstream.hits;
    for (const [method, path] of [['GET', '/admin/keys'], ['POST', '/admin/keys'], ['GET', '/admin/keys/key_1'], ['DELETE', '/admin/keys/key_1'], ['GET', '/admin']]) {
      const response = await closed.admin(method!, path!, method === 'POST' ? valid : undefined);
      expect(response.status, `${method} ${path}`).toBe(404);
      expect(((await response.json()) as ErrorAnswer).error.type).toBe('not_found_error');
    }
    expect(upstream.hits).toBe(hits);
  });
});

describe('/stats', () => {
  it('answers for a key over its limit without consuming quota or reaching the upstream; other methods get 405', async () => {
    const { key } = await sidecar.createKey({ token_limit_per_5h: 10 });
    const first = await fetch(`${sidecar.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}' });
    expect(first.status).toBe(200);
    await first.text();
    await sidecar.settled(key, 1);
    const hits = upstream.hits;
    for (let i = 0; i < 3; i++) {
      const stats = await sidecar.stats(key);
      expect(stats.total_requests).toBe(1);
      expect(stats.current_usage).toMatchObject({ tokens_used_in_current_window: 40, remaining_tokens: 0, reserved_tokens: 0 });
    }
    expect((await fetch(`${sidecar.url}/stats`, { method: 'POST', headers: { authorization: `Bearer ${key}` } })).status).toBe(405);
    expect((await fetch(`${sidecar.url}/stats`)).status).toBe(401);
    expect(upstream.hits).toBe(hits);
  });

  it('/stats/usage gives the caller its usage over the window, and the admin API the same for any key; neither reaches the upstream', async () => {
    const { key, id } = await sidecar.createKey({ token_limit_per_5h: 1000 });
    const answer = await fetch(`${sidecar.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}' });
    await answer.text();
    await sidecar.settled(key, 1);
    const hits = upstream.hits;
    const own = await fetch(`${sidecar.url}/stats/usage`, { headers: { authorization: `Bearer ${key}` } });
    expect(own.status).toBe(200);
    const usage = (await own.json()) as { limits: { name: string; used: number; resolution_seconds: number; points: { tokens: number }[] }[] };
    expect(usage.limits.map(({ name, used, resolution_seconds }) => ({ name, used, resolution_seconds }))).toEqual([{ name: '5h', used: 40, resolution_seconds: 300 }]);
    expect(usage.limits[0]!.points.reduce((sum, point) => sum + point.tokens, 0)).toBe(40);
    const admin = await sidecar.admin('GET', `/admin/keys/${id}/usage`);
    expect(await admin.json()).toMatchObject({ id, limits: [{ name: '5h', used: 40, points: usage.limits[0]!.points }] });
    expect((await sidecar.admin('GET', `/admin/keys/${id}/usage`, undefined, null)).status).toBe(401);
    expect((await sidecar.admin('GET', '/admin/keys/key_0000000000000000/usage')).status).toBe(404);
    expect((await fetch(`${sidecar.url}/stats/usage`, { method: 'POST', headers: { authorization: `Bearer ${key}` } })).status).toBe(405);
    expect((await fetch(`${sidecar.url}/stats/usage`)).status).toBe(401);
    expect(upstream.hits).toBe(hits);
  });
});
