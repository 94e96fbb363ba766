// The file fallback at its edges: a database host that no longer resolves, reservations given back
// during an outage, an admission committed as the database went away, and a slow snapshot refresh.
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { digestKey } from '../../src/keys/secret.js';
import { createStorage } from '../../src/storage/create.js';
import type { FallbackStorage } from '../../src/storage/fallback.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger, tempDir } from '../helpers/gate.js';
import { freshDatabase, startPostgres, type PostgresServer } from '../helpers/postgres.js';

const HOUR = 3600_000;
const WINDOW = 5 * HOUR;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('a database host that cannot be resolved', () => {
  it('counts as an outage: a gate starting then decides known keys from the snapshot', async () => {
    const url = await freshDatabase();
    const fallbackDir = tempDir();
    const first = await createStorage({ databaseUrl: url, fallbackDir, logger: quietLogger() });
    const { key, record } = await first.createKey({ name: 'dns', tokenLimit: 1000, expiresAt: Date.now() + HOUR });
    await first.close();

    const unresolvable = new URL(url);
    unresolvable.hostname = 'tokengate-db.invalid';
    const storage = await createStorage({ databaseUrl: unresolvable.toString(), fallbackDir, logger: quietLogger(), connectTimeoutSeconds: 1 });
    try {
      expect(storage.health().mode).toBe('fallback');
      expect(storage.health().lastFailure?.message).toMatch(/ENOTFOUND|EAI_AGAIN/);
      expect((await storage.findKeyByDigest(digestKey(key)))?.id).toBe(record.id);
      const admission = await storage.admit({ keyId: record.id, tokenLimit: 1000, estimate: 10, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW });
      expect(admission.admitted).toBe(true);
    } finally {
      await storage.close();
    }
  });
});

describe('a reservation given back while the database is down', () => {
  let pg: PostgresServer;
  let storage: Storage;

  beforeAll(async () => {
    pg = await startPostgres();
    storage = await createStorage({ databaseUrl: pg.url, fallbackDir: tempDir(), fallbackTimeoutMs: 1000, connectTimeoutSeconds: 2, logger: quietLogger() });
  });
  afterAll(async () => {
    await storage.close();
    await pg.close();
  });

  it('is deleted from the database when it is back, instead of holding the tokens until the reservation expires', async () => {
    const { record } = await storage.createKey({ name: 'aborted', tokenLimit: 1000, expiresAt: Date.now() + HOUR });
    const admission = await storage.admit({ keyId: record.id, tokenLimit: 1000, estimate: 900, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW });
    if (!admission.admitted) throw new Error('expected an admission');
    expect((await storage.windowUsage(record.id, Date.now(), WINDOW)).reserved).toBe(900);

    await pg.stop();
    await storage.release(admission.reservation); // the client went away before any byte
    expect(storage.health().mode).toBe('fallback');
    await pg.start();

    await expect.poll(() => storage.health().mode, { timeout: 20_000, interval: 100 }).toBe('primary');
    const direct = postgres(pg.url, { max: 1, onnotice: () => undefined });
    try {
      expect(await direct`select id from reservations`).toEqual([]);
    } finally {
      await direct.end();
    }
    expect(await storage.windowUsage(record.id, Date.now(), WINDOW)).toMatchObject({ used: 0, reserved: 0 });
  });
});

/**
 * A TCP relay to PostgreSQL that can lose a commit's answer: once armed, the first COMMIT goes to the
 * server but its reply never comes back, and every connection is cut until restore() (an outage that
 * began between the server committing and the client hearing of it).
 */
async function commitLosingRelay(target: string): Promise<{ url: string; arm: () => void; restore: () => void; close: () => Promise<void> }> {
  const upstream = new URL(target);
  const clients = new Set<net.Socket>();
  let armed = false;
  let down = false;
  const relay = net.createServer((client) => {
    clients.add(client);
    const server = net.connect(Number(upstream.port), upstream.hostname);
    client.on('data', (chunk: Buffer) => {
      server.write(chunk);
      if (!armed || !/commit/i.test(chunk.toString('latin1'))) return;
      armed = false;
      down = true;
      relay.close(); // refused, as a stopped server's port is
      for (const socket of clients) socket.destroy(); // the server still reads the COMMIT (ended after it) and commits
    });
    server.on('data', (chunk: Buffer) => void (down || client.write(chunk)));
    client.on('close', () => (clients.delete(client), server.end()));
    server.on('close', () => client.destroy());
    client.on('error', () => undefined);
    server.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  const { port } = relay.address() as AddressInfo;
  const url = new URL(target);
  url.port = String(port);
  return {
    url: url.toString(),
    arm: () => (armed = true),
    restore: () => {
      down = false;
      relay.listen(port, '127.0.0.1');
    },
    close: () => new Promise((resolve) => relay.close(() => resolve())),
  };
}

describe('an admission the database committed as it went away', () => {
  it('has its reservation deleted there when the database is back, though the answer never came', async () => {
    const url = await freshDatabase();
    const relay = await commitLosingRelay(url);
    const storage = await createStorage({ databaseUrl: relay.url, fallbackDir: tempDir(), fallbackTimeoutMs: 1000, connectTimeoutSeconds: 2, logger: quietLogger() });
    const direct = postgres(url, { max: 1, onnotice: () => undefined });
    try {
      // 600 of 1000 is too near the limit for a lease: the request gets a reservation row of its own.
      const { record } = await storage.createKey({ name: 'unanswered', tokenLimit: 1000, expiresAt: Date.now() + HOUR });
      relay.arm();
      const admission = await storage.admit({ keyId: record.id, tokenLimit: 1000, estimate: 600, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW });
      if (!admission.admitted) throw new Error('expected an admission');
      expect(storage.health().mode).toBe('fallback'); // decided by the files
      expect(await direct`select id from reservations where id = ${admission.reservation.id}`).toHaveLength(1);
      await storage.release(admission.reservation); // the client went away before any byte

      relay.restore();
      await expect.poll(() => storage.health().mode, { timeout: 20_000, interval: 100 }).toBe('primary');
      expect(await direct`select id from reservations where not starts_with(id, 'lease:')`).toEqual([]);
      expect(await storage.windowUsage(record.id, Date.now(), WINDOW)).toMatchObject({ used: 0, reserved: 0 });
    } finally {
      await direct.end();
      await storage.close();
      await relay.close();
    }
  });
});

describe('a snapshot refresh slower than a request may wait', () => {
  it('finishes, and does not switch the gate to the file store', async () => {
    const url = await freshDatabase();
    const storage = (await createStorage({ databaseUrl: url, fallbackDir: tempDir(), fallbackTimeoutMs: 200, logger: quietLogger() })) as FallbackStorage;
    const blocker = postgres(url, { max: 1, onnotice: () => undefined });
    try {
      await storage.createKey({ name: 'slow', tokenLimit: 1000, expiresAt: Date.now() + HOUR });
      let locked!: () => void;
      const lockTaken = new Promise<void>((resolve) => (locked = resolve));
      const holding = blocker.begin(async (tx) => {
        await tx`lock table api_keys in access exclusive mode`;
        locked();
        await sleep(1000);
      });
      await lockTaken;
      await storage.refreshSnapshot();
      await holding;
      expect(storage.health()).toMatchObject({ mode: 'primary', lastFailure: null });
    } finally {
      await blocker.end();
      await storage.close();
    }
  });
});
