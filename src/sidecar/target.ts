// Which requests may be forwarded: plain paths that stay inside the upstream's own path, no upgrades.
import type { IncomingMessage } from 'node:http';
import type { Request, RequestHandler, Response } from 'express';
import { closeUnfinishedUpload } from '../http/request-body.js';
import { errorBody, errorBodyFor, type ErrorFields } from '../http/error-body.js';

export interface Refusal extends ErrorFields {
  status: 400 | 405 | 501;
}

/**
 * Why a request cannot be forwarded, or undefined when it can. `target` is the request-target as
 * the client sent it (Express's `req.originalUrl`, which mounting does not shorten).
 */
export function forwardingProblem(req: IncomingMessage, target: string): Refusal | undefined {
  if (req.method === 'CONNECT') return badTarget('CONNECT is not supported.');
  // An upstream that answers TRACE would echo the upstream key the proxy adds.
  if (req.method === 'TRACE' || req.method === 'TRACK') return { status: 405, type: 'invalid_request_error', code: 'method_not_allowed', message: `${req.method} is not supported.` };
  // Absolute form (`http://host/...`) would let a proxy upstream route to a host the client picks.
  if (!target.startsWith('/')) return badTarget('The request target must be a path starting with "/".');
  const path = target.split('?', 1)[0] ?? '';
  // `//host/...` is read as another host by an upstream that resolves the path against its own URL.
  if (/\/\/(?!$)/.test(path)) return badTarget('The request path must not contain empty segments ("//").');
  // Decoded twice by some upstreams: %252e is a "." to them.
  if (/%25(2e|2f|5c)/i.test(path)) return badTarget('The request path must not contain double-encoded ".", "/" or "\\".');
  for (const segment of path.split('/')) {
    let decoded: string;
    try {
      decoded = decodeURIComponent(segment);
    } catch {
      return badTarget('The request path has a malformed percent-encoding.');
    }
    // An upstream that decodes %2F or treats "\" as "/" would see these as segments of their own,
    // and servlet containers read "..;x" as "..".
    if (decoded.split(/[/\\]/).some((part) => /^\.\.?(;.*)?$/.test(part))) return badTarget('The request path must not contain "." or ".." segments.');
  }
  if (req.headers.upgrade !== undefined) {
    return { status: 501, type: 'invalid_request_error', code: 'upgrade_not_supported', message: 'Protocol upgrades (WebSocket) are not supported; use plain HTTP requests (streamed responses work).' };
  }
  return undefined;
}

function badTarget(message: string): Refusal {
  return { status: 400, type: 'invalid_request_error', code: 'invalid_request_target', message };
}

/** Sends a refusal; the request's body, if any, is not read, and its connection is closed if it keeps coming. */
export function refuse(req: Request, res: Response, refusal: Refusal): void {
  closeUnfinishedUpload(req, res);
  res.status(refusal.status).json(errorBodyFor(req, refusal));
}

/** Refuses what cannot be forwarded before anything else runs (the gate included). */
export const plainTargetsOnly: RequestHandler = (req, res, next) => {
  const problem = forwardingProblem(req, req.originalUrl);
  if (problem) return refuse(req, res, problem);
  next();
};

/** The raw answer to CONNECT, which Node hands to the server's 'connect' event rather than to the app. */
export function connectRefusal(): string {
  const body = JSON.stringify(errorBody(badTarget('CONNECT is not supported.')));
  return `HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}
