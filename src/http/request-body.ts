// Request bodies as the gate and the proxy both see them: whether one is coming, an upload cut short, the JSON inside, the default limits.
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Largest request body accepted, by default. */
export const DEFAULT_BODY_LIMIT = 10 * 1024 * 1024;
/** Longest a request body may take to arrive, by default. */
export const DEFAULT_BODY_TIMEOUT_MS = 60_000;
const DEFAULT_BODY_MEMORY_LIMIT = 100 * 1024 * 1024;

/** Bytes of request bodies read at once, all requests together, by default: 100 MiB, or the body limit when larger. */
export function defaultBodyMemoryLimit(bodyLimit: number): number {
  return Math.max(DEFAULT_BODY_MEMORY_LIMIT, bodyLimit);
}

/** Whether the request declares a body (a length above zero, or a transfer coding). */
export function hasBody(req: IncomingMessage): boolean {
  return req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length']) > 0;
}

/** How long an upload answered before its body arrived may go on before its connection is closed. */
export const LINGER_MS = 2000;

/** A declared body up to this size is left to finish after a refusal (Node drops it), so a keep-alive client can reuse its connection. */
const SMALL_BODY_BYTES = 1024 * 1024;

/**
 * Closes the connection of a request answered before its body arrived, LINGER_MS after the answer
 * unless the body has arrived by then (Node reads and drops it). Closing at once would reset the
 * connection with the answer perhaps still unread by a client busy uploading. A large declared
 * body is not even read meanwhile: its client cannot be done with the connection anyway.
 */
export function closeUnfinishedUpload(req: IncomingMessage, res: ServerResponse): void {
  if (!hasBody(req) || req.complete) return;
  // Held now: a request stream read to its end (or destroyed) lets go of its socket; the response holds it until it finishes.
  const socket = (req.socket as IncomingMessage['socket'] | null) ?? res.socket;
  res.once('finish', () => {
    if (req.complete || !socket) return;
    if (Number(req.headers['content-length']) > SMALL_BODY_BYTES) setImmediate(() => socket.pause());
    setTimeout(() => {
      if (!req.complete) socket.destroy();
    }, LINGER_MS).unref();
  });
}

/** The body parsed, when it is a JSON object (a UTF-8 byte order mark before it is allowed); else undefined. */
export function parseJsonObject(raw: Buffer): Record<string, unknown> | undefined {
  // Only a body that opens like a JSON object is parsed: the estimate needs its top-level fields.
  let i = raw[0] === 0xef && raw[1] === 0xbb && raw[2] === 0xbf ? 3 : 0;
  while (i < raw.length && (raw[i] === 0x20 || raw[i] === 0x0a || raw[i] === 0x0d || raw[i] === 0x09)) i++;
  if (raw[i] !== 0x7b) return undefined;
  try {
    return JSON.parse(raw.toString('utf8', i)) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}
