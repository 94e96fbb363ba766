// Reader of token usage from a whole JSON response body, parsed once when it has ended.
import { tokensFromUsage, type UsageReading } from './tokens.js';

export class JsonUsageReader {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private oversized = false;

  /** Keeps a copy of the body up to `maxBytes`; a longer body is dropped and reported, not parsed. */
  constructor(private readonly maxBytes: number) {}

  push(chunk: Buffer): void {
    if (this.oversized) return;
    this.size += chunk.length;
    if (this.size > this.maxBytes) {
      this.oversized = true;
      this.chunks.length = 0;
      return;
    }
    // A copy, because the caller may reuse its buffer once the write returns.
    this.chunks.push(Buffer.from(chunk));
  }

  result(): UsageReading | undefined {
    if (this.oversized) return { problem: `response body over ${this.maxBytes} bytes, usage not read` };
    // An empty body (HEAD, 204, 304) has no usage rather than broken usage.
    if (this.size === 0) return undefined;
    let body: unknown;
    try {
      // TextDecoder drops a leading byte order mark, which JSON.parse would refuse.
      body = JSON.parse(new TextDecoder().decode(Buffer.concat(this.chunks)));
    } catch {
      return { problem: 'response body is not valid JSON' };
    }
    return typeof body === 'object' && body !== null && 'usage' in body ? tokensFromUsage(body.usage) : undefined;
  }
}
