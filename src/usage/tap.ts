// Watches a response body as it is written, decompressing a copy when needed, and reads token usage from it.
import type { Transform } from 'node:stream';
import { finished } from 'node:stream';
import { constants, createBrotliDecompress, createGunzip, createInflate } from 'node:zlib';
import { JsonUsageReader } from './json.js';
import { SseUsageReader } from './sse.js';
import type { UsageReading } from './tokens.js';

export interface TapOptions {
  contentType: string | undefined;
  contentEncoding: string | undefined;
}

export interface TapResult {
  /** Decoded body bytes seen (after decompression when it succeeded; raw bytes otherwise). */
  bytes: number;
  /** Body bytes as written, before decoding. */
  rawBytes: number;
  /** Characters of generated text in an event stream of a known API; undefined for any other body. */
  generatedText: number | undefined;
  /** Usage found in the body, or a problem; undefined when the body has none (or is neither JSON nor SSE). */
  reading: UsageReading | undefined;
  /** SSE events that were not valid JSON (for one warning log line). */
  malformedEvents: number;
  /** What a reader threw at a decoded chunk (a bug): the reading is then not to be trusted. */
  failure: Failure | undefined;
}

/** Something thrown, kept as it was (anything can be thrown, undefined too). */
export interface Failure {
  error: unknown;
}

interface Reader {
  push(chunk: Buffer): void;
  result(): UsageReading | undefined;
}

export class UsageTap {
  private readonly reader: Reader | undefined;
  private readonly decoder: Transform | undefined;
  /** A content-encoding this tap cannot decode, kept only when the body would have been read. */
  private readonly unsupported: string | undefined;
  private rawBytes = 0;
  private decodedBytes = 0;
  private decodeError: string | undefined;
  private failure: Failure | undefined;
  private outcome: Promise<TapResult> | undefined;

  constructor(options: TapOptions) {
    const reader = readerFor(options.contentType);
    const encoding = (options.contentEncoding ?? '').trim().toLowerCase();
    if (encoding === '' || encoding === 'identity') {
      this.reader = reader;
      return;
    }
    const decoder = decoderFor(encoding);
    this.decoder = decoder;
    if (!decoder) {
      if (reader) this.unsupported = encoding;
      return;
    }
    this.reader = reader;
    decoder.on('data', (chunk: Buffer) => {
      this.decodedBytes += chunk.length;
      // Thrown here, in a callback of the decompressor, it would bring the whole process down.
      try {
        reader?.push(chunk);
      } catch (error) {
        this.failure ??= { error };
        decoder.destroy();
      }
    });
    // The first error is the cause; later ones only report writes refused after it.
    decoder.on('error', (error: Error) => {
      this.decodeError ??= error.message;
    });
  }

  /** Called synchronously with every chunk the response writes (string chunks come with their encoding, default utf8); must never throw and must be cheap. Returns the chunk's size in bytes. */
  push(chunk: Buffer | string | Uint8Array, encoding?: BufferEncoding): number {
    const bytes = toBuffer(chunk, encoding);
    this.rawBytes += bytes.length;
    if (!this.decoder) this.reader?.push(bytes);
    else if (!this.decoder.destroyed) this.decoder.write(bytes);
    return bytes.length;
  }

  /** Call once when the response ended or was cut; resolves when any decompressor has drained. Never rejects. */
  finish(): Promise<TapResult> {
    this.outcome ??= this.drain().then(() => this.summary());
    return this.outcome;
  }

  private drain(): Promise<void> {
    const decoder = this.decoder;
    if (!decoder) return Promise.resolve();
    return new Promise((resolve) => {
      // finished() calls back on end or error, and also for a decoder that has already failed.
      finished(decoder, () => resolve());
      if (!decoder.destroyed) decoder.end();
    });
  }

  private summary(): TapResult {
    const decoded = this.decoder !== undefined && this.decodeError === undefined;
    return {
      bytes: decoded ? this.decodedBytes : Math.max(this.decodedBytes, this.rawBytes),
      rawBytes: this.rawBytes,
      reading: this.reading(),
      generatedText: this.reader instanceof SseUsageReader ? this.reader.generatedText : undefined,
      malformedEvents: this.reader instanceof SseUsageReader ? this.reader.malformedEvents : 0,
      failure: this.failure,
    };
  }

  private reading(): UsageReading | undefined {
    if (this.unsupported !== undefined) return { problem: `unsupported content-encoding ${this.unsupported}`, reason: 'encoding' };
    const reading = this.reader?.result();
    // Usage decoded before the failure is still exact; anything else is blamed on the failure.
    if (this.decodeError === undefined || (reading !== undefined && 'tokens' in reading)) return reading;
    return this.reader ? { problem: `compressed body could not be decoded: ${this.decodeError}`, reason: 'encoding' } : undefined;
  }
}

function readerFor(contentType: string | undefined): Reader | undefined {
  const [mediaType = ''] = (contentType ?? '').split(';');
  const type = mediaType.trim().toLowerCase();
  if (type === 'text/event-stream') return new SseUsageReader();
  if (type === 'application/json' || type.endsWith('+json')) return new JsonUsageReader();
  return undefined;
}

// A sync flush at the end makes a truncated stream yield what it decoded instead of failing.
function decoderFor(encoding: string): Transform | undefined {
  switch (encoding) {
    case 'gzip':
    case 'x-gzip':
      return createGunzip({ finishFlush: constants.Z_SYNC_FLUSH });
    case 'deflate':
      return createInflate({ finishFlush: constants.Z_SYNC_FLUSH });
    case 'br':
      return createBrotliDecompress({ finishFlush: constants.BROTLI_OPERATION_FLUSH });
    default:
      return undefined;
  }
}

function toBuffer(chunk: Buffer | string | Uint8Array, encoding: BufferEncoding | undefined): Buffer {
  if (typeof chunk === 'string') {
    // An encoding Buffer does not know would throw; Node itself would have refused the write anyway.
    return Buffer.from(chunk, encoding !== undefined && Buffer.isEncoding(encoding) ? encoding : 'utf8');
  }
  return Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
}
