// Request-body rewrites: the key's model, and stream usage for OpenAI streaming completions.
import { describe, expect, it } from 'vitest';
import { rewriteBody, rewriteMayApply } from '../../../src/sidecar/rewrite.js';

const body = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));
const parsed = (buffer: Buffer | undefined): unknown => (buffer === undefined ? undefined : JSON.parse(buffer.toString('utf8')));
const off = { model: undefined, includeStreamUsage: false };

describe('rewriteBody', () => {
  it('replaces the model, and leaves a body already using it untouched', () => {
    expect(parsed(rewriteBody(body({ model: 'a', x: 'é' }), '/v1/chat/completions', { ...off, model: 'b' }))).toEqual({ model: 'b', x: 'é' });
    expect(rewriteBody(body({ model: 'b' }), '/v1/chat/completions', { ...off, model: 'b' })).toBeUndefined();
  });

  it('adds stream_options.include_usage only to streaming completions that do not choose', () => {
    const on = { ...off, includeStreamUsage: true };
    expect(parsed(rewriteBody(body({ stream: true }), '/v1/chat/completions', on))).toEqual({ stream: true, stream_options: { include_usage: true } });
    expect(parsed(rewriteBody(body({ stream: true, stream_options: { other: 1 } }), '/v1/completions', on))).toEqual({ stream: true, stream_options: { other: 1, include_usage: true } });
    expect(rewriteBody(body({ stream: true, stream_options: { include_usage: false } }), '/v1/chat/completions', on)).toBeUndefined();
    expect(rewriteBody(body({ stream: false }), '/v1/chat/completions', on)).toBeUndefined();
    expect(rewriteBody(body({ stream: true }), '/v1/messages', on)).toBeUndefined();
  });

  it('leaves bodies that are not JSON objects alone', () => {
    for (const raw of ['[1]', 'not json', '"s"', 'null', '']) expect(rewriteBody(Buffer.from(raw), '/v1/chat/completions', { model: 'b', includeStreamUsage: true })).toBeUndefined();
  });
});

describe('rewriteMayApply', () => {
  it('is true only when a rule could change the body', () => {
    expect(rewriteMayApply(off, '/v1/chat/completions')).toBe(false);
    expect(rewriteMayApply({ ...off, model: 'm' }, '/anything')).toBe(true);
    expect(rewriteMayApply({ ...off, includeStreamUsage: true }, '/v1/embeddings')).toBe(false);
    expect(rewriteMayApply({ ...off, includeStreamUsage: true }, '/v1/chat/completions')).toBe(true);
  });
});
