// Token weights through the gate: cache reads charged at a tenth, exactly, in JSON and SSE, on SQLite and PostgreSQL.
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, startGate, tempDbPath, tempDir, type Gate } from '../helpers/gate.js';
import { freshDatabase, startPostgres } from '../helpers/postgres.js';
import { startUpstream, type Respond, type Upstream } from '../helpers/upstream.js';

/** A coding agent's turn: a long cached prompt, a little new input and output. */
const USAGE = { input_tokens: 1_203, output_tokens: 317, cache_creation_input_tokens: 2_000, cache_read_input_tokens: 50_000 };
/** Under cache_read=0.1: the 50 000 cache reads are 5 000, the rest counts in full. */
const CHARGED = 1_203 + 317 + 2_000 + 5_000;

const anthropicAnswer: Respond = (req, body, res) => {
  const request = JSON.parse(body.toString('utf8')) as { stream?: boolean };
  if ((req.url ?? '').startsWith('/v1/chat/completions')) {
    res.writeHead(200, { 'content-type': 'application/json' });
    // OpenAI counts the cached prompt tokens inside prompt_tokens.
    const usage = { prompt_tokens: 40_000, completion_tokens: 100, total_tokens: 40_100, prompt_tokens_details: { cached_tokens: 39_990 } };
    return res.end(JSON.stringify({ id: 'c1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop' }], usage }));
  }
  if (!request.stream) {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify({ id: 'msg_1', type: 'message', role: 'assistant', model: 'claude', content: [{ type: 'text', text: 'Hi' }], stop_reason: 'end_turn', stop_sequence: null, usage: USAGE }));
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  const events: [string, object][] = [
    ['message_start', { type: 'message_start', message: { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude', content: [], stop_reason: null, stop_sequence: null, usage: { ...USAGE, output_tokens: 1 } } }],
    ['content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }],
    ['content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hello' } }],
    ['content_block_stop', { type: 'content_block_stop', index: 0 }],
    ['message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: USAGE.output_tokens } }],
    ['message_stop', { type: 'message_stop' }],
  ];
  for (const [event, data] of events) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  res.end();
};

const backends: [string, () => Promise<Storage>][] = [
  ['SQLite', () => createStorage({ databasePath: tempDbPath(), logger: quietLogger() })],
  ['PostgreSQL', async () => createStorage({ databaseUrl: await freshDatabase(), fallbackDir: tempDir(), logger: quietLogger() })],
];

describe.each(backends)('token weights on %s', (_name, open) => {
  let upstream: Upstream;
  let gate: Gate;
  beforeAll(async () => {
    upstream = await startUpstream(anthropicAnswer);
    gate = await startGate(upstream, { weights: 'cache_read=0.1' }, await open());
  });
  afterAll(async () => {
    await gate?.close();
    await upstream?.close();
  });

  const newKey = (tokenWeights: string | null = null) => gate.storage.createKey({ name: 'agent', tokenLimit: 1_000_000, expiresAt: gate.clock.now() + 86_400_000, tokenWeights }, gate.clock.now());
  const anthropic = (key: string) => new Anthropic({ apiKey: key, baseURL: gate.url, maxRetries: 0 });
  const used = async (keyId: string) => (await gate.storage.windowUsage(keyId, gate.clock.now(), 5 * 3600_000)).used;

  it('charges 50 000 cache reads as 5 000 and the rest in full, from a JSON answer', async () => {
    const { key, record } = await newKey();
    const message = await anthropic(key).messages.create({ model: 'claude', max_tokens: 400, messages: [{ role: 'user', content: 'go on' }] });
    expect(message.usage.cache_read_input_tokens).toBe(50_000);
    const settled = await gate.settled(record.id, 1);
    expect(settled.totalLifetimeTokens).toBe(CHARGED);
    expect(await used(record.id)).toBe(CHARGED);
  });

  it('charges the same from a streamed answer', async () => {
    const { key, record } = await newKey();
    const stream = anthropic(key).messages.stream({ model: 'claude', max_tokens: 400, messages: [{ role: 'user', content: 'go on' }] });
    const final = await stream.finalMessage();
    expect(final.usage.output_tokens).toBe(USAGE.output_tokens);
    expect((await gate.settled(record.id, 1)).totalLifetimeTokens).toBe(CHARGED);
    expect(await used(record.id)).toBe(CHARGED);
  });

  it("takes a key's own weights over the gate's, kind by kind, rounding up", async () => {
    const { key, record } = await newKey('cache_read=0.33333,output=2');
    await anthropic(key).messages.create({ model: 'claude', max_tokens: 400, messages: [{ role: 'user', content: 'go on' }] });
    // 50 000 × 0.33333 = 16 666.5, so the sum 1 203 + 634 + 2 000 + 16 666.5 rounds up.
    expect((await gate.settled(record.id, 1)).totalLifetimeTokens).toBe(1_203 + 2 * 317 + 2_000 + 16_667);
  });

  it('reserves the estimate times the heaviest weight, so that heavy tokens cannot overshoot the limit', async () => {
    const { key } = await newKey('output=2');
    const body = JSON.stringify({ model: 'claude', max_tokens: 1_000, messages: [{ role: 'user', content: 'go on' }] });
    const answer = await fetch(`${gate.url}/v1/messages`, { method: 'POST', headers: { 'x-api-key': key, 'content-type': 'application/json' }, body });
    await answer.text();
    const estimate = Math.ceil(Buffer.byteLength(body) / 4) + 1_000;
    expect(Number(answer.headers.get('x-ratelimit-remaining-tokens'))).toBe(1_000_000 - 2 * estimate);
  });

  it('weighs the cached prompt tokens OpenAI counts inside its prompt', async () => {
    const { key, record } = await newKey();
    const openai = new OpenAI({ apiKey: key, baseURL: `${gate.url}/v1`, maxRetries: 0 });
    await openai.chat.completions.create({ model: 'gpt', messages: [{ role: 'user', content: 'go on' }] });
    expect((await gate.settled(record.id, 1)).totalLifetimeTokens).toBe(10 + 100 + 3_999);
  });
});

describe('token weights while PostgreSQL is down', () => {
  it("charges a key's own weights from the fallback's snapshot, and the replay records exactly that", async () => {
    const pg = await startPostgres();
    onTestFinished(() => pg.close());
    // No key cache: while the database is down, the key (and its weights) comes from the fallback's snapshot.
    const storage = await createStorage({ databaseUrl: pg.url, fallbackDir: tempDir(), fallbackTimeoutMs: 500, keyCacheTtlMs: 0, logger: quietLogger() });
    const upstream = await startUpstream(anthropicAnswer);
    onTestFinished(() => upstream.close());
    const gate = await startGate(upstream, { weights: 'cache_read=0.1' }, storage);
    onTestFinished(() => gate.close());
    const { key, record } = await storage.createKey({ name: 'agent', tokenLimit: 1_000_000, expiresAt: gate.clock.now() + 86_400_000, tokenWeights: 'output=2' }, gate.clock.now());
    const anthropic = new Anthropic({ apiKey: key, baseURL: gate.url, maxRetries: 0 });
    const ask = () => anthropic.messages.create({ model: 'claude', max_tokens: 400, messages: [{ role: 'user', content: 'go on' }] });
    const charge = CHARGED + USAGE.output_tokens; // output weighs 2 for this key

    await ask();
    expect((await gate.settled(record.id, 1)).totalLifetimeTokens).toBe(charge);
    await pg.stop();
    await ask();
    expect((await gate.settled(record.id, 2)).totalLifetimeTokens).toBe(2 * charge);
    expect(storage.health().mode).toBe('fallback');
    await expect.poll(() => storage.health().journalPendingRecords).toBe(1);
    await pg.start();
    await expect.poll(() => storage.health(), { timeout: 20_000, interval: 100 }).toMatchObject({ mode: 'primary', journalPendingRecords: 0 });
    const database = postgres(pg.url, { max: 1, onnotice: () => undefined });
    onTestFinished(() => database.end());
    const [row] = await database<{ total: string }[]>`select total_lifetime_tokens as total from api_keys where id = ${record.id}`;
    expect(Number(row?.total)).toBe(2 * charge);
  }, 60_000);
});
