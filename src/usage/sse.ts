// Incremental reader of token usage from a server-sent events body (OpenAI and Anthropic streaming).
import { StringDecoder } from 'node:string_decoder';
import { createParser, type EventSourceParser } from 'eventsource-parser';
import { tokensFromUsage, type UsageReading } from './tokens.js';

type Json = Record<string, unknown>;

// Caps the partial event held in memory; a longer one cannot be a usage event and is counted as malformed.
const MAX_EVENT_CHARS = 8 * 1024 * 1024;

export class SseUsageReader {
  // Chunks can split a multi-byte character; the decoder holds its first bytes until the rest arrive.
  private readonly decoder = new StringDecoder('utf8');
  private readonly parser: EventSourceParser;
  private usage: Json | undefined;
  private complete = false;
  private recognized = false;
  private text = 0;
  private malformed = 0;
  private overflowed = false;

  constructor() {
    this.parser = createParser({
      onEvent: (event) => this.read(event.data),
      onError: (error) => {
        if (error.type === 'max-buffer-size-exceeded') this.overflowed = true;
      },
      maxBufferSize: MAX_EVENT_CHARS,
    });
  }

  /** Events whose data was not valid JSON (or too long to hold). */
  get malformedEvents(): number {
    return this.malformed;
  }

  push(chunk: Buffer): void {
    this.feed(this.decoder.write(chunk));
  }

  /**
   * Characters of generated text (message text, tool call arguments, reasoning) in the events seen so
   * far; undefined while no event of a known API has been seen, since the text of others is unknown.
   */
  get generatedText(): number | undefined {
    return this.recognized ? this.text : undefined;
  }

  /**
   * Final reading after the stream ended (or was cut): tokens if usage was seen (partial when the
   * stream stopped before its final usage event), a problem if usage was malformed or an event's
   * data was not valid JSON, undefined if no usage seen at all.
   */
  result(): UsageReading | undefined {
    // A stream may end without the blank line that dispatches its last event.
    this.feed(`${this.decoder.end()}\n\n`);
    const reading = tokensFromUsage(this.usage);
    if (reading !== undefined) return 'tokens' in reading && !this.complete ? { ...reading, partial: true } : reading;
    if (this.malformed === 0) return undefined;
    return { problem: `${this.malformed} SSE event${this.malformed === 1 ? '' : 's'} with invalid JSON`, reason: 'malformed' };
  }

  private feed(text: string): void {
    this.parser.feed(text);
    if (!this.overflowed) return;
    // The parser refuses further input after an overflow; resuming drops the rest of that event.
    this.overflowed = false;
    this.malformed += 1;
    this.parser.reset();
  }

  private read(data: string): void {
    // [DONE] ends OpenAI streams; empty data is a keep-alive.
    if (data === '[DONE]' || data.trim() === '') return;
    let event: unknown;
    try {
      event = JSON.parse(data);
    } catch {
      this.malformed += 1;
      return;
    }
    if (!isJson(event)) return;
    this.usage = usageAfter(event, this.usage);
    this.complete ||= isFinal(event);
    const text = generatedText(event);
    if (text === undefined) return;
    this.recognized = true;
    this.text += text;
  }
}

/**
 * Whether `event` carries the stream's final usage: Anthropic's message_stop (after the last
 * message_delta), the Responses API's terminal events, an OpenAI chat chunk with usage (sent last).
 * Anthropic's message_start carries usage too, but only the input and one output token.
 */
function isFinal(event: Json): boolean {
  switch (event.type) {
    case 'message_stop':
    case 'response.completed':
    case 'response.incomplete':
    case 'response.failed':
      return true;
    case 'message_start':
    case 'message_delta':
      return false;
    default:
      // Some servers also put running usage on every chunk; the last one has no choices left.
      return typeof event.type !== 'string' && isJson(event.usage) && (!Array.isArray(event.choices) || event.choices.length === 0);
  }
}

/** Characters of generated text `event` carries, or undefined when it is of no API this knows. */
function generatedText(event: Json): number | undefined {
  const type = event.type;
  if (typeof type === 'string') {
    // Anthropic: text_delta, input_json_delta (tool input), thinking_delta.
    if (type === 'content_block_delta' && isJson(event.delta)) return length(event.delta.text) + length(event.delta.partial_json) + length(event.delta.thinking);
    // Responses API: response.output_text.delta, response.function_call_arguments.delta, reasoning deltas.
    if (type.startsWith('response.') && type.endsWith('.delta')) return length(event.delta);
    return type.startsWith('message_') || type.startsWith('content_block_') || type.startsWith('response.') || type === 'ping' ? 0 : undefined;
  }
  // OpenAI chat (delta) and legacy completions (text) chunks.
  if (!Array.isArray(event.choices)) return undefined;
  let chars = 0;
  for (const choice of event.choices as unknown[]) {
    if (!isJson(choice)) continue;
    chars += length(choice.text);
    const delta = choice.delta;
    if (!isJson(delta)) continue;
    chars += length(delta.content) + length(delta.refusal) + length(delta.reasoning_content) + length(delta.reasoning);
    if (Array.isArray(delta.tool_calls)) for (const call of delta.tool_calls as unknown[]) chars += length(isJson(call) && isJson(call.function) ? call.function.arguments : undefined);
  }
  return chars;
}

function length(value: unknown): number {
  return typeof value === 'string' ? value.length : 0;
}

/** The usage as it stands after `event`: OpenAI events carry it whole, Anthropic deltas update some fields. */
function usageAfter(event: Json, usage: Json | undefined): Json | undefined {
  switch (event.type) {
    case 'message_start':
      return objectAt(event.message, 'usage') ?? usage;
    case 'message_delta': {
      // Delta values are running totals, so each replaces its field; null means "not reported here".
      const delta = objectAt(event, 'usage');
      return delta ? { ...usage, ...withoutNulls(delta) } : usage;
    }
    // Every terminal event of the Responses API carries the final response, usage included.
    case 'response.completed':
    case 'response.incomplete':
    case 'response.failed':
      return objectAt(event.response, 'usage') ?? usage;
    default:
      // OpenAI chat sends usage: null on every chunk but the last.
      return objectAt(event, 'usage') ?? usage;
  }
}

function objectAt(value: unknown, key: string): Json | undefined {
  const inner = isJson(value) ? value[key] : undefined;
  return isJson(inner) ? inner : undefined;
}

function withoutNulls(fields: Json): Json {
  return Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== null));
}

function isJson(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
