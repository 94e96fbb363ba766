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

  /** Final reading after the stream ended (or was cut): tokens if usage was seen, a problem if usage was malformed or an event's data was not valid JSON, undefined if no usage seen at all. */
  result(): UsageReading | undefined {
    // A stream may end without the blank line that dispatches its last event.
    this.feed(`${this.decoder.end()}\n\n`);
    const reading = tokensFromUsage(this.usage);
    if (reading !== undefined || this.malformed === 0) return reading;
    return { problem: `${this.malformed} SSE event${this.malformed === 1 ? '' : 's'} with invalid JSON` };
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
    if (isJson(event)) this.usage = usageAfter(event, this.usage);
  }
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
