// Crashes around the journal: SIGKILL while the database is down, and a replay cut off halfway.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import postgres from 'postgres';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectPostgres } from '../../src/db/postgres.js';
import { FileStorage } from '../../src/storage/file.js';
import { PostgresStorage } from '../../src/storage/postgres.js';
import { createStorage } from '../../src/storage/create.js';
import { quietLogger, tempDir } from '../helpers/gate.js';
import { startPostgres, type PostgresServer } from '../helpers/postgres.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

const SERVER = join(import.meta.dirname, '../../examples/express-proxy/server.js');
const journalLines = (dir: string): number =>
  readdirSync(dir)
    .filter((name) => name.startsWith('journal-'))
    .reduce((sum, name) => sum + readFileSync(join(dir, name), 'utf8').split('\n').filter(Boolean).length, 0);

describe('crashes', () => {
  let pg: PostgresServer;
  let upstream: Upstream;
  beforeAll(async () => {
    pg = await startPostgres();
    upstream = await startUpstream(json({ usage: { total_tokens: 9 } }));
  });
  afterAll(async () => {
    await upstream.close();
    await pg.close();
  });

  const totals = async (keyId: string) => {
    const sql = postgres(pg.url, { max: 1 });
    try {
      const [row] = await sql`select total_lifetime_tokens::int as tokens, total_requests::int as requests,
        (select coalesce(sum(tokens), 0)::int from usage_buckets where key_id = ${keyId}) as window from api_keys where id = ${keyId}`;
      return row;
    } finally {
      await sql.end();
    }
  };

  it('replays, exactly once, a journal left by a gate killed while the database was down', async () => {
    const setup = await createStorage({ databaseUrl: pg.url, fallbackDir: tempDir(), logger: quietLogger() });
    const { key, record } = await setup.createKey({ name: 'crash', tokenLimit: 1_000_000, expiresAt: Date.now() + 3600_000 });
    await setup.close();
    const dir = tempDir();
    const env = { ...process.env, UPSTREAM_URL: upstream.url, DATABASE_URL: pg.url, FALLBACK_DIR: dir, PORT: '0', LOG_LEVEL: 'silent', FALLBACK_TIMEOUT_MS: '1000' };
    const startGate = async (): Promise<{ child: ChildProcess; url: string }> => {
      const child = spawn(process.execPath, [SERVER], { env });
      const [line] = (await once(child.stdout!, 'data')) as [Buffer];
      return { child, url: `${/http:\/\/localhost:\d+/.exec(line.toString())![0]}/v1/chat/completions` };
    };
    const send = async (url: string, count: number) => {
      for (let i = 0; i < count; i++) {
        const response = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${key}` }, body: '{}' });
        expect(response.status).toBe(200);
        await response.text();
      }
    };

    let gate = await startGate();
    await send(gate.url, 3);
    await expect.poll(() => totals(record.id), { timeout: 5000 }).toMatchObject({ requests: 3 });
    await pg.stop();
    await send(gate.url, 5);
    // On disk, fsynced, before the kill. (More than 5 when a slow write timed out into the journal too.)
    await expect.poll(() => journalLines(dir), { timeout: 5000 }).toBeGreaterThanOrEqual(5);
    gate.child.kill('SIGKILL');
    await once(gate.child, 'exit');

    await pg.start();
    gate = await startGate();
    await expect.poll(() => totals(record.id), { timeout: 20_000, interval: 200 }).toEqual({ tokens: 72, requests: 8, window: 72 });
    await expect.poll(() => journalLines(dir), { timeout: 5000 }).toBe(0);
    gate.child.kill('SIGTERM');
    await once(gate.child, 'exit');

    gate = await startGate(); // a third start finds nothing left to replay
    await send(gate.url, 1);
    await expect.poll(() => totals(record.id), { timeout: 5000 }).toEqual({ tokens: 81, requests: 9, window: 81 });
    gate.child.kill('SIGTERM');
    await once(gate.child, 'exit');
  });

  it('counts nothing twice when a replay is cut off halfway and run again after a restart', async () => {
    const setup = await createStorage({ databaseUrl: pg.url, fallbackDir: tempDir(), logger: quietLogger() });
    const { record } = await setup.createKey({ name: 'replay', tokenLimit: 1_000_000, expiresAt: Date.now() + 3600_000 });
    await setup.close();
    const dir = tempDir();
    const logger = quietLogger();
    const journaling = FileStorage.open({ dir, role: 'fallback', logger });
    const now = Date.now();
    for (let i = 0; i < 10; i++) {
      await journaling.settle({ id: `r${i}`, keyId: record.id, tokens: 0, partial: false }, { id: `r${i}`, keyId: record.id, tokens: 100 + i, at: now });
    }
    await journaling.close();

    const database = new PostgresStorage(connectPostgres(pg.url));
    try {
      const first = FileStorage.open({ dir, role: 'fallback', logger });
      expect(first.journalLength).toBe(10);
      let applied = 0;
      const cutOff = first.replay(async (usage) => {
        if (applied === 4) throw new Error('killed mid-replay');
        await database.settle({ id: usage.id, keyId: usage.keyId, tokens: 0, partial: false }, usage);
        applied++;
        return 'taken';
      });
      await expect(cutOff).rejects.toThrow('killed mid-replay');
      expect(await totals(record.id)).toMatchObject({ requests: 4 });

      const restarted = FileStorage.open({ dir, role: 'fallback', logger }); // what a new process reads from disk
      expect(restarted.journalLength).toBe(10);
      expect(await restarted.replay(async (usage) => (await database.settle({ id: usage.id, keyId: usage.keyId, tokens: 0, partial: false }, usage), 'taken'))).toBe(10);
      expect(restarted.journalLength).toBe(0);
      const expected = Array.from({ length: 10 }, (_, i) => 100 + i).reduce((a, b) => a + b, 0);
      expect(await totals(record.id)).toEqual({ tokens: expected, requests: 10, window: expected });
      expect(journalLines(dir)).toBe(0);
      await restarted.close();
    } finally {
      await database.close();
    }
  });
});
