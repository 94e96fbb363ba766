// The gate's patch of ServerResponse's write and end neither changes nor skews a response it does not
// meter, keeps working with libraries that wrap those methods (on the prototypes or the instance,
// before or after it), contains a failure of its own reading, and is installed once per process
// however many copies of tokengate are loaded.
import { OutgoingMessage, ServerResponse, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createGzip, gzipSync } from 'node:zlib';
import express, { type RequestHandler, type Response } from 'express';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { tokenGate, type TokenGateMiddleware } from '../../middleware/gate.js';
import { createMetrics, type TokenGateMetrics } from '../../src/ops/metrics.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { JsonUsageReader } from '../../src/usage/json.js';
import { UsageTap } from '../../src/usage/tap.js';
import { ERROR, captureLogs, type Captured } from '../helpers/logs.js';
import { parseExposition } from '../helpers/metrics.js';
import { quietLogger, tempDbPath } from '../helpers/gate.js';

type Method = 'write' | 'end';
interface Call {
  method: Method;
  /** How many arguments the method was called with. */
  args: number;
}
type Writes = Record<Method, (...args: unknown[]) => unknown>;

/** Wraps `target`'s write and end the way tracing and logging libraries do, recording each call; returns what undoes it. */
function patchWrites(target: object, calls: Call[]): () => void {
  const patched = target as Writes;
  const had = { write: Object.getOwnPropertyDescriptor(target, 'write'), end: Object.getOwnPropertyDescriptor(target, 'end') };
  for (const method of ['write', 'end'] as const) {
    const original = patched[method];
    patched[method] = function (this: unknown, ...args: unknown[]) {
      calls.push({ method, args: args.length });
      return original.apply(this, args);
    };
  }
  return () => {
    for (const method of ['write', 'end'] as const) {
      const descriptor = had[method];
      if (descriptor) Object.defineProperty(target, method, descriptor);
      else delete patched[method];
    }
  };
}

// A library that patched Node's OutgoingMessage before any gate was created; it stays on.
const earlier: Call[] = [];
patchWrites(OutgoingMessage.prototype, earlier);

const REQUEST = '{}';
const BODY = 'x'.repeat(3998);
/** What BODY is charged as an estimate, with REQUEST: (2 + 3998) / 4. */
const BODY_TOKENS = 1000;
/** What the gate reserves for each request, and charges when it cannot read the usage. */
const RESERVED = 500;
const usageBody = (tokens: number) => JSON.stringify({ id: 'x', usage: { prompt_tokens: 1, completion_tokens: tokens - 1, total_tokens: tokens } });

/** Writes BODY, as text, in two writes a turn of the event loop apart. */
const plain: RequestHandler = (_req, res) => {
  res.setHeader('content-type', 'text/plain');
  res.write(BODY.slice(0, 1000));
  setImmediate(() => res.end(BODY.slice(1000)));
};

/** What compression does: gzips what the handler writes, through the write and end it found on the response. */
const gzipping: RequestHandler = (_req, res, next) => {
  const write = res.write as Writes['write'];
  const end = res.end as Writes['end'];
  const gzip = createGzip();
  gzip.on('data', (chunk: Buffer) => {
    if (!write.call(res, chunk)) gzip.pause();
  });
  res.on('drain', () => gzip.resume());
  gzip.on('end', () => end.call(res));
  const begin = (): void => {
    if (res.headersSent || res.hasHeader('content-encoding')) return;
    res.setHeader('content-encoding', 'gzip');
    res.removeHeader('content-length');
  };
  res.write = function (chunk: string | Buffer) {
    begin();
    return gzip.write(chunk);
  } as Response['write'];
  res.end = function (chunk?: string | Buffer) {
    begin();
    if (chunk) gzip.write(chunk);
    gzip.end();
    return res;
  } as Response['end'];
  next();
};

/** What on-headers (response-time on it) does: wraps the instance's writeHead to set a header as the headers go out. */
const timing: RequestHandler = (_req, res, next) => {
  const writeHead = res.writeHead as (...args: unknown[]) => Response;
  const began = performance.now();
  res.writeHead = function (this: Response, ...args: unknown[]) {
    if (!this.headersSent) this.setHeader('x-response-time', `${(performance.now() - began).toFixed(3)}ms`);
    return writeHead.apply(this, args);
  } as Response['writeHead'];
  next();
};

let storage: Storage;
let second: Storage;
let metrics: TokenGateMetrics;
let logs: Captured;
let gate: TokenGateMiddleware;
const servers: Server[] = [];

beforeAll(async () => {
  [storage, second] = await Promise.all([createStorage({ databasePath: tempDbPath(), logger: quietLogger() }), createStorage({ databasePath: tempDbPath(), logger: quietLogger() })]);
  metrics = createMetrics({ defaultMetrics: false });
  logs = captureLogs();
  gate = tokenGate({ storage, metrics, logger: logs.logger, estimate: () => RESERVED });
});
afterEach(() => {
  vi.restoreAllMocks();
});
afterAll(async () => {
  for (const server of servers) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  await Promise.all([storage.close(), second.close()]);
});

async function serve(app: express.Express): Promise<string> {
  const server = await new Promise<Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  servers.push(server);
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Serves `handlers` on /v1 behind the gate, and answers a gated request with them: its body, and what its key was charged. */
async function gated(...handlers: RequestHandler[]): Promise<{ text: string; tokens: number; headers: Headers }> {
  const app = express();
  app.use('/v1', ...handlers);
  const url = await serve(app);
  const { key, record } = await storage.createKey({ name: 'safety', tokenLimit: 1_000_000, expiresAt: Date.now() + 3600_000 });
  const response = await fetch(`${url}/v1/chat`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: REQUEST });
  const text = await response.text();
  await gate.settled();
  return { text, tokens: (await storage.getKey(record.id))?.totalLifetimeTokens ?? -1, headers: response.headers };
}

const unreadable = async (reason: string): Promise<number | undefined> => parseExposition(await metrics.registry.metrics()).value('tokengate_usage_unreadable_total', { reason });

describe('a response the gate does not meter', () => {
  it("gets Node's own write and end: the same arguments, return values, callbacks and errors, and no property of the gate", async () => {
    let seen: Record<string, unknown> = {};
    const callbacks: unknown[] = [];
    const errors: unknown[] = [];
    const app = express();
    app.use('/v1', gate);
    app.get('/free', (_req, res) => {
      res.on('error', (error: NodeJS.ErrnoException) => errors.push(error.code));
      res.setHeader('content-type', 'text/plain');
      const write = res.write('ab', 'utf8', () => callbacks.push('write'));
      const hex = res.write('6364', 'hex');
      let thrown: unknown;
      try {
        res.write(null);
      } catch (error) {
        thrown = (error as NodeJS.ErrnoException).code;
      }
      const ended = res.end('ef', () => callbacks.push('end')) === res;
      const afterEnd = res.write('x', (error) => callbacks.push((error as NodeJS.ErrnoException | null)?.code));
      const endedAgain = res.end('y') === res;
      seen = { write, hex, thrown, ended, afterEnd, endedAgain, symbols: Object.getOwnPropertySymbols(res).map(String) };
    });
    app.get('/bare', (_req, res) => {
      res.end();
    });
    const url = await serve(app);

    earlier.length = 0;
    expect(await (await fetch(`${url}/free`)).text()).toBe('abcdef');
    await new Promise((resolve) => setImmediate(resolve));
    expect(seen).toMatchObject({ write: true, hex: true, thrown: 'ERR_STREAM_NULL_VALUES', ended: true, afterEnd: false, endedAgain: true });
    expect(seen.symbols).not.toContainEqual(expect.stringContaining('tokengate'));
    expect(callbacks.sort()).toEqual(['ERR_STREAM_WRITE_AFTER_END', 'end', 'write']);
    expect(errors).toEqual(['ERR_STREAM_WRITE_AFTER_END', 'ERR_STREAM_WRITE_AFTER_END']);
    // What a library patched before the gate was called with: each call's own arguments, no more.
    expect(earlier).toEqual([
      { method: 'write', args: 3 },
      { method: 'write', args: 2 },
      { method: 'write', args: 1 },
      { method: 'end', args: 2 },
      { method: 'write', args: 2 },
      { method: 'end', args: 1 },
    ]);

    earlier.length = 0;
    expect((await fetch(`${url}/bare`)).status).toBe(200);
    expect(earlier).toEqual([{ method: 'end', args: 0 }]);
  });

  it('goes through a library that patches OutgoingMessage.prototype after the gate was created', async () => {
    const later: Call[] = [];
    const undo = patchWrites(OutgoingMessage.prototype, later);
    try {
      const app = express();
      app.get('/free', (_req, res) => {
        res.write('a');
        res.end('b');
      });
      expect(await (await fetch(`${await serve(app)}/free`)).text()).toBe('ab');
      expect(later).toEqual([
        { method: 'write', args: 1 },
        { method: 'end', args: 1 },
      ]);
    } finally {
      undo();
    }
  });
});

describe('a metered response', () => {
  it('is metered once through a library patched before the gate and one that patches ServerResponse.prototype after it', async () => {
    const later: Call[] = [];
    const undo = patchWrites(ServerResponse.prototype, later);
    try {
      earlier.length = 0;
      const { text, tokens } = await gated(gate, plain);
      expect(text).toBe(BODY);
      expect(tokens).toBe(BODY_TOKENS);
      expect(later.map((call) => call.method)).toEqual(['write', 'end']);
      expect(earlier.map((call) => call.method)).toEqual(['write', 'end']);
    } finally {
      undo();
    }
  });

  it('is metered once through instance wrappers of the compression and on-headers kind, put on before or after the gate', async () => {
    for (const handlers of [
      [gzipping, timing, gate, plain],
      [gate, timing, gzipping, plain],
    ]) {
      const { text, tokens, headers } = await gated(...handlers);
      expect(headers.get('content-encoding')).toBe('gzip');
      expect(headers.get('x-response-time')).toMatch(/ms$/);
      expect(text).toBe(BODY);
      expect(tokens).toBe(BODY_TOKENS);
    }
  });

  it('is not charged for chunks written after its end, which never go out', async () => {
    const { text, tokens } = await gated(gate, (_req, res) => {
      res.on('error', () => undefined);
      res.setHeader('content-type', 'text/plain');
      res.end(BODY);
      res.write('more');
      res.end('more');
    });
    expect(text).toBe(BODY);
    expect(tokens).toBe(BODY_TOKENS);
  });
});

describe('a failure reading a metered response', () => {
  it('still sends every chunk, and charges what was reserved, counted as malformed usage, with an error logged', async () => {
    const json = usageBody(33);
    const before = (await unreadable('malformed')) ?? 0;
    const errorsBefore = logs.at(ERROR).length;
    const push = vi.spyOn(UsageTap.prototype, 'push').mockImplementationOnce(() => {
      throw new Error('a bug in the tap');
    });
    const written = await gated(gate, (_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.write(json.slice(0, 10));
      setImmediate(() => res.end(json.slice(10)));
    });
    push.mockImplementationOnce(() => {
      throw new Error('a bug in the tap');
    });
    const ended = await gated(gate, (_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.end(json);
    });

    expect([written.text, ended.text]).toEqual([json, json]);
    expect([written.tokens, ended.tokens]).toEqual([RESERVED, RESERVED]);
    expect(await unreadable('malformed')).toBe(before + 2);
    expect(logs.at(ERROR).slice(errorsBefore)).toMatchObject([
      { msg: 'reading usage failed: charging the reserved estimate', charged: RESERVED },
      { msg: 'reading usage failed: charging the reserved estimate', charged: RESERVED },
    ]);
  });

  it('charges the count of the usage header all the same: the body it failed to read does not matter then', async () => {
    vi.spyOn(UsageTap.prototype, 'push').mockImplementationOnce(() => {
      throw new Error('a bug in the tap');
    });
    const json = usageBody(33);
    const { text, tokens } = await gated(gate, (_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.setHeader('x-tokengate-usage', '77');
      res.end(json);
    });
    expect(text).toBe(json);
    expect(tokens).toBe(77);
  });

  it('of a compressed body, thrown where the body is decompressed, brings nothing down and charges what was reserved', async () => {
    vi.spyOn(JsonUsageReader.prototype, 'push').mockImplementation(() => {
      throw new Error('a bug in the reader');
    });
    const json = usageBody(33);
    const { text, tokens } = await gated(gate, (_req, res) => {
      res.setHeader('content-type', 'application/json');
      res.setHeader('content-encoding', 'gzip');
      res.end(gzipSync(json));
    });
    expect(text).toBe(json);
    expect(tokens).toBe(RESERVED);
  });
});

// Last: it loads a second copy of the modules.
describe('a second copy of tokengate in the process', () => {
  it('does not patch ServerResponse again, and meters through the one patch: each gate charges once', async () => {
    vi.resetModules();
    const copy = await import('../../middleware/gate.js');
    expect(copy.tokenGate).not.toBe(tokenGate);
    const { write, end } = ServerResponse.prototype;
    const other = copy.tokenGate({ storage: second, logger: quietLogger(), estimate: () => RESERVED });
    expect(ServerResponse.prototype.write).toBe(write);
    expect(ServerResponse.prototype.end).toBe(end);

    const key = 'tg-two-copies-0123456789abcdef';
    const expiresAt = Date.now() + 3600_000;
    const [a, b] = await Promise.all([storage, second].map((store) => store.createKey({ name: 'copies', key, tokenLimit: 1_000_000, expiresAt })));
    const app = express();
    app.use('/both', gate, other, plain);
    app.use('/copy', other, plain);
    const url = await serve(app);
    const ask = (path: string) => fetch(`${url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: REQUEST }).then((response) => response.text());

    expect(await ask('/both')).toBe(BODY);
    expect(await ask('/copy')).toBe(BODY);
    await Promise.all([gate.settled(), other.settled()]);
    expect((await storage.getKey(a!.record.id))?.totalLifetimeTokens).toBe(BODY_TOKENS);
    expect((await second.getKey(b!.record.id))?.totalLifetimeTokens).toBe(2 * BODY_TOKENS);
  });
});
