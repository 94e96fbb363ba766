// Reader of token usage from a JSON response body of any size: small ones parsed whole, large ones streamed.
import { Tokenizer, TokenParser } from '@streamparser/json';
import { tokensFromUsage, type UsageReading } from './tokens.js';

/**
 * Bodies up to this size are kept and parsed with JSON.parse at the end, which costs less than the
 * streaming parser on a typical chat completion (docs/benchmarks.md); past it the kept bytes go to
 * the streaming parser and the rest follows chunk by chunk, so memory stays bounded.
 */
export const WHOLE_JSON_BYTES = 64 * 1024;
/** The streaming parser holds one string or number whole; a longer one gives the body up. */
export const MAX_JSON_VALUE_BYTES = 16 * 1024 * 1024;

/** 3 when the bytes start with UTF-8's byte order mark, else 0. */
function bomLength(bytes: Buffer): number {
  return bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
}

export class JsonUsageReader {
  private chunks: Buffer[] = [];
  private size = 0;
  private stream: UsageStream | undefined;

  constructor(
    private readonly wholeBytes = WHOLE_JSON_BYTES,
    private readonly maxValueBytes = MAX_JSON_VALUE_BYTES,
  ) {}

  push(chunk: Buffer): void {
    this.size += chunk.length;
    if (this.stream) return this.stream.write(chunk);
    // A copy, because the caller may reuse its buffer once the write returns.
    this.chunks.push(Buffer.from(chunk));
    if (this.size > this.wholeBytes) this.stream = this.streamKept();
  }

  result(): UsageReading | undefined {
    // An empty body (HEAD, 204, 304) has no usage rather than broken usage.
    if (this.size === 0) return undefined;
    if (this.stream) return this.stream.end();
    let body: unknown;
    try {
      const kept = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.size);
      // Past a leading byte order mark, which JSON.parse would refuse.
      body = JSON.parse(kept.toString('utf8', bomLength(kept)));
    } catch {
      // Invalid as a whole, but usage read before the break (a body cut short) is still what was used.
      return this.streamKept().end();
    }
    return typeof body === 'object' && body !== null && !Array.isArray(body) && 'usage' in body ? tokensFromUsage(body.usage) : undefined;
  }

  /** A streaming parser fed the bytes kept so far, which it then owns. */
  private streamKept(): UsageStream {
    const stream = new UsageStream(this.maxValueBytes);
    const kept = Buffer.concat(this.chunks);
    this.chunks = [];
    stream.write(kept.subarray(bomLength(kept)));
    return stream;
  }
}

/** @streamparser/json picking the top-level `usage` only; the rest of the body is tokenized and dropped. */
class UsageStream {
  private readonly tokenizer = new Tokenizer();
  private usage: unknown;
  private found = false;
  private failure: UsageReading | undefined;
  private fed = 0;
  private lastToken = 0;

  constructor(private readonly maxValueBytes: number) {
    const parser = new TokenParser({ paths: ['$.usage'], keepStack: false });
    parser.onValue = ({ value }) => {
      this.usage = value;
      this.found = true;
    };
    this.tokenizer.onToken = (token) => {
      this.lastToken = token.offset;
      parser.write(token);
    };
    parser.onError = (error) => this.tokenizer.error(error);
    // At the end of the input, a value still open is an error (a truncated body).
    this.tokenizer.onEnd = () => {
      if (!parser.isEnded) parser.end();
    };
    this.tokenizer.onError = () => {
      this.failure ??= { problem: 'response body is not valid JSON', reason: 'malformed' };
    };
    // The parser ends itself after the top-level value; what follows it is an error, as for JSON.parse.
    parser.onEnd = () => undefined;
  }

  write(chunk: Uint8Array): void {
    if (this.failure) return;
    this.fed += chunk.length;
    this.tokenizer.write(chunk);
    if (!this.failure && this.fed - this.lastToken > this.maxValueBytes) {
      this.failure = { problem: `a JSON value over ${this.maxValueBytes} bytes, usage not read`, reason: 'oversized' };
    }
  }

  end(): UsageReading | undefined {
    if (!this.failure && !this.tokenizer.isEnded) this.tokenizer.end();
    // Usage read before a failure is what the upstream reported; the failure only matters without it.
    return (this.found ? tokensFromUsage(this.usage) : undefined) ?? this.failure;
  }
}
