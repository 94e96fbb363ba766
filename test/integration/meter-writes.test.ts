// The gate reads what a response writes through ServerResponse's write/end, patched once per
// process when a gate is created: responses it does not gate go through untouched, each gated
// response charges its own key, wrappers other middleware put on the instance, before or after the
// gate, still feed it, and two gates on one request both see it.
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type RequestHandler } from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tokenGate } from '../../middleware/gate.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDbPath } from '../helpers/gate.js';

const usageBody = (tokens: number) => JSON.stringify({ id: 'x', usage: { prompt_tokens: 1, completion_tokens: tokens - 1, total_tokens: tokens } });

/** Lets each caller on once `count` callers are waiting, so that their responses interleave. */
function barrier(count: number): () => Promise<void> {
  let arrived = 0;
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return () => {
    if (++arrived === count) open();
    return opened;
  };
}

/** Answers with usage of `tokens`, in two writes a turn of the event loop apart, after `wait`. */
const answer =
  (tokens: number, wait: () => Promise<void> = async () => undefined): RequestHandler =>
  (_req, res) => {
    void (async () => {
      await wait();
      res.setHeader('content-type', 'application/json');
      const body = usageBody(tokens);
      res.write(body.slice(0, 10));
      await new Promise((resolve) => setImmediate(resolve));
      res.end(body.slice(10));
    })();
  };

/** Wraps the instance's write/end the way compression or tracing middleware does, counting the bytes it saw. */
const instanceWrapper =
  (seen: { bytes: number }): RequestHandler =>
  (_req, res, next) => {
    const write = res.write;
    const end = res.end;
    res.write = function (this: typeof res, chunk: unknown, ...rest: unknown[]) {
      if (typeof chunk === 'string') seen.bytes += Buffer.byteLength(chunk);
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof res.write;
    res.end = function (this: typeof res, chunk?: unknown, ...rest: unknown[]) {
      if (typeof chunk === 'string') seen.bytes += Buffer.byteLength(chunk);
      return (end as (...args: unknown[]) => typeof res).call(this, chunk, ...rest);
    } as typeof res.end;
    next();
  };

async function listen(app: express.Express): Promise<{ url: string; server: Server }> {
  const server = await new Promise<Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

let storages: Storage[] = [];
const servers: Server[] = [];

beforeAll(async () => {
  storages = [await createStorage({ databasePath: tempDbPath(), logger: quietLogger() }), await createStorage({ databasePath: tempDbPath(), logger: quietLogger() })];
});
afterAll(async () => {
  for (const server of servers) {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
  for (const storage of storages) await storage.close();
});

describe('metering what responses write', () => {
  // First in this file: the wrapper put on before the gate keeps the write it found, so the gate must
  // have hooked the prototype before its first request, not at the first response it meters.
  it('reads the usage through instance wrappers put on before and after the gate, from the first request on', async () => {
    const [storage] = storages as [Storage];
    const gate = tokenGate({ storage, logger: quietLogger() });
    const before = { bytes: 0 };
    const after = { bytes: 0 };
    const app = express();
    app.use('/v1', instanceWrapper(before), gate, instanceWrapper(after), answer(33));
    const { url, server } = await listen(app);
    servers.push(server);
    const { record, key } = await storage.createKey({ name: 'w', tokenLimit: 100_000, expiresAt: Date.now() + 3600_000 });

    const response = await fetch(`${url}/v1/chat`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}' });
    expect(await response.text()).toBe(usageBody(33));
    await gate.settled();

    expect(before.bytes).toBe(Buffer.byteLength(usageBody(33)));
    expect(after.bytes).toBe(Buffer.byteLength(usageBody(33)));
    expect((await storage.getKey(record.id))?.totalLifetimeTokens).toBe(33);
  });

  it('leaves responses it does not gate untouched and charges each gated one to its own key, also in two apps at once', async () => {
    const [first, second] = storages as [Storage, Storage];
    const gates = [tokenGate({ storage: first, logger: quietLogger() }), tokenGate({ storage: second, logger: quietLogger() })];
    // All five requests are admitted (or not gated) before any of them writes.
    const wait = barrier(5);
    const apps = gates.map((gate, i) => {
      const app = express();
      app.get('/free', answer(1000, wait));
      app.use('/v1', gate, answer(i === 0 ? 11 : 22, wait));
      return app;
    });
    const [one, two] = await Promise.all(apps.map(listen));
    servers.push(one!.server, two!.server);
    const keys = await Promise.all(storages.map((storage) => storage.createKey({ name: 'm', tokenLimit: 100_000, expiresAt: Date.now() + 3600_000 })));
    const gated = (url: string, key: string) => fetch(`${url}/v1/chat`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}' });

    const responses = await Promise.all([
      gated(one!.url, keys[0]!.key),
      fetch(`${one!.url}/free`),
      gated(two!.url, keys[1]!.key),
      gated(one!.url, keys[0]!.key),
      fetch(`${two!.url}/free`),
    ]);
    const bodies = await Promise.all(responses.map((response) => response.text()));
    expect(responses.map((response) => response.status)).toEqual([200, 200, 200, 200, 200]);
    expect(bodies).toEqual([usageBody(11), usageBody(1000), usageBody(22), usageBody(11), usageBody(1000)]);
    await Promise.all(gates.map((gate) => gate.settled()));

    const [a, b] = await Promise.all([first.getKey(keys[0]!.record.id), second.getKey(keys[1]!.record.id)]);
    expect([a?.totalRequests, a?.totalLifetimeTokens]).toEqual([2, 22]);
    expect([b?.totalRequests, b?.totalLifetimeTokens]).toEqual([1, 22]);
  });

  it('lets two gates on one request each charge their own store', async () => {
    const [first, second] = storages as [Storage, Storage];
    const key = 'tg-two-gates-0123456789abcdef';
    const expiresAt = Date.now() + 3600_000;
    const [a, b] = await Promise.all(storages.map((storage) => storage.createKey({ name: 'two', key, tokenLimit: 100_000, expiresAt })));
    const gates = [tokenGate({ storage: first, logger: quietLogger() }), tokenGate({ storage: second, logger: quietLogger() })];
    const app = express();
    app.use('/v1', gates[0]!, gates[1]!, answer(44));
    const { url, server } = await listen(app);
    servers.push(server);

    const response = await fetch(`${url}/v1/chat`, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{"max_tokens":5}' });
    expect(await response.text()).toBe(usageBody(44));
    await Promise.all(gates.map((gate) => gate.settled()));

    expect((await first.getKey(a!.record.id))?.totalLifetimeTokens).toBe(44);
    expect((await second.getKey(b!.record.id))?.totalLifetimeTokens).toBe(44);
  });
});
