// @ts-check
// The scale run: lookup, admission and recording on one hot key among 1, 10^4 and 10^5 keys, with an
// empty history and with a dense one (5 hours of minute buckets, and 10^6 earlier usage records),
// straight against each store; also a hot key with a 5-hour and a 7-day limit and a dense history in
// both (a week of its 30-minute buckets).
import { join } from 'node:path';
import Database from 'better-sqlite3';
import postgres from 'postgres';
import { createLogger, createStorage } from 'tokengate';
import { digestKey } from '../dist/src/keys/secret.js';
import { newRecordId } from '../dist/src/usage/record-id.js';
import { limitsOf } from '../dist/src/keys/limits.js';

const WINDOW_MS = 5 * 3600_000;
const MINUTE = 60_000;
const HOT_KEY = 'tg-bench-hot-key';
const WEEK_MS = 7 * 24 * 3600_000;
/** The width of a 7-day limit's buckets. */
const WEEK_BUCKET_MS = 30 * MINUTE;
const PLAN_LIMITS = JSON.stringify([
  { name: '5h', window: '5h', tokens: 1e12 },
  { name: '7d', window: '7d', tokens: 1e12 },
]);
/** Requests ending at once in the recording measurement. */
const RECORDING_LOOPS = 32;

/**
 * @param {{ databaseUrl: () => Promise<string>, tempDir: () => string, keyCounts: number[], measureMs: number, pastRecords: number }} options
 */
export async function runScale({ databaseUrl, tempDir, keyCounts, measureMs, pastRecords }) {
  const rows = [];
  for (const backend of ['sqlite', 'postgres']) {
    for (const keys of keyCounts) {
      for (const history of ['empty', 'dense', 'plan']) {
        const store = backend === 'sqlite' ? await sqliteStore(tempDir()) : await postgresStore(await databaseUrl());
        const past = history === 'empty' ? 0 : pastRecords;
        try {
          await store.fill(keys, past, history === 'plan');
          rows.push({ backend, keys, history, pastRecords: past, ...(await measure(store.storage, measureMs)) });
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
 * Keys, buckets and past records are written straight to the tables: 10^5 keys through createKey()
 * would take minutes. Past records carry ids like the gate's (UUIDv7, one per millisecond before now).
 * @param {number} now
 */
function hotKeyRow(now) {
  return { id: 'key_hot', hash: digestKey(HOT_KEY), now };
}

/** @param {string} dir */
async function sqliteStore(dir) {
  const path = join(dir, 'scale.db');
  const storage = await createStorage({ databasePath: path, logger: logger() });
  return {
    storage,
    /** @param {number} keys @param {number} pastRecords with 5 h of buckets when above 0 @param {boolean} plan the hot key has a 5 h and a 7 d limit */
    async fill(keys, pastRecords, plan) {
      const dense = pastRecords > 0;
      const db = new Database(path);
      const now = Date.now();
      const hot = hotKeyRow(now);
      const insertKey = db.prepare(
        'insert into api_keys (id, key_hash, key_prefix, name, token_limit_per_5h, expiry_date, created_at) values (?, ?, ?, ?, ?, ?, ?)',
      );
      const insertBucket = db.prepare("insert into usage_buckets (key_id, limit_name, bucket_start, tokens) values (?, ?, ?, ?)");
      db.transaction(() => {
        insertKey.run(hot.id, hot.hash, 'tg-bench', 'hot', 1e12, now + 24 * 3600_000, now);
        for (let i = 1; i < keys; i++) insertKey.run(`key_${i}`, digestKey(`tg-bench-filler-${i}`), 'tg-bench', 'filler', 1e12, now + 24 * 3600_000, now);
        if (dense) for (let m = 1; m < WINDOW_MS / MINUTE; m++) insertBucket.run(hot.id, '5h', Math.floor(now / MINUTE) * MINUTE - m * MINUTE, 10);
        if (plan) {
          db.prepare('update api_keys set limits = ? where id = ?').run(PLAN_LIMITS, hot.id);
          for (let b = 1; b < WEEK_MS / WEEK_BUCKET_MS; b++) insertBucket.run(hot.id, '7d', Math.floor(now / WEEK_BUCKET_MS) * WEEK_BUCKET_MS - b * WEEK_BUCKET_MS, 10);
        }
      })();
      if (dense) {
        db.prepare(
          `with recursive n(i) as (select 1 union all select i + 1 from n where i < ?)
           insert into usage_records (id, key_id, tokens, recorded_at)
           select printf('%08x-%04x-7000-8000-%012x', (? - i) / 65536, (? - i) % 65536, i), ?, 10, ? - i from n`,
        ).run(pastRecords, now, now, hot.id, now);
      }
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
    /** @param {number} keys @param {number} pastRecords with 5 h of buckets when above 0 @param {boolean} plan the hot key has a 5 h and a 7 d limit */
    async fill(keys, pastRecords, plan) {
      const dense = pastRecords > 0;
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
        await sql`insert into usage_records (id, key_id, tokens, recorded_at)
                  select lpad(to_hex((${now}::bigint - i) / 65536), 8, '0') || '-' || lpad(to_hex((${now}::bigint - i) % 65536), 4, '0')
                         || '-7000-8000-' || lpad(to_hex(i), 12, '0'), ${hot.id}, 10, ${now}::bigint - i
                  from generate_series(1, ${pastRecords}) i`;
      }
      if (plan) {
        await sql`update api_keys set limits = ${PLAN_LIMITS} where id = ${hot.id}`;
        await sql`insert into usage_buckets (key_id, limit_name, bucket_start, tokens)
                  select ${hot.id}, '7d', ${Math.floor(now / WEEK_BUCKET_MS) * WEEK_BUCKET_MS}::bigint - b * ${WEEK_BUCKET_MS}::bigint, 10 from generate_series(1, ${WEEK_MS / WEEK_BUCKET_MS - 1}) b`;
      }
      await sql.end();
    },
    close: () => storage.close(),
  };
}

/**
 * The hot key's two costs, each measured after a short warm-up: a decision (digest, lookup, admit,
 * then release, one at a time, so its mean time is the decision's own), and recording (admit then
 * settle from RECORDING_LOOPS concurrent loops, as many requests ending at once: records per second).
 * @param {import('tokengate').Storage} storage
 * @param {number} ms
 */
async function measure(storage, ms) {
  const admitOnce = async () => {
    const key = await storage.findKeyByDigest(digestKey(HOT_KEY));
    if (!key) throw new Error('the hot key is missing');
    const limits = key.limits == null ? {} : { limits: limitsOf(key, WINDOW_MS) };
    const admission = await storage.admit({ keyId: key.id, tokenLimit: key.tokenLimit, estimate: 10, requestId: newRecordId(), now: Date.now(), windowMs: WINDOW_MS, ...limits });
    if (!admission.admitted) throw new Error('the hot key was refused');
    return { key, reservation: admission.reservation };
  };
  const decide = async () => {
    const { reservation } = await admitOnce();
    await storage.release(reservation);
  };
  const record = async () => {
    const { key, reservation } = await admitOnce();
    await storage.settle(reservation, { id: reservation.id, keyId: key.id, tokens: 10, at: Date.now() });
  };
  await repeat(decide, 1, Math.min(200, ms / 4));
  const decisions = await repeat(decide, 1, ms / 2);
  await repeat(record, RECORDING_LOOPS, Math.min(200, ms / 4));
  const records = await repeat(record, RECORDING_LOOPS, ms / 2);
  return { decisionsPerSecond: Math.round(decisions.perSecond), decisionUs: Number(decisions.meanUs.toFixed(1)), recordsPerSecond: Math.round(records.perSecond) };
}

/**
 * Runs `step` from `loops` concurrent loops for `ms`.
 * @param {() => Promise<void>} step
 * @param {number} loops
 * @param {number} ms
 */
async function repeat(step, loops, ms) {
  let count = 0;
  const started = process.hrtime.bigint();
  const deadline = Date.now() + ms;
  await Promise.all(
    Array.from({ length: loops }, async () => {
      while (Date.now() < deadline) {
        await step();
        count++;
      }
    }),
  );
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return { perSecond: count / seconds, meanUs: (seconds * 1e6 * loops) / Math.max(1, count) };
}
