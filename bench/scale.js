// @ts-check
// The scale run: lookup, admission and recording on one hot key among 1, 10^4 and 10^5 keys, with an
// empty history and with 5 hours of dense minute buckets, straight against each store.
import { randomUUID } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import postgres from 'postgres';
import { createLogger, createStorage } from 'tokengate';
import { digestKey } from '../dist/src/keys/secret.js';

const WINDOW_MS = 5 * 3600_000;
const MINUTE = 60_000;
const HOT_KEY = 'tg-bench-hot-key';
const CONCURRENCY = 8;

/**
 * @param {{ databaseUrl: () => Promise<string>, keyCounts: number[], measureMs: number }} options
 */
export async function runScale({ databaseUrl, keyCounts, measureMs }) {
  const rows = [];
  for (const backend of ['sqlite', 'postgres']) {
    for (const keys of keyCounts) {
      for (const history of ['empty', 'dense']) {
        const store = backend === 'sqlite' ? await sqliteStore() : await postgresStore(await databaseUrl());
        try {
          await store.fill(keys, history === 'dense');
          rows.push({ backend, keys, history, ...(await measure(store.storage, measureMs)) });
        } finally {
          await store.close();
        }
      }
    }
  }
  return rows;
}

const logger = () => {
  const log = createLogger();
  log.level = 'warn';
  return log;
};

/**
 * Keys and buckets are written straight to the tables: 10^5 keys through createKey() would take minutes.
 * @param {number} now
 */
function hotKeyRow(now) {
  return { id: 'key_hot', hash: digestKey(HOT_KEY), now };
}

async function sqliteStore() {
  const path = join(mkdtempSync(join(tmpdir(), 'tokengate-bench-')), 'scale.db');
  const storage = await createStorage({ databasePath: path, logger: logger() });
  return {
    storage,
    /** @param {number} keys @param {boolean} dense */
    async fill(keys, dense) {
      const db = new Database(path);
      const now = Date.now();
      const hot = hotKeyRow(now);
      const insertKey = db.prepare(
        'insert into api_keys (id, key_hash, key_prefix, name, token_limit_per_5h, expiry_date, created_at) values (?, ?, ?, ?, ?, ?, ?)',
      );
      const insertBucket = db.prepare('insert into usage_buckets (key_id, bucket_start, tokens) values (?, ?, ?)');
      db.transaction(() => {
        insertKey.run(hot.id, hot.hash, 'tg-bench', 'hot', 1e12, now + 24 * 3600_000, now);
        for (let i = 1; i < keys; i++) insertKey.run(`key_${i}`, digestKey(`tg-bench-filler-${i}`), 'tg-bench', 'filler', 1e12, now + 24 * 3600_000, now);
        if (dense) for (let m = 1; m < WINDOW_MS / MINUTE; m++) insertBucket.run(hot.id, Math.floor(now / MINUTE) * MINUTE - m * MINUTE, 10);
      })();
      db.close();
    },
    close: () => storage.close(),
  };
}

/** @param {string} url */
async function postgresStore(url) {
  const storage = await createStorage({ databaseUrl: url, fallback: false, logger: logger() });
  return {
    storage,
    /** @param {number} keys @param {boolean} dense */
    async fill(keys, dense) {
      const sql = postgres(url, { max: 1, onnotice: () => undefined });
      const now = Date.now();
      const hot = hotKeyRow(now);
      const expires = now + 24 * 3600_000;
      await sql`insert into api_keys (id, key_hash, key_prefix, name, token_limit_per_5h, expiry_date, created_at)
                values (${hot.id}, ${hot.hash}, 'tg-bench', 'hot', ${1e12}, ${expires}, ${now})`;
      await sql`insert into api_keys (id, key_hash, key_prefix, name, token_limit_per_5h, expiry_date, created_at)
                select 'key_' || g, encode(sha256(('tg-bench-filler-' || g)::bytea), 'hex'), 'tg-bench', 'filler', ${1e12}, ${expires}, ${now}
                from generate_series(1, ${keys - 1}) g`;
      if (dense) {
        await sql`insert into usage_buckets (key_id, bucket_start, tokens)
                  select ${hot.id}, ${Math.floor(now / MINUTE) * MINUTE}::bigint - m * ${MINUTE}::bigint, 10 from generate_series(1, ${WINDOW_MS / MINUTE - 1}) m`;
      }
      await sql.end();
    },
    close: () => storage.close(),
  };
}

/**
 * Lookup → admit → settle cycles on the hot key from CONCURRENCY loops for `ms`: the mean time of each
 * step, and cycles per second.
 * @param {import('tokengate').Storage} storage
 * @param {number} ms
 */
async function measure(storage, ms) {
  const digest = digestKey(HOT_KEY);
  const spent = { lookup: 0n, admit: 0n, settle: 0n };
  let cycles = 0;
  const deadline = Date.now() + ms;
  const loop = async () => {
    while (Date.now() < deadline) {
      let t = process.hrtime.bigint();
      const key = await storage.findKeyByDigest(digest);
      if (!key) throw new Error('the hot key is missing');
      spent.lookup += process.hrtime.bigint() - t;
      t = process.hrtime.bigint();
      const admission = await storage.admit({ keyId: key.id, tokenLimit: key.tokenLimit, estimate: 10, requestId: randomUUID(), now: Date.now(), windowMs: WINDOW_MS });
      spent.admit += process.hrtime.bigint() - t;
      if (!admission.admitted) throw new Error('the hot key was refused');
      t = process.hrtime.bigint();
      await storage.settle(admission.reservation, { id: admission.reservation.id, keyId: key.id, tokens: 10, at: Date.now() });
      spent.settle += process.hrtime.bigint() - t;
      cycles++;
    }
  };
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: CONCURRENCY }, loop));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const meanUs = (/** @type {bigint} */ total) => Math.round(Number(total) / 1000 / Math.max(1, cycles));
  return { cyclesPerSecond: Math.round(cycles / seconds), lookupUs: meanUs(spent.lookup), admitUs: meanUs(spent.admit), settleUs: meanUs(spent.settle) };
}
