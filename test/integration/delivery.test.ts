// A slow reader that leaves is charged what reached its socket, not what the gate queued for it.
import http from 'node:http';
import type { RequestHandler } from 'express';
import { afterEach, describe, expect, it } from 'vitest';
import { startProxyGate, type ProxyGate } from '../helpers/proxy-gate.js';

let gate: ProxyGate | undefined;
afterEach(async () => {
  await gate?.close();
  gate = undefined;
});

const BODY_BYTES = 16 * 1024 * 1024;
const CHUNK = Buffer.alloc(16 * 1024, 'a');

/** A handler that writes the whole body at once, with no regard to backpressure: it all sits in Node's buffers. */
const floods: RequestHandler = (_req, res) => {
  res.writeHead(200, { 'content-type': 'application/octet-stream' });
  for (let at = 0; at < BODY_BYTES; at += CHUNK.length) res.write(CHUNK);
};

/**
 * What the kernel may hold for the connection besides what the client read: the sender's socket
 * buffer (at most tcp_wmem's maximum, 4 MiB by default on Linux) and the receiver's, which stays
 * small while the client reads little. Measured here: about 3.6 MB.
 */
const KERNEL_SLACK = 8 * 1024 * 1024;

describe('a slow reader that leaves', () => {
  it('is charged the bytes that reached its socket / 4, within the kernel buffers, not the bytes queued', async () => {
    gate = await startProxyGate('http://127.0.0.1:1', floods);
    const { url, key, charged } = gate;
    const read = await new Promise<number>((resolve) => {
      const request = http.request(`${url}/v1/download`, { method: 'POST', agent: false, headers: { authorization: `Bearer ${key}` } }, (response) => {
        let got = 0;
        response.pause();
        // A few small reads every 20 ms, until 300 kB arrived; then it leaves.
        const timer = setInterval(() => {
          for (let i = 0; i < 4; i++) got += (response.read(16 * 1024) as Buffer | null)?.length ?? 0;
          if (got < 300_000) return;
          clearInterval(timer);
          request.destroy();
          resolve(got);
        }, 20);
      });
      request.on('error', () => undefined);
      request.end('{}');
    });
    const tokens = await charged();
    console.log(`slow reader: read ${read} bytes, charged ${tokens} tokens (${tokens * 4} bytes) of a ${BODY_BYTES}-byte body`);
    expect(tokens).toBeGreaterThanOrEqual(Math.ceil(read / 4));
    expect(tokens * 4).toBeLessThanOrEqual(read + KERNEL_SLACK + 8);
    // Before, everything the handler wrote was charged.
    expect(tokens).toBeLessThan(BODY_BYTES / 4 / 2);
  });
});
