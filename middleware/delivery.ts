// How much of a response body reached the client's socket: handed to the kernel, not queued in Node.
import type { Socket } from 'node:net';
import type { ServerResponse } from 'node:http';

/** The parts of net.Socket this reads: bytes handed to libuv, and those libuv still holds. */
type CountingSocket = Socket & { _bytesDispatched?: number; _handle?: { writeQueueSize?: number } | null };
type SentResponse = ServerResponse & { _header?: unknown; chunkedEncoding?: boolean };

/**
 * socket.bytesWritten counts bytes still queued in the socket's buffer (all of a body written
 * without regard to backpressure), so it is not what the client got. What left Node is the bytes
 * dispatched less libuv's write queue; that can only be read while the connection is open, so it is
 * sampled after each write and, once anything is queued, when the client resets or ends the
 * connection. The kernel's own buffers (the sender's and the receiver's) count as delivered.
 */
export class Delivery {
  private readonly start: number;
  // Kept, because the socket lets go of its handle before it reports a reset.
  private readonly handle: { writeQueueSize?: number } | null | undefined;
  private wireBody = 0;
  private reached = 0;
  private watching = false;
  private readonly sample = (): void => {
    const handle = this.handle;
    const dispatched = this.socket?._bytesDispatched;
    if (!handle || typeof dispatched !== 'number') return;
    this.reached = Math.max(this.reached, dispatched - (handle.writeQueueSize ?? 0));
  };

  constructor(
    private readonly res: SentResponse,
    private readonly socket: CountingSocket | null,
  ) {
    // What earlier responses on this connection wrote.
    this.start = socket?.bytesWritten ?? 0;
    this.handle = socket?._handle;
  }

  /** Called after each body chunk of `bytes` bytes went to res.write or res.end. */
  wrote(bytes: number): void {
    // A chunked body carries "<size in hex>\r\n" before each chunk and "\r\n" after it.
    this.wireBody += bytes + (this.res.chunkedEncoding && bytes > 0 ? bytes.toString(16).length + 4 : 0);
    this.sample();
    const socket = this.socket;
    if (this.watching || !socket || socket.writableLength === 0) return;
    this.watching = true;
    socket.prependListener('error', this.sample);
    socket.prependListener('end', this.sample);
  }

  /** The share of the body that reached the socket, from 0 to 1 (1 when there is no socket to ask). */
  share(): number {
    this.stop();
    if (!this.socket || typeof this.socket._bytesDispatched !== 'number') return 1;
    if (this.wireBody === 0) return 0;
    const header = typeof this.res._header === 'string' ? Buffer.byteLength(this.res._header, 'latin1') : 0;
    return Math.min(1, Math.max(0, (this.reached - this.start - header) / this.wireBody));
  }

  stop(): void {
    if (!this.watching || !this.socket) return;
    this.watching = false;
    this.socket.off('error', this.sample);
    this.socket.off('end', this.sample);
  }
}
