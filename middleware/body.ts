// Reads the request body for the estimate, then puts it back so later handlers read it unchanged.
import type { Request } from 'express';

export interface RequestBody {
  /** Size of the body in bytes. */
  bytes: number;
  /** The body parsed as JSON when it is a JSON object, else undefined. */
  json: unknown;
}

export class BodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`request body is larger than ${limit} bytes`);
  }
}

const EMPTY: RequestBody = Object.freeze({ bytes: 0, json: undefined });

/** A declared Content-Length over `limit`, known before reading a byte. */
export function declaredTooLarge(req: Request, limit: number): boolean {
  const declared = Number(req.headers['content-length']);
  return Number.isFinite(declared) && declared > limit;
}

/**
 * The body as seen by the gate. A body parsed by an earlier middleware (`req.body`) is used as is;
 * otherwise the raw stream is read up to `limit` bytes and unshifted back before it can end, so
 * the stream later handlers see is the original one, byte for byte.
 */
export async function readRequestBody(req: Request, limit: number): Promise<RequestBody> {
  if (req.body !== undefined) return parsedBody(req);
  if (!hasBody(req)) return EMPTY;
  const raw = await readAndRestore(req, limit);
  return { bytes: raw.length, json: parseJsonObject(raw) };
}

/** Whether the request declares a body (a length above zero, or a transfer coding). */
export function hasBody(req: Request): boolean {
  return req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length']) > 0;
}

function parsedBody(req: Request): RequestBody {
  const body: unknown = req.body;
  const declared = Number(req.headers['content-length']);
  if (Buffer.isBuffer(body)) return { bytes: body.length, json: parseJsonObject(body) };
  if (typeof body === 'string') return { bytes: Buffer.byteLength(body), json: undefined };
  const bytes = Number.isSafeInteger(declared) && declared >= 0 ? declared : Buffer.byteLength(JSON.stringify(body) ?? '');
  return { bytes, json: body };
}

function parseJsonObject(raw: Buffer): unknown {
  // Only a body that opens like a JSON object is parsed: the estimate needs its top-level fields.
  let i = 0;
  while (i < raw.length && (raw[i] === 0x20 || raw[i] === 0x0a || raw[i] === 0x0d || raw[i] === 0x09)) i++;
  if (raw[i] !== 0x7b) return undefined;
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch {
    return undefined;
  }
}

function readAndRestore(req: Request, limit: number): Promise<Buffer> {
  // Read by an earlier middleware that left no req.body: there is nothing left to see.
  if (req.readableEnded) return Promise.resolve(Buffer.alloc(0));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = (error?: Error): void => {
      req.off('readable', onReadable);
      req.off('end', onEnd);
      req.off('error', finish);
      req.off('close', onClose);
      if (error) return reject(error);
      const body = Buffer.concat(chunks, size);
      // Unshifted in the same tick as the last read, before the stream can emit 'end'.
      if (size > 0) req.unshift(body);
      resolve(body);
    };
    const onEnd = (): void => finish();
    const onClose = (): void => finish(req.complete ? undefined : new Error('client closed the connection while sending the body'));
    const onReadable = (): void => {
      // read(n) with n = what is buffered never runs into the end of the stream, so 'end' is
      // left for whoever reads the restored body.
      while (req.readableLength > 0) {
        const chunk = req.read(req.readableLength) as Buffer | null;
        if (chunk === null) break;
        size += chunk.length;
        if (size > limit) return finish(new BodyTooLargeError(limit));
        chunks.push(chunk);
      }
      if (req.complete) finish();
    };
    req.on('readable', onReadable);
    req.on('end', onEnd);
    req.on('error', finish);
    req.on('close', onClose);
  });
}
