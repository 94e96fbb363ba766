// Garbage from the upstream: no crash, no negative or non-finite charge, one warning per request.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { post, startGate, type Gate } from '../helpers/gate.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

let upstream: Upstream;
let gate: Gate;
let payload: { type: string; body: string } = { type: 'application/json', body: '{}' };

beforeAll(async () => {
  upstream = await startUpstream((_req, _body, res) => {
    res.writeHead(200, { 'content-type': payload.type });
    res.end(payload.body);
  });
  gate = await startGate(upstream);
});
afterAll(async () => {
  await gate.close();
  await upstream.close();
});

const requestBody = { model: 'm', messages: [] };
const estimateFor = (body: string) => Math.ceil((JSON.stringify(requestBody).length + Buffer.byteLength(body)) / 4);

const cases: [string, string, string, boolean][] = [
  ['truncated JSON', 'application/json', '{"usage":{"total_tokens":12', true],
  ['usage.total_tokens: -5', 'application/json', '{"usage":{"total_tokens":-5}}', true],
  ['usage.total_tokens: 1e400', 'application/json', '{"usage":{"total_tokens":1e400}}', true],
  ['usage.total_tokens as a string', 'application/json', '{"usage":{"total_tokens":"12"}}', true],
  ['an SSE stream of garbage', 'text/event-stream', 'data: {not json\n\ndata: \u0000\u0001garbage\n\n', true],
  ['a JSON array', 'application/json', '[1,2,3]', false],
  ['an HTML error page with a 200', 'text/html', '<html>oops</html>', false],
];

describe('bad upstream output', () => {
  it.each(cases)('%s: the response passes through, the charge is the estimate, warned about once', async (_name, type, body, warns) => {
    payload = { type, body };
    const { key, record } = await gate.createKey(100_000);
    const warningsBefore = gate.logs.filter((line) => line.level === 40).length;
    const response = await post(gate, key, requestBody);
    expect(response.status).toBe(200);
    expect(await response.text()).toBe(body);
    const settled = await gate.settled(record.id, 1);
    expect(settled.totalLifetimeTokens).toBe(estimateFor(body));
    const warnings = gate.logs.filter((line) => line.level === 40).slice(warningsBefore);
    expect(warnings).toHaveLength(warns ? 1 : 0);
    if (warns) expect(warnings[0]).toMatchObject({ keyId: record.id, source: 'estimated', charged: estimateFor(body) });
  });

  it('charges the exact usage of an SSE stream that also carries one garbage line, and warns once', async () => {
    payload = { type: 'text/event-stream', body: 'data: {garbage\n\ndata: {"choices":[],"usage":{"total_tokens":21}}\n\ndata: [DONE]\n\n' };
    const { key, record } = await gate.createKey(100_000);
    const warningsBefore = gate.logs.filter((line) => line.level === 40).length;
    await (await post(gate, key, requestBody)).text();
    expect((await gate.settled(record.id, 1)).totalLifetimeTokens).toBe(21);
    expect(gate.logs.filter((line) => line.level === 40).slice(warningsBefore)).toHaveLength(1);
  });

  it('keeps serving after all of that', async () => {
    payload = { type: 'application/json', body: '{"usage":{"total_tokens":3}}' };
    const { key, record } = await gate.createKey(100_000);
    expect((await post(gate, key)).status).toBe(200);
    expect((await gate.settled(record.id, 1)).totalLifetimeTokens).toBe(3);
  });

  it('answers 502 when the upstream resets the connection, charges nothing and holds no reservation', async () => {
    const dying = await startUpstream((req) => req.socket.destroy());
    const proxy = await startGate(dying);
    try {
      const { key, record } = await proxy.createKey(100_000);
      const response = await post(proxy, key);
      expect(response.status).toBe(502);
      const settled = await proxy.settled(record.id, 1);
      expect(settled.totalLifetimeTokens).toBe(0);
      expect((await proxy.storage.windowUsage(record.id, proxy.clock.now(), 5 * 3600_000)).reserved).toBe(0);
    } finally {
      await proxy.close();
      await dying.close();
    }
  });
});
