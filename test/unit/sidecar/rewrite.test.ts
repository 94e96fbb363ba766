// Request-body rewrites: the key's model, and stream usage for OpenAI streaming completions.
import { describe, expect, it } from 'vitest';
import { rewriteBody, rewriteMayApply } from '../../../src/sidecar/rewrite.js';

const body = (value: unknown): Buffer => Buffer.from(JSON.stringify(value));
const parsed = (buffer: Buffer | undefined): unknown => (buffer === undefined ? undefined : JSON.parse(buffer.toString('utf8')));
const off = { model: undefined, includeStreamUsage: false };

describe('rewriteBody', () => {
  it('replaces the model, and re-serializes even a body already using it', () => {
    expect(parsed(rewriteBody(body({ model: 'a', x: 'é' }), '/v1/chat/completions', { ...off, model: 'b' }))).toEqual({ model: 'b', x: 'é' });
    // Parsers differ on duplicate members: the upstream must read exactly the object checked here.
    expect(rewriteBody(Buffer.from('{"model":"b","model":"dear"}'), '/v1/chat/completions', { ...off, model: 'b' })?.toString()).toBe('{"model":"b"}');
    expect(rewriteBody(Buffer.from('{"model":"dear","model":"b"}'), '/v1/chat/completions', { ...off, model: 'b' })?.toString()).toBe('{"model":"b"}');
  });

  it('reads a body after a UTF-8 byte order mark', () => {
    const withBom = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), body({ model: 'dear' })]);
    expect(parsed(rewriteBody(withBom, '/v1/chat/completions', { ...off, model: 'b' }))).toEqual({ model: 'b' });
  });

  it('sets stream_options.include_usage to true on streaming completions, whatever the client sent', () => {
    const on = { ...off, includeStreamUsage: true };
    expect(parsed(rewriteBody(body({ stream: true }), '/v1/chat/completions', on))).toEqual({ stream: true, stream_options: { include_usage: true } });
    expect(parsed(rewriteBody(body({ stream: true, stream_options: { other: 1 } }), '/v1/completions', on))).toEqual({ stream: true, stream_options: { other: 1, include_usage: true } });
    for (const chosen of [false, null, 0, 'no']) {
      expect(parsed(rewriteBody(body({ stream: true, stream_options: { include_usage: chosen } }), '/v1/chat/completions', on))).toEqual({ stream: true, stream_options: { include_usage: true } });
    }
    expect(parsed(rewriteBody(body({ stream: true, stream_options: null }), '/v1/chat/completions', on))).toEqual({ stream: true, stream_options: { include_usage: true } });
    for (const streams of ['true', 1]) {
      expect(parsed(rewriteBody(body({ stream: streams }), '/v1/chat/completions', on))).toEqual({ stream: streams, stream_options: { include_usage: true } });
    }
    for (const path of ['/v1/chat/complet%69ons', '/v1/chat/completions/', '/v1/chat/completions;x']) {
      expect(parsed(rewriteBody(body({ stream: true, stream_options: { include_usage: false } }), path, on)), path).toEqual({ stream: true, stream_options: { include_usage: true } });
    }
    // Re-serialized even when nothing changes: a duplicate member cannot mean one thing here and another upstream.
    expect(rewriteBody(Buffer.from('{"stream":false,"stream":false}'), '/v1/chat/completions', on)?.toString()).toBe('{"stream":false}');
  });

  it('returns undefined for bodies that are not JSON objects, which the proxy then refuses', () => {
    for (const raw of ['[1]', 'not json', '"s"', 'null', '', '{"model":']) expect(rewriteBody(Buffer.from(raw), '/v1/chat/completions', { model: 'b', includeStreamUsage: true })).toBeUndefined();
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
