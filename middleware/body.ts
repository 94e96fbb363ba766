// Reads the request body for the estimate, then puts it back so later handlers read it unchanged.
import type { Request } from 'express';
import { hasBody, parseJsonObject } from '../src/http/request-body.js';

export interface RequestBody {
  /** Size of the body in bytes. */
  bytes: number;
  /** The body parsed as JSON when it is a JSON object, else undefined. */
  json: unknown;
}

/** Why a body was not read: each maps to its own answer (413, 408, 503). */
export class BodyTooLargeError extends Error {
  constructor(readonly limit: number) {
    super(`request body is larger than ${limit} bytes`);
  }
}

export class BodyTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`request body did not arrive within ${timeoutMs} ms`);
  }
}

export class BodyMemoryError extends Error {
  constructor(readonly limit: number) {
    super(`request bodies being read already hold ${limit} bytes`);
  }
}

/**
 * The bytes of request bodies one gate is waiting on at once, all requests together: a cap on the
 * memory that clients sending large or slow bodies can make it hold.
 */
export class BodyMemory {
  private held = 0;

  constructor(readonly limit: number) {}

  /** Takes `bytes` of the budget, or returns false (and takes nothing) when they do not fit. */
  take(bytes: number): boolean {
    if (this.held + bytes > this.limit) return false;
    this.held += bytes;
    return true;
  }

  give(bytes: number): void {
    this.held -= bytes;
  }
}

export interface BodyRules {
  /** Largest body, in bytes. */
  limit: number;
  /** Longest time the whole body may take to arrive. */
  timeoutMs: number;
  /** The budget the bytes are taken from while a body is being read; given back when the read ends. */
  memory: BodyMemory;
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
export async function readRequestBody(req: Request, rules: BodyRules): Promise<RequestBody> {
  if (req.body !== undefined) return parsedBody(req);
  if (!hasBody(req)) return EMPTY;
  const raw = await readAndRestore(req, rules);
  return { bytes: raw.length, json: parseJsonObject(raw) };
}

function parsedBody(req: Request): RequestBody {
  const body: unknown = req.body;
  const declared = Number(req.headers['content-length']);
  if (Buffer.isBuffer(body)) return { bytes: body.length, json: parseJsonObject(body) };
  if (typeof body === 'string') return { bytes: Buffer.byteLength(body), json: undefined };
  const bytes = Number.isSafeInteger(declared) && declared >= 0 ? declared : Buffer.byteLength(JSON.stringify(body) ?? '');
  return { bytes, json: body };
}

function readAndRestore(req: Request, { limit, timeoutMs, memory }: BodyRules): Promise<Buffer> {
  // Read by an earlier middleware that left no req.body: there is nothing left to see.
  if (req.readableEnded) return Promise.resolve(Buffer.alloc(0));
  // Gone while its key was looked up: its 'close' has fired already, nothing more will come.
  if (req.destroyed) return Promise.reject(new Error('client closed the connection while sending the body'));
  // A declared length is taken from the budget at once, so a body that cannot fit is refused before
  // a byte of it is read (reading first would hold the bytes of every upload it then refuses).
  const declared = Number(req.headers['content-length']);
  let taken = Number.isSafeInteger(declared) && declared > 0 ? declared : 0;
  if (!memory.take(taken)) return Promise.reject(new BodyMemoryError(memory.limit));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(() => finish(new BodyTimeoutError(timeoutMs)), timeoutMs);
    let finished = false;
    const finish = (error?: Error): void => {
      if (finished) return; // the budget is given back once
      finished = true;
      clearTimeout(timer);
      // Once read, a body goes on to the decision and the upstream at their pace, not the client's.
      memory.give(taken);
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
        if (size > taken) {
          if (!memory.take(size - taken)) return finish(new BodyMemoryError(memory.limit));
          taken = size;
        }
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
