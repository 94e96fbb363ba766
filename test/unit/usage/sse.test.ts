// Tests of reading usage from server-sent event streams, however the stream is split.
import { describe, expect, it } from 'vitest';
import { SseUsageReader } from '../../../src/usage/sse.js';
import { withoutParts } from '../../helpers/readings.js';

const openAiStream = [
  'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"usage":null}',
  '',
  'data: {"id":"c1","choices":[{"index":0,"delta":{"content":"Café ☕ 😀 naïve"}}],"usage":null}',
  '',
  'data: {"id":"c1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}',
  '',
  'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}',
  '',
  'data: [DONE]',
  '',
  '',
].join('\n');

const anthropicStream = [
  'event: message_start',
  'data: {"type":"message_start","message":{"id":"m1","content":[],"usage":{"input_tokens":25,"output_tokens":1,"cache_read_input_tokens":3,"cache_creation_input_tokens":null}}}',
  '',
  'event: content_block_delta',
  'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Grüße 🌍"}}',
  '',
  'event: message_delta',
  'data: {"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":15}}',
  '',
  'event: message_delta',
  'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":42,"input_tokens":null}}',
  '',
  'event: message_stop',
  'data: {"type":"message_stop"}',
  '',
  '',
].join('\n');

function read(chunks: Array<string | Buffer>): SseUsageReader {
  const reader = new SseUsageReader();
  for (const chunk of chunks) reader.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
  return reader;
}

function splitEverywhere(text: string, expected: unknown): void {
  const bytes = Buffer.from(text);
  for (let at = 0; at <= bytes.length; at++) {
    const reading = withoutParts(read([bytes.subarray(0, at), bytes.subarray(at)]).result());
    expect(reading, `split at byte ${at}`).toEqual(expected);
  }
}

describe('SseUsageReader', () => {
  it('reads OpenAI usage wherever the stream is split, multi-byte characters included', () => {
    expect(Buffer.byteLength(openAiStream)).toBeGreaterThan(openAiStream.length);
    splitEverywhere(openAiStream, { tokens: 18 });
  });

  it('reads OpenAI usage fed one byte at a time', () => {
    const bytes = Buffer.from(openAiStream);
    const chunks = [...bytes].map((byte) => Buffer.from([byte]));
    expect(withoutParts(read(chunks).result())).toEqual({ tokens: 18 });
  });

  it('keeps the last OpenAI usage seen', () => {
    const stream = 'data: {"usage":{"total_tokens":5}}\n\ndata: {"usage":{"total_tokens":9}}\n\n';
    expect(withoutParts(read([stream]).result())).toEqual({ tokens: 9 });
  });

  it('replaces Anthropic fields with each delta instead of adding them', () => {
    expect(withoutParts(read([anthropicStream]).result())).toEqual({ tokens: 25 + 42 + 3 });
  });

  it('reads Anthropic usage wherever the stream is split', () => {
    splitEverywhere(anthropicStream, { tokens: 70 });
  });

  it('reads Anthropic usage with CRLF line endings, split anywhere', () => {
    splitEverywhere(anthropicStream.replaceAll('\n', '\r\n'), { tokens: 70 });
  });

  it('takes cumulative input and cache counts from a delta that carries them', () => {
    const stream = [
      'data: {"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}',
      'data: {"type":"message_delta","usage":{"input_tokens":12,"cache_read_input_tokens":4,"output_tokens":20}}',
      'data: {"type":"message_stop"}',
      '',
    ].join('\n\n');
    expect(withoutParts(read([stream]).result())).toEqual({ tokens: 36 });
  });

  it('marks usage partial while the stream has not reached its final usage event', () => {
    const start = 'data: {"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}\n\n';
    const delta = 'data: {"type":"message_delta","usage":{"output_tokens":20}}\n\n';
    expect(withoutParts(read([start]).result())).toEqual({ tokens: 11, partial: true });
    expect(withoutParts(read([start, delta]).result())).toEqual({ tokens: 30, partial: true });
    expect(withoutParts(read([start, delta, 'data: {"type":"message_stop"}\n\n']).result())).toEqual({ tokens: 30 });
    // Running usage on every chunk of an OpenAI-style stream is not final until a chunk with no choices left.
    const running = 'data: {"choices":[{"delta":{"content":"a"}}],"usage":{"total_tokens":4}}\n\n';
    expect(withoutParts(read([running]).result())).toEqual({ tokens: 4, partial: true });
    expect(withoutParts(read([running, 'data: {"choices":[],"usage":{"total_tokens":5}}\n\n']).result())).toEqual({ tokens: 5 });
  });

  it('counts the generated text of OpenAI chat, Anthropic and Responses API events', () => {
    const text = (events: unknown[]) => read(events.map((event) => `data: ${JSON.stringify(event)}\n\n`)).generatedText;
    expect(text([{ choices: [{ delta: { content: 'Grüße', tool_calls: [{ function: { arguments: '{"x":1}' } }] } }] }, { choices: [{ text: 'abc' }] }])).toBe(5 + 7 + 3);
    expect(text([{ type: 'message_start', message: {} }, { type: 'content_block_delta', delta: { type: 'thinking_delta', thinking: 'hmm' } }])).toBe(3);
    expect(text([{ type: 'response.created' }, { type: 'response.output_text.delta', delta: 'hello' }, { type: 'response.function_call_arguments.delta', delta: '{}' }])).toBe(7);
    expect(text([{ kind: 'other' }])).toBeUndefined();
  });

  it('reports a delta field with an invalid value', () => {
    const stream = [
      'data: {"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}',
      'data: {"type":"message_delta","usage":{"output_tokens":-3}}',
      '',
    ].join('\n\n');
    expect(read([stream]).result()).toEqual({ problem: 'usage.output_tokens is -3, not a non-negative integer' });
  });

  it('reads the usage of a Responses API response.completed event', () => {
    const stream = [
      'event: response.created',
      'data: {"type":"response.created","response":{"id":"r1","status":"in_progress","usage":null}}',
      '',
      'event: response.output_text.delta',
      'data: {"type":"response.output_text.delta","delta":"Hi"}',
      '',
      'event: response.completed',
      'data: {"type":"response.completed","response":{"id":"r1","status":"completed","usage":{"input_tokens":30,"output_tokens":12,"total_tokens":42}}}',
      '',
      '',
    ].join('\n');
    splitEverywhere(stream, { tokens: 42 });
  });

  it('reads the usage of a Responses API response.incomplete event', () => {
    const stream =
      'data: {"type":"response.incomplete","response":{"usage":{"input_tokens":3,"output_tokens":4,"total_tokens":7}}}\n\n';
    expect(withoutParts(read([stream]).result())).toEqual({ tokens: 7 });
  });

  it('dispatches a last event that has no trailing blank line', () => {
    expect(withoutParts(read(['data: {"usage":{"total_tokens":5}}']).result())).toEqual({ tokens: 5 });
    expect(withoutParts(read(['data: {"usage":{"total_tokens":6}}\n']).result())).toEqual({ tokens: 6 });
    expect(withoutParts(read(['data: {"usage":{"total_tokens":8}}\r']).result())).toEqual({ tokens: 8 });
  });

  it('keeps exact usage beside a garbage event, counting the garbage', () => {
    const reader = read(['data: {not json\n\n', openAiStream]);
    expect(withoutParts(reader.result())).toEqual({ tokens: 18 });
    expect(reader.malformedEvents).toBe(1);
  });

  it('reports a stream of only garbage events', () => {
    const reader = read(['data: {not json\n\ndata: nope\n\n']);
    expect(reader.result()).toEqual({ problem: '2 SSE events with invalid JSON', reason: 'malformed' });
    expect(reader.malformedEvents).toBe(2);
  });

  it('reports a stream cut inside its only usage event', () => {
    const cut = openAiStream.slice(0, openAiStream.indexOf('"total_tokens"'));
    expect(read([cut]).result()).toEqual({ problem: '1 SSE event with invalid JSON', reason: 'malformed' });
  });

  it('is undefined for a stream without usage', () => {
    const stream = 'event: ping\ndata: {"type":"ping"}\n\n: comment\n\ndata: {"choices":[],"usage":null}\n\ndata: [DONE]\n\n';
    const reader = read([stream]);
    expect(reader.result()).toBeUndefined();
    expect(reader.malformedEvents).toBe(0);
  });

  it('is undefined for an empty stream', () => {
    expect(new SseUsageReader().result()).toBeUndefined();
  });

  it('drops an event too long to hold and still reads later usage', () => {
    const reader = new SseUsageReader();
    reader.push(Buffer.from('data: "'));
    const filler = Buffer.alloc(1024 * 1024, 'a');
    for (let i = 0; i < 9; i++) reader.push(filler);
    reader.push(Buffer.from('"\n\ndata: {"usage":{"total_tokens":11}}\n\n'));
    expect(withoutParts(reader.result())).toEqual({ tokens: 11 });
    expect(reader.malformedEvents).toBe(1);
  });
});
