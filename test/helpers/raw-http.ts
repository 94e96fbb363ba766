// HTTP/1.1 over a raw socket, for requests HTTP clients would normalise or refuse to send.
import { readFile } from 'node:fs/promises';
import net from 'node:net';

export interface RawAnswer {
  status: number;
  head: string;
  body: string;
  /** Milliseconds from connecting to the status line. */
  answeredAfterMs: number;
  /** Resolves once the server has closed the connection. */
  closed: Promise<void>;
  socket: net.Socket;
}

/**
 * Writes `head` (and `body`, if any), then resolves with the first response once its head and
 * Content-Length bytes of body have arrived. `trickle` keeps sending after that, one chunk every
 * 50 ms, as a client still uploading would, until the connection closes.
 */
export function rawRequest(url: string, head: string, options: { body?: Buffer; trickle?: Buffer; timeoutMs?: number } = {}): Promise<RawAnswer> {
  const { port, hostname } = new URL(url);
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const socket = net.connect(Number(port), hostname);
    let received = Buffer.alloc(0);
    let trickling: NodeJS.Timeout | undefined;
    const closed = new Promise<void>((done) => socket.once('close', () => done()));
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no complete answer within ${options.timeoutMs ?? 10_000} ms: ${JSON.stringify(received.toString('latin1').slice(0, 200))}`));
    }, options.timeoutMs ?? 10_000);
    void closed.then(() => clearInterval(trickling));
    socket.on('error', () => undefined); // a reset after the answer is what a refused upload looks like
    socket.once('connect', () => {
      socket.write(head.includes('\r\n\r\n') ? head : `${head}\r\n\r\n`);
      if (options.body) socket.write(options.body);
      if (options.trickle) trickling = setInterval(() => socket.destroyed || socket.write(options.trickle!), 50);
    });
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const end = received.indexOf('\r\n\r\n');
      if (end === -1) return;
      const headText = received.subarray(0, end).toString('latin1');
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(headText)?.[1] ?? 0);
      if (received.length < end + 4 + length) return;
      clearTimeout(timer);
      socket.removeAllListeners('data');
      resolve({
        status: Number(headText.split(' ', 2)[1]),
        head: headText,
        body: received.subarray(end + 4, end + 4 + length).toString('utf8'),
        answeredAfterMs: Date.now() - started,
        closed,
        socket,
      });
    });
    socket.once('close', () => {
      clearTimeout(timer);
      reject(new Error(`the connection closed before a complete answer: ${JSON.stringify(received.toString('latin1').slice(0, 200))}`));
    });
  });
}

/** Resident set size of a process, in bytes (Linux). */
export async function rssOf(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? Number.NaN) * 1024;
}
