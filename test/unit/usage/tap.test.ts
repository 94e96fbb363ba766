// Tests of the response tap: reader choice, decompression, chunk encodings and byte counts.
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { UsageTap, type TapOptions, type TapResult } from '../../../src/usage/tap.js';
import { withoutParts } from '../../helpers/readings.js';

const JSON_TYPE = 'application/json; charset=utf-8';
const SSE_TYPE = 'text/event-stream';
const jsonBody = Buffer.from(
  JSON.stringify({ id: 'c1', choices: [{ message: { content: 'Café 😀 '.repeat(200) } }], usage: { total_tokens: 18 } }),
);
const sseBody = Buffer.from(
  [
    'data: {"choices":[{"delta":{"content":"Grüße 🌍"}}],"usage":null}',
    'data: {"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}',
    'data: [DONE]',
    '',
  ].join('\n\n'),
);

function tap(options: Partial<TapOptions>, body: Buffer, chunkSize = 16): Promise<TapResult> {
  const usageTap = new UsageTap({ contentType: JSON_TYPE, contentEncoding: undefined, ...options });
  for (let at = 0; at < body.length; at += chunkSize) usageTap.push(body.subarray(at, at + chunkSize));
  return usageTap.finish();
}

function corrupt(compressed: Buffer): Buffer {
  const copy = Buffer.from(compressed);
  for (let at = 12; at < copy.length; at += 7) copy[at] = (copy[at] ?? 0) ^ 0xa5;
  return copy;
}

describe('UsageTap', () => {
  it('reads plain JSON and counts its bytes', async () => {
    expect(await tap({}, jsonBody)).toMatchObject({ bytes: jsonBody.length, reading: { tokens: 18 }, malformedEvents: 0 });
  });

  it('reads plain SSE', async () => {
    const result = await tap({ contentType: `${SSE_TYPE}; charset=utf-8` }, sseBody, 5);
    expect(result).toMatchObject({ bytes: sseBody.length, reading: { tokens: 18 }, malformedEvents: 0 });
  });

  it('matches content types without regard to case, and any +json type', async () => {
    expect(withoutParts((await tap({ contentType: 'Application/JSON' }, jsonBody)).reading)).toEqual({ tokens: 18 });
    expect(withoutParts((await tap({ contentType: 'application/vnd.api+json' }, jsonBody)).reading)).toEqual({ tokens: 18 });
    expect(withoutParts((await tap({ contentType: 'TEXT/Event-Stream' }, sseBody)).reading)).toEqual({ tokens: 18 });
  });

  it('only counts bytes of a body that is neither JSON nor SSE', async () => {
    for (const contentType of ['text/plain', 'application/octet-stream', undefined]) {
      expect(await tap({ contentType }, jsonBody)).toMatchObject({ bytes: jsonBody.length, reading: undefined, malformedEvents: 0 });
    }
  });

  it('is undefined for JSON and SSE bodies without usage', async () => {
    expect((await tap({}, Buffer.from('{"id":"x"}'))).reading).toBeUndefined();
    expect((await tap({ contentType: SSE_TYPE }, Buffer.from('data: {"a":1}\n\n'))).reading).toBeUndefined();
  });

  it('reports the malformed SSE events it saw beside exact usage', async () => {
    const body = Buffer.concat([Buffer.from('data: {not json\n\n'), sseBody]);
    expect(await tap({ contentType: SSE_TYPE }, body)).toMatchObject({ bytes: body.length, reading: { tokens: 18 }, malformedEvents: 1 });
  });

  it('decodes gzip JSON fed in small chunks, counting decoded bytes', async () => {
    const compressed = gzipSync(jsonBody);
    expect(compressed.length).toBeLessThan(jsonBody.length);
    const result = await tap({ contentEncoding: 'gzip' }, compressed, 3);
    expect(result).toMatchObject({ bytes: jsonBody.length, reading: { tokens: 18 }, malformedEvents: 0 });
  });

  it('decodes gzip SSE fed in small chunks', async () => {
    const result = await tap({ contentType: SSE_TYPE, contentEncoding: ' X-GZIP ' }, gzipSync(sseBody), 2);
    expect(result).toMatchObject({ bytes: sseBody.length, reading: { tokens: 18 }, malformedEvents: 0 });
  });

  it('decodes brotli JSON and SSE', async () => {
    expect(await tap({ contentEncoding: 'br' }, brotliCompressSync(jsonBody), 5)).toMatchObject({
      bytes: jsonBody.length,
      reading: { tokens: 18 },
      malformedEvents: 0,
    });
    expect(withoutParts((await tap({ contentType: SSE_TYPE, contentEncoding: 'br' }, brotliCompressSync(sseBody), 5)).reading)).toEqual({
      tokens: 18,
    });
  });

  it('decodes deflate', async () => {
    expect(withoutParts((await tap({ contentEncoding: 'deflate' }, deflateSync(jsonBody))).reading)).toEqual({ tokens: 18 });
  });

  it('passes identity bodies through', async () => {
    expect(withoutParts((await tap({ contentEncoding: 'identity' }, jsonBody)).reading)).toEqual({ tokens: 18 });
  });

  it('reports corrupt gzip without throwing, counting raw bytes', async () => {
    const bad = corrupt(gzipSync(jsonBody));
    const result = await tap({ contentEncoding: 'gzip' }, bad, 4);
    expect(result.reading).toMatchObject({ problem: expect.stringMatching(/^compressed body could not be decoded: ./) });
    expect(result.bytes).toBeGreaterThanOrEqual(bad.length);
  });

  it('reports a body that is not gzip at all', async () => {
    const result = await tap({ contentEncoding: 'gzip' }, jsonBody);
    expect(result.reading).toMatchObject({ problem: expect.stringMatching(/^compressed body could not be decoded/) });
    expect(result.bytes).toBe(jsonBody.length);
  });

  it('keeps SSE usage decoded before the gzip data went bad', async () => {
    const body = Buffer.concat([sseBody, Buffer.from(`data: {"pad":"${'z'.repeat(5000)}"}\n\n`)]);
    const good = gzipSync(body);
    // Fed in small chunks, the usage near the start is decoded long before the damage at the end.
    const bad = Buffer.concat([good.subarray(0, good.length - 20), corrupt(good.subarray(good.length - 20))]);
    const result = await tap({ contentType: SSE_TYPE, contentEncoding: 'gzip' }, bad, 8);
    expect(withoutParts(result.reading)).toEqual({ tokens: 18 });
  });

  it('resolves with what was decoded from truncated gzip', async () => {
    const compressed = gzipSync(sseBody);
    for (const cut of [0, 1, 10, Math.floor(compressed.length / 2), compressed.length - 8, compressed.length - 1]) {
      const result = await tap({ contentType: SSE_TYPE, contentEncoding: 'gzip' }, compressed.subarray(0, cut), 4);
      expect(result.bytes, `cut at ${cut}`).toBeLessThanOrEqual(sseBody.length);
    }
    // Only the gzip trailer is missing: the body itself decoded whole.
    const noTrailer = await tap({ contentType: SSE_TYPE, contentEncoding: 'gzip' }, compressed.subarray(0, compressed.length - 8));
    expect(noTrailer).toMatchObject({ bytes: sseBody.length, reading: { tokens: 18 }, malformedEvents: 0 });
  });

  it('reports truncated gzip JSON as invalid JSON', async () => {
    const compressed = gzipSync(jsonBody);
    const result = await tap({ contentEncoding: 'gzip' }, compressed.subarray(0, Math.floor(compressed.length / 2)), 4);
    expect(result.reading).toEqual({ problem: 'response body is not valid JSON', reason: 'malformed' });
  });

  it('resolves with what was decoded from truncated brotli', async () => {
    const compressed = brotliCompressSync(jsonBody);
    const result = await tap({ contentEncoding: 'br' }, compressed.subarray(0, compressed.length - 3));
    expect(result.reading).toHaveProperty('problem');
  });

  it('resolves for an empty compressed body', async () => {
    expect(await tap({ contentEncoding: 'gzip' }, Buffer.alloc(0))).toMatchObject({ bytes: 0, reading: undefined, malformedEvents: 0 });
    expect(await tap({ contentEncoding: 'br' }, Buffer.alloc(0))).toMatchObject({ bytes: 0, reading: undefined, malformedEvents: 0 });
  });

  it('reports an unknown content-encoding and counts raw bytes', async () => {
    const result = await tap({ contentEncoding: 'zstd' }, jsonBody);
    expect(result).toMatchObject({ bytes: jsonBody.length, reading: { problem: 'unsupported content-encoding zstd' }, malformedEvents: 0 });
  });

  it('ignores an unknown content-encoding on a body it would not read', async () => {
    expect((await tap({ contentType: 'image/png', contentEncoding: 'zstd' }, jsonBody)).reading).toBeUndefined();
  });

  it('reads string chunks in utf8 and base64, counting their bytes', async () => {
    const usageTap = new UsageTap({ contentType: JSON_TYPE, contentEncoding: undefined });
    usageTap.push('{"note":"é😀",');
    usageTap.push(Buffer.from('"usage":{"total_').toString('base64'), 'base64');
    usageTap.push('tokens":18}}', 'utf8');
    usageTap.push(new Uint8Array(Buffer.from(' ')));
    const expectedBytes = Buffer.byteLength('{"note":"é😀","usage":{"total_tokens":18}} ');
    expect(await usageTap.finish()).toMatchObject({ bytes: expectedBytes, reading: { tokens: 18 }, malformedEvents: 0 });
  });

  it('reads a Uint8Array that views part of a larger buffer', async () => {
    const backing = Buffer.from('xxxx{"usage":{"total_tokens":5}}yyyy');
    const view = new Uint8Array(backing.buffer, backing.byteOffset + 4, backing.length - 8);
    const usageTap = new UsageTap({ contentType: JSON_TYPE, contentEncoding: undefined });
    usageTap.push(view);
    expect(await usageTap.finish()).toMatchObject({ bytes: backing.length - 8, reading: { tokens: 5 }, malformedEvents: 0 });
  });

  it('does not throw on a string chunk with an unknown encoding', async () => {
    const usageTap = new UsageTap({ contentType: JSON_TYPE, contentEncoding: undefined });
    expect(() => usageTap.push('{"usage":{"total_tokens":4}}', 'nonsense' as BufferEncoding)).not.toThrow();
    expect(withoutParts((await usageTap.finish()).reading)).toEqual({ tokens: 4 });
  });

  it('reads a JSON body past the size parsed whole, in small chunks', async () => {
    const body = Buffer.from(JSON.stringify({ data: Array.from({ length: 4000 }, (_, index) => ({ index, text: 'é😀 x' })), usage: { total_tokens: 21 } }));
    expect(body.length).toBeGreaterThan(64 * 1024);
    expect(await tap({}, body, 1000)).toMatchObject({ bytes: body.length, rawBytes: body.length, reading: { tokens: 21 } });
  });

  it('tells an unknown content-encoding apart as an encoding problem', async () => {
    expect((await tap({ contentEncoding: 'zstd' }, jsonBody)).reading).toEqual({ problem: 'unsupported content-encoding zstd', reason: 'encoding' });
    expect((await tap({ contentEncoding: 'gzip' }, corrupt(gzipSync(jsonBody)))).reading).toMatchObject({ reason: 'encoding' });
  });

  it('counts the generated text of an event stream it knows, and none of another body', async () => {
    const events = [
      { type: 'message_start', message: { usage: { input_tokens: 5, output_tokens: 1 } } },
      { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hello' } },
      { type: 'content_block_delta', index: 0, delta: { type: 'input_json_delta', partial_json: '{"a":' } },
    ];
    const body = Buffer.from(events.map((event) => `event: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`).join(''));
    expect(await tap({ contentType: SSE_TYPE }, body)).toMatchObject({ generatedText: 10, reading: { tokens: 6, partial: true } });
    expect((await tap({ contentType: SSE_TYPE }, Buffer.from('data: {"a":1}\n\n'))).generatedText).toBeUndefined();
    expect((await tap({}, jsonBody)).generatedText).toBeUndefined();
  });

  it('returns the same result when finish is called again, and does not throw on a late chunk', async () => {
    const usageTap = new UsageTap({ contentType: JSON_TYPE, contentEncoding: 'gzip' });
    usageTap.push(gzipSync(jsonBody));
    const first = await usageTap.finish();
    expect(() => usageTap.push(Buffer.from('more'))).not.toThrow();
    expect(await usageTap.finish()).toBe(first);
    expect(withoutParts(first.reading)).toEqual({ tokens: 18 });
  });
});
