// proxy(): the Express handler that streams an admitted request to the upstream and its response back (undici).
import { pipeline } from 'node:stream';
import type { Request, RequestHandler, Response } from 'express';
import { Agent, type Dispatcher } from 'undici';
import { closeUnfinishedUpload, DEFAULT_BODY_LIMIT, hasBody } from '../http/request-body.js';
import { errorBodyFor, type ErrorFields } from '../http/error-body.js';
import { defaultLogger } from '../logger.js';
import type { Logger } from '../types.js';
import { decodableAcceptEncoding, endToEnd, upstreamRequestHeaders, withoutQueryKey, type HeaderMap, type KeyStyle } from './headers.js';
import { rewriteBody, rewriteMayApply, type RewriteRules } from './rewrite.js';
import { forwardingProblem, refuse } from './target.js';

export interface ProxyOptions {
  /** The upstream, such as `https://api.openai.com`; the request's path and query are appended to its path. */
  target: string | URL;
  /** Sent upstream in place of the client's key, in the header style the client used. Default: none. */
  apiKey?: string;
  /** Always send `apiKey` in this header instead (an Anthropic upstream wants `x-api-key` whatever the client sent). */
  authHeader?: KeyStyle;
  /** Longest wait for response headers once the request is sent, and longest pause between body chunks. Default: 10 minutes. */
  timeoutMs?: number;
  /** Set a JSON body's `model` to the key's model (`req.tokenGate.key.model`), when the key has one. Default: false. */
  overrideModel?: boolean;
  /** Set `stream_options.include_usage` to true on streamed OpenAI completions. Default: false. */
  includeStreamUsage?: boolean;
  /** Largest body read to rewrite it, when no gate has refused larger ones. Default: 10 MiB. */
  bodyLimit?: number;
  /** Where upstream failures are logged; any pino logger. Default: JSON on stdout. */
  logger?: Logger;
}

/** The handler, and a way to close its connections to the upstream once the server has stopped. */
export interface ProxyHandler extends RequestHandler {
  close(): Promise<void>;
}

/** Failures that mean the upstream took too long (504) rather than answered badly or not at all (502). */
const TIMEOUTS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'ETIMEDOUT']);

/**
 * Forwards method, path, query, body and end-to-end headers to `target`, streaming both ways. The
 * client's key never goes upstream (headers and `api_key` query parameters); targets that are not
 * plain paths inside the upstream's path get 400, upgrades 501.
 */
export function proxy(options: ProxyOptions): ProxyHandler {
  const upstreamUrl = new URL(options.target);
  if (upstreamUrl.protocol !== 'http:' && upstreamUrl.protocol !== 'https:') throw new TypeError('proxy: `target` must be an http:// or https:// URL');
  const timeoutMs = options.timeoutMs ?? 600_000;
  const agent = new Agent({ headersTimeout: timeoutMs, bodyTimeout: timeoutMs });
  const route: Route = {
    agent,
    origin: upstreamUrl.origin,
    basePath: upstreamUrl.pathname.replace(/\/+$/, ''),
    apiKey: options.apiKey,
    authHeader: options.authHeader,
    overrideModel: options.overrideModel ?? false,
    includeStreamUsage: options.includeStreamUsage ?? false,
    bodyLimit: options.bodyLimit ?? DEFAULT_BODY_LIMIT,
    logger: options.logger ?? defaultLogger(),
  };
  const handler: RequestHandler = (req, res) => {
    const problem = forwardingProblem(req, req.originalUrl);
    if (problem) return refuse(req, res, problem);
    forward(req, res, route).catch((error: unknown) => fail(res, error, route.logger));
  };
  return Object.assign(handler, { close: () => agent.close() });
}

interface Route {
  agent: Dispatcher;
  origin: string;
  basePath: string;
  apiKey: string | undefined;
  authHeader: KeyStyle | undefined;
  overrideModel: boolean;
  includeStreamUsage: boolean;
  bodyLimit: number;
  logger: Logger;
}

/** A request the proxy refuses to forward as it is. */
class ClientError extends Error {
  constructor(
    readonly status: 400 | 413,
    readonly fields: ErrorFields,
  ) {
    super(fields.message);
  }
}

async function forward(req: Request, res: Response, route: Route): Promise<void> {
  // A client that goes away before its response is complete takes the upstream request with it.
  const abort = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) abort.abort();
  });
  const url = withoutQueryKey(req.originalUrl);
  const headers = upstreamRequestHeaders(req.headers, route.apiKey, route.authHeader);
  // The gate reads usage from the body: the upstream may only compress it in a way the gate decodes.
  headers['accept-encoding'] = decodableAcceptEncoding(req.headers['accept-encoding']);
  const body = await requestBody(req, headers, url.split('?', 1)[0] ?? '', route);
  if (abort.signal.aborted) return;
  const upstream = await route.agent.request({
    origin: route.origin,
    path: route.basePath + url,
    method: req.method as Dispatcher.HttpMethod,
    headers,
    body,
    signal: abort.signal,
  });
  res.status(upstream.statusCode);
  // The quota headers the gate already set win over any the upstream sends.
  for (const [name, value] of Object.entries(endToEnd(upstream.headers))) if (!res.hasHeader(name)) res.setHeader(name, value);
  // Headers go out now: a stream's client learns the status before the first event, and a body
  // that fails from here on can only end the connection.
  res.flushHeaders();
  // pipeline() writes through res.write/res.end (where the gate reads the usage) and waits for
  // 'drain', so a slow client slows the upstream instead of filling memory.
  pipeline(upstream.body, res, (error) => {
    if (error && !abort.signal.aborted) {
      route.logger.warn({ err: error, status: upstream.statusCode }, 'upstream response failed mid-body; closing the client connection');
      res.destroy();
    }
  });
}

/**
 * What to send upstream as the body: nothing when the request has none, the request stream itself
 * (it still holds every byte, the gate put back what it read), or the JSON body rewritten. A rule
 * that applies is never skipped: a body it cannot read (not a JSON object, or compressed) is refused.
 */
async function requestBody(req: Request, headers: HeaderMap, path: string, route: Route): Promise<Dispatcher.DispatchOptions['body']> {
  if (!hasBody(req)) return undefined;
  const parsed = parsedEarlier(req);
  const rules: RewriteRules = { model: route.overrideModel ? (req.tokenGate?.key.model ?? undefined) : undefined, includeStreamUsage: route.includeStreamUsage };
  if (!rewriteMayApply(rules, path)) {
    if (!parsed) return req;
    delete headers['content-encoding'];
    headers['content-length'] = String(parsed.length);
    return parsed;
  }
  const coding = String(headers['content-encoding'] ?? 'identity').trim().toLowerCase();
  if (coding !== 'identity' && !parsed) throw unreadable('The request body must not be compressed: this gateway rewrites it.');
  const sent = rewriteBody(parsed ?? (await readAll(req, route.bodyLimit)), path, rules);
  if (!sent) throw unreadable('The request body must be a JSON object: this gateway rewrites it.');
  delete headers['content-encoding'];
  headers['content-length'] = String(sent.length);
  return sent;
}

/**
 * The body a parser mounted before the proxy read (the stream is spent then), as bytes to send:
 * a Buffer or string as it is, anything else as JSON. The parser decoded it, so it goes out
 * without its Content-Encoding.
 */
function parsedEarlier(req: Request): Buffer | undefined {
  if (!req.readableEnded || req.body === undefined) return undefined;
  const body: unknown = req.body;
  if (Buffer.isBuffer(body)) return body;
  return Buffer.from(typeof body === 'string' ? body : JSON.stringify(body), 'utf8');
}

function unreadable(message: string): ClientError {
  return new ClientError(400, { type: 'invalid_request_error', code: 'invalid_body', message });
}

/** The whole body, up to `limit` bytes (a gate in front has already refused larger ones). */
async function readAll(req: Request, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new ClientError(413, { type: 'invalid_request_error', code: 'request_too_large', message: `Request body is larger than ${limit} bytes.` });
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks, size);
}

/** Before any header went out: 400, 413, 502 or 504 with an error body. After: the connection is ended. */
function fail(res: Response, error: unknown, logger: Logger): void {
  if (res.destroyed || res.writableEnded) return; // the client left; its abort ended the upstream request
  if (error instanceof ClientError) {
    closeUnfinishedUpload(res.req, res);
    return void res.status(error.status).json(errorBodyFor(res.req, error.fields));
  }
  const code = (error as { code?: string }).code;
  const timedOut = code !== undefined && TIMEOUTS.has(code);
  logger.warn({ err: error, code }, timedOut ? 'upstream timed out' : 'upstream request failed');
  if (res.headersSent) return void res.destroy();
  const answer: ErrorFields & { status: number } = timedOut
    ? { status: 504, type: 'upstream_error', code: 'upstream_timeout', message: 'The upstream did not answer in time.' }
    : { status: 502, type: 'upstream_error', code: 'bad_gateway', message: `The upstream request failed${code ? ` (${code})` : ''}.` };
  res.status(answer.status).json(errorBodyFor(res.req, answer));
}
