// Tests of reading usage from whole JSON response bodies.
import { describe, expect, it } from 'vitest';
import { JsonUsageReader } from '../../../src/usage/json.js';

function read(body: string | Buffer, maxBytes = 8 * 1024 * 1024, chunkSize = 7): ReturnType<JsonUsageReader['result']> {
  const reader = new JsonUsageReader(maxBytes);
  const bytes = Buffer.from(body);
  for (let at = 0; at < bytes.length; at += chunkSize) reader.push(bytes.subarray(at, at + chunkSize));
  return reader.result();
}

describe('JsonUsageReader', () => {
  it('reads OpenAI total_tokens', () => {
    const body = JSON.stringify({ id: 'c1', usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 } });
    expect(read(body)).toEqual({ tokens: 18 });
  });

  it('adds OpenAI prompt and completion tokens when total is missing', () => {
    expect(read('{"usage":{"prompt_tokens":11,"completion_tokens":7}}')).toEqual({ tokens: 18 });
  });

  it('reads Anthropic usage with cache fields', () => {
    const usage = { input_tokens: 10, output_tokens: 20, cache_creation_input_tokens: 5, cache_read_input_tokens: 100 };
    expect(read(JSON.stringify({ type: 'message', content: [{ text: 'é😀' }], usage }))).toEqual({ tokens: 135 });
  });

  it('reads a body that starts with a byte order mark', () => {
    expect(read('\uFEFF{"usage":{"total_tokens":3}}')).toEqual({ tokens: 3 });
  });

  it('is not fooled by a caller reusing its buffer after the push', () => {
    const reader = new JsonUsageReader(1024);
    const chunk = Buffer.from('{"usage":{"total_tokens":3}}');
    reader.push(chunk);
    chunk.fill(0x20);
    expect(reader.result()).toEqual({ tokens: 3 });
  });

  it('reports a truncated body', () => {
    expect(read('{"usage":{"prompt_tokens":11,"complet')).toEqual({ problem: 'response body is not valid JSON' });
  });

  it('reports a body over the size limit', () => {
    expect(read('{"usage":{"total_tokens":3},"pad":"xxxxxxxxxxxxxxxx"}', 20)).toEqual({
      problem: 'response body over 20 bytes, usage not read',
    });
  });

  it('reads a body exactly at the size limit', () => {
    const body = '{"usage":{"total_tokens":3}}';
    expect(read(body, Buffer.byteLength(body))).toEqual({ tokens: 3 });
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
    expect(new JsonUsageReader(100).result()).toBeUndefined();
  });
});
