// Another connection holding SQLite's write lock for 3 s (a CLI command, a backup tool) stalls no request of the gate, and loses no record.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { createProxyApp } from '../../examples/express-proxy/app.js';
import { monitorStorage } from '../../src/ops/health.js';
import { createStorage } from '../../src/storage/create.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger } from '../helpers/gate.js';
import { tempDir } from '../helpers/temp.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const ROOT = join(import.meta.dirname, '../..');
const HOLD_MS = 3000;
const TOKENS = 7;

/** Takes the write lock (BEGIN IMMEDIATE), says so, holds it HOLD_MS without yielding it, then commits a write of its own. */
const HOLDER = `
const Database = require('better-sqlite3');
const db = new Database(process.argv[1]);
db.exec('BEGIN IMMEDIATE');
db.prepare("update api_keys set name = 'held' where 1 = 0").run();
process.stdout.write('locked\\n');
Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(process.argv[2]));
db.exec('COMMIT');
db.close();
process.stdout.write('released\\n');
`;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function serve(storage: Storage, upstream: Upstream): Promise<string> {
  const monitor = monitorStorage(storage);
  const { app } = createProxyApp({ storage, upstreamUrl: upstream.url, monitor, gate: { logger: quietLogger() } });
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  cleanups.push(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** Resolves when the child prints `expected` (its output keeps flowing afterwards). */
function lineFrom(child: ChildProcess, expected: string): Promise<void> {
  let seen = '';
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      seen += chunk.toString('utf8');
      if (seen.includes(`${expected}\n`)) resolve();
    });
    child.once('exit', () => reject(new Error(`the lock holder ended before "${expected}": ${seen}`)));
  });
}

describe('SQLite write lock held by another connection', () => {
  it(`does not stall the gate's event loop past 100 ms while it is held for ${HOLD_MS / 1000} s, and every served request is recorded after`, async () => {
    const dir = tempDir();
    const upstream = await startUpstream(json({ id: 'x', usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: TOKENS } }));
    cleanups.push(() => upstream.close());
    const storage = await createStorage({ databasePath: join(dir, 'tokengate.db'), logger: quietLogger() });
    cleanups.push(() => storage.close());
    const { key, record } = await storage.createKey({ name: 'busy', tokenLimit: 1_000_000_000, expiresAt: Date.now() + 86_400_000 });
    const url = await serve(storage, upstream);

    const holder = spawn(process.execPath, ['-e', HOLDER, join(dir, 'tokengate.db'), String(HOLD_MS)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    cleanups.push(() => void holder.kill('SIGKILL'));
    const exited = once(holder, 'exit');
    await lineFrom(holder, 'locked');

    const delay = monitorEventLoopDelay({ resolution: 5 });
    delay.enable();
    let longestGap = 0;
    let last = performance.now();
    const probe = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
    }, 5);
    let holding = true;
    void exited.then(() => (holding = false));

    let served = 0;
    const statuses = new Map<number, number>();
    const client = async () => {
      while (holding) {
        const response = await fetch(`${url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'm', messages: [] }),
        });
        await response.arrayBuffer();
        statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
        if (response.status === 200) served++;
      }
    };
    const health: number[] = [];
    const healthz = async () => {
      while (holding) {
        const started = performance.now();
        await (await fetch(`${url}/healthz`)).arrayBuffer();
        health.push(performance.now() - started);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    };
    await Promise.all([client(), client(), client(), client(), healthz()]);
    clearInterval(probe);
    delay.disable();
    expect((await exited)[0]).toBe(0);

    const stalls = { eventLoopMaxMs: delay.max / 1e6, longestTimerGapMs: longestGap, healthzMaxMs: Math.max(...health), statuses: Object.fromEntries(statuses) };
    expect(served, JSON.stringify(stalls)).toBeGreaterThan(20);
    expect(health.length).toBeGreaterThan(20);
    expect(stalls.eventLoopMaxMs, JSON.stringify(stalls)).toBeLessThan(100);
    expect(stalls.longestTimerGapMs, JSON.stringify(stalls)).toBeLessThan(100);
    expect(stalls.healthzMaxMs, JSON.stringify(stalls)).toBeLessThan(100);

    // Once the lock is released, every request that was served is charged: none was dropped.
    await expect
      .poll(async () => {
        const stored = await storage.getKey(record.id);
        return { requests: stored?.totalRequests, tokens: stored?.totalLifetimeTokens };
      }, { timeout: 10_000, interval: 50 })
      .toEqual({ requests: served, tokens: served * TOKENS });
  });
});
