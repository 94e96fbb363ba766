// A scripted upstream on loopback that counts its hits and keeps the last request it got.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type Respond = (req: http.IncomingMessage, body: Buffer, res: http.ServerResponse) => void;

export interface Upstream {
  url: string;
  hits: number;
  last: { method: string; url: string; headers: http.IncomingHttpHeaders; body: Buffer } | undefined;
  respond: Respond;
  close(): Promise<void>;
}

export const json = (payload: unknown, status = 200): Respond => (_req, _body, res) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(payload));
};

/** Sends the given SSE data payloads (objects are JSON-encoded), `gapMs` apart. */
export const sse = (events: readonly unknown[], gapMs = 0): Respond => (_req, _body, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  let i = 0;
  const next = (): void => {
    if (res.destroyed) return;
    if (i === events.length) return void res.end();
    const event = events[i++];
    res.write(`data: ${typeof event === 'string' ? event : JSON.stringify(event)}\n\n`);
    if (gapMs > 0) setTimeout(next, gapMs);
    else next();
  };
  next();
};

export async function startUpstream(respond: Respond = json({ ok: true })): Promise<Upstream> {
  const upstream: Upstream = {
    url: '',
    hits: 0,
    last: undefined,
    respond,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
  const server = http.createServer((req, res) => {
    upstream.hits++;
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      upstream.last = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, body };
      upstream.respond(req, body, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  upstream.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const close = upstream.close;
  upstream.close = () => {
    server.closeAllConnections();
    return close();
  };
  return upstream;
}

/**
 * Streams `head`, then waits for `release` (the test resolves it once its client has seen `head`)
 * before streaming `rest` with backpressure and ending: the end cannot come before the client saw
 * the start, so seeing the start early proves the proxy streams rather than buffers.
 */
export const heldStream = (head: Buffer, rest: Buffer, release: Promise<void>, contentType = 'application/octet-stream'): Respond => (_req, _body, res) => {
  res.writeHead(200, { 'content-type': contentType });
  res.write(head);
  void release.then(async () => {
    for (let at = 0; at < rest.length && !res.destroyed; at += 16 * 1024) {
      if (!res.write(rest.subarray(at, at + 16 * 1024))) await new Promise((resolve) => res.once('drain', resolve));
    }
    res.end();
  });
};

/** Resets the TCP connection instead of answering. */
export const reset: Respond = (req) => {
  req.socket.resetAndDestroy();
};

/** Never answers (the connection stays open until the client gives up or the upstream closes). */
export const hang: Respond = () => undefined;
