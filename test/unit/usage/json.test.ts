// Tests of reading usage from whole JSON response bodies.
import { describe, expect, it } from 'vitest';
import { JsonUsageReader } from '../../../src/usage/json.js';
import { withoutParts } from '../../helpers/readings.js';

function readWith(body: string | Buffer, wholeBytes?: number, chunkSize = 7): ReturnType<JsonUsageReader['result']> {
  const reader = new JsonUsageReader(wholeBytes);
  const bytes = Buffer.from(body);
  for (let at = 0; at < bytes.length; at += chunkSize) reader.push(bytes.subarray(at, at + chunkSize));
  return reader.result();
}

// Each case is read whole (JSON.parse) and streamed (a body past 0 bytes goes to the streaming parser).
describe.each([
  ['parsed whole', undefined],
  ['streamed', 0],
])('JsonUsageReader, %s', (_mode, wholeBytes) => {
  const read = (body: string | Buffer, _unused?: number, chunkSize = 7) => readWith(body, wholeBytes, chunkSize);
  it('reads OpenAI total_tokens', () => {
    const body = JSON.stringify({ id: 'c1', usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 } });
    expect(withoutParts(read(body))).toEqual({ tokens: 18 });
  });

  it('adds OpenAI prompt and completion tokens when total is missing', () => {
    expect(withoutParts(read('{"usage":{"prompt_tokens":11,"completion_tokens":7}}'))).toEqual({ tokens: 18 });
  });

  it('reads Anthropic usage with cache fields', () => {
    const usage = { input_tokens: 10, output_tokens: 20, cache_creation_input_tokens: 5, cache_read_input_tokens: 100 };
    expect(withoutParts(read(JSON.stringify({ type: 'message', content: [{ text: 'é😀' }], usage })))).toEqual({ tokens: 135 });
  });

  it('reads a body that starts with a byte order mark', () => {
    expect(withoutParts(read('\uFEFF{"usage":{"total_tokens":3}}'))).toEqual({ tokens: 3 });
    expect(withoutParts(read('\uFEFF{"usage":{"total_tokens":3}}', undefined, 1024))).toEqual({ tokens: 3 }); // in one chunk
  });

  it('is not fooled by a caller reusing its buffer after the push', () => {
    const reader = new JsonUsageReader(wholeBytes);
    const chunk = Buffer.from('{"usage":{"total_tokens":3}}');
    reader.push(chunk);
    chunk.fill(0x20);
    expect(withoutParts(reader.result())).toEqual({ tokens: 3 });
  });

  it('reports a truncated body, or garbage, as malformed', () => {
    expect(read('{"usage":{"prompt_tokens":11,"complet')).toEqual({ problem: 'response body is not valid JSON', reason: 'malformed' });
    expect(read('<html>502 Bad Gateway</html>')).toEqual({ problem: 'response body is not valid JSON', reason: 'malformed' });
    expect(read('{"usage":{"total_tokens":12')).toEqual({ problem: 'response body is not valid JSON', reason: 'malformed' });
  });

  it('keeps usage read before the body broke off', () => {
    expect(withoutParts(read('{"usage":{"total_tokens":3},"choices":[{"mess'))).toEqual({ tokens: 3 });
  });

  it('reads usage at the end of a body with nested usage objects before it', () => {
    expect(withoutParts(read('{"data":[{"usage":{"total_tokens":1}}],"meta":{"usage":{"total_tokens":2}},"usage":{"total_tokens":3}}'))).toEqual({ tokens: 3 });
  });

  it('reports malformed usage values written in the JSON text', () => {
    expect(read('{"usage":{"total_tokens":-5}}')).toEqual({ problem: 'usage.total_tokens is -5, not a non-negative integer' });
    expect(read('{"usage":{"total_tokens":1e400}}')).toHaveProperty('problem');
    expect(read('{"usage":{"total_tokens":"12"}}')).toHaveProperty('problem');
    expect(read('{"usage":{"total_tokens":1.5}}')).toHaveProperty('problem');
  });

  it('is undefined for a body without usage', () => {
    expect(read('{"id":"c1","choices":[]}')).toBeUndefined();
    expect(read('{"usage":null}')).toBeUndefined();
    expect(read('[{"usage":{"total_tokens":3}}]')).toBeUndefined();
    expect(read('"usage"')).toBeUndefined();
  });

  it('is undefined for an empty body', () => {
    expect(new JsonUsageReader(wholeBytes).result()).toBeUndefined();
  });
});

describe('JsonUsageReader, bounds', () => {
  it('switches to the streaming parser past the size parsed whole, at any chunk boundary', () => {
    const body = Buffer.from(`{"data":"${'é'.repeat(100)}","usage":{"total_tokens":9}}`);
    for (const chunkSize of [1, 2, 3, 50, body.length]) expect(withoutParts(readWith(body, 10, chunkSize))).toEqual({ tokens: 9 });
  });

  it('gives up a single value longer than it may hold, as oversized', () => {
    const reader = new JsonUsageReader(0, 1000);
    reader.push(Buffer.from('{"data":"'));
    for (let i = 0; i < 20; i++) reader.push(Buffer.alloc(100, 'a'));
    reader.push(Buffer.from('","usage":{"total_tokens":3}}'));
    expect(reader.result()).toEqual({ problem: 'a JSON value over 1000 bytes, usage not read', reason: 'oversized' });
  });
});
