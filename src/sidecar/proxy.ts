// The reverse proxy: streams an admitted request to the upstream and its response back (undici).
import { pipeline } from 'node:stream';
import type { Request, RequestHandler, Response } from 'express';
import { Agent, type Dispatcher } from 'undici';
import { hasBody } from '../../middleware/body.js';
import { errorBody, type ErrorFields } from '../../middleware/reject.js';
import type { Logger } from '../ops/logger.js';
import { decodableAcceptEncoding, endToEnd, upstreamRequestHeaders, withoutQueryKey, type HeaderMap } from './headers.js';
import { rewriteBody, rewriteMayApply } from './rewrite.js';

export interface ProxyOptions {
  upstreamUrl: URL;
  upstreamApiKey: string | undefined;
  /** Longest wait for response headers once the request is sent, and longest pause between body chunks. */
  timeoutMs: number;
  allowQueryKey: boolean;
  overrideModel: boolean;
  includeStreamUsage: boolean;
  logger: Logger;
}

export interface Proxy {
  handler: RequestHandler;
  /** Closes the connections to the upstream (after the server has stopped). */
  close(): Promise<void>;
}

/** Failures that mean the upstream took too long (504) rather than answered badly or not at all (502). */
const TIMEOUTS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'ETIMEDOUT']);

export function createProxy(options: ProxyOptions): Proxy {
  const agent = new Agent({ headersTimeout: options.timeoutMs, bodyTimeout: options.timeoutMs });
  const origin = options.upstreamUrl.origin;
  const basePath = options.upstreamUrl.pathname.replace(/\/+$/, '');
  const handler: RequestHandler = (req, res) => {
    forward(req, res, { ...options, agent, origin, basePath }).catch((error: unknown) => fail(res, error, options.logger));
  };
  return { handler, close: () => agent.close() };
}

interface Route extends ProxyOptions {
  agent: Dispatcher;
  origin: string;
  basePath: string;
}

async function forward(req: Request, res: Response, route: Route): Promise<void> {
  // A client that goes away before its response is complete takes the upstream request with it.
  const abort = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) abort.abort();
  });
  const url = route.allowQueryKey ? withoutQueryKey(req.originalUrl) : req.originalUrl;
  const headers = upstreamRequestHeaders(req.headers, route.upstreamApiKey);
  // The gate reads usage from the body: the upstream may only compress it in a way the gate decodes.
  headers['accept-encoding'] = decodableAcceptEncoding(req.headers['accept-encoding']);
  const body = await requestBody(req, headers, url, route);
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
 * (it still holds every byte, the gate put back what it read), or a rewritten JSON body.
 */
async function requestBody(req: Request, headers: HeaderMap, path: string, route: Route): Promise<Dispatcher.DispatchOptions['body']> {
  if (!hasBody(req)) return undefined;
  const rules = { model: route.overrideModel ? (req.tokenGate?.key.model ?? undefined) : undefined, includeStreamUsage: route.includeStreamUsage };
  if (!isPlainJson(headers) || !rewriteMayApply(rules, path.split('?', 1)[0] ?? '')) return req;
  const raw = await readAll(req);
  const rewritten = rewriteBody(raw, path.split('?', 1)[0] ?? '', rules);
  const sent = rewritten ?? raw;
  headers['content-length'] = String(sent.length);
  return sent;
}

/** The whole body; the gate has already refused one over the body limit. */
async function readAll(req: Request): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function isPlainJson(headers: HeaderMap): boolean {
  const type = String(headers['content-type'] ?? '').toLowerCase();
  return /\bjson\b/.test(type) && headers['content-encoding'] === undefined;
}

/** Before any header went out: 502 or 504 with an error body. After: the connection is ended. */
function fail(res: Response, error: unknown, logger: Logger): void {
  if (res.destroyed || res.writableEnded) return; // the client left; its abort ended the upstream request
  const code = (error as { code?: string }).code;
  const timedOut = code !== undefined && TIMEOUTS.has(code);
  logger.warn({ err: error, code }, timedOut ? 'upstream timed out' : 'upstream request failed');
  if (res.headersSent) return void res.destroy();
  const answer: ErrorFields & { status: number } = timedOut
    ? { status: 504, type: 'upstream_error', code: 'upstream_timeout', message: 'The upstream did not answer in time.' }
    : { status: 502, type: 'upstream_error', code: 'bad_gateway', message: `The upstream request failed${code ? ` (${code})` : ''}.` };
  res.status(answer.status).json(errorBody(answer));
}
