// @ts-check
// The limiter an Express user would write by hand instead of tokengate, as a bench target: keys in
// a table of the same store (found by SHA-256 digest, each answer cached 5 s as tokengate's key cache
// does), rate-limiter-flexible's counter over the same 5-hour window (`get` before the request is
// proxied, `penalty(tokens)` once the response has ended, the tokens read from the JSON body's
// `usage`), the same proxy. On SQLite (DATABASE_PATH) or PostgreSQL (DATABASE_URL).
// `node bench/peer.js reuse`: a key's `get` answer is reused for 2 s, moved by this process's own
// penalties (what tokengate's PostgreSQL lease does). Prints {"port"} like bench/target.js.
import { createHash } from 'node:crypto';
import Database from 'better-sqlite3';
import express from 'express';
import pg from 'pg';
import { RateLimiterPostgres, RateLimiterSQLite } from 'rate-limiter-flexible';
import { createLogger, proxy } from 'tokengate';
import { benchKeys } from './keys.js';

const reuse = process.argv[2] === 'reuse';
const upstreamUrl = /** @type {string} */ (process.env.UPSTREAM_URL);
const WINDOW_SECONDS = 5 * 3600;
const KEY_CACHE_MS = 5000;
const REUSE_MS = 2000;

/** @typedef {{ tokenLimit: number, expiresAt: number }} PeerKey */

/** The store: its key lookup, its rate-limiter-flexible limiter, and how to close it. */
async function openStore() {
  const seed = benchKeys().map((key) => [digest(key), 1e12, Date.now() + 24 * 3600_000]);
  if (process.env.DATABASE_URL) {
    const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
    await pool.query('create table if not exists peer_keys (digest text primary key, token_limit bigint not null, expires_at bigint not null)');
    for (const row of seed) await pool.query('insert into peer_keys values ($1, $2, $3) on conflict do nothing', row);
    const limiter = await new Promise((resolve, reject) => {
      const created = new RateLimiterPostgres({ storeClient: pool, storeType: 'pool', tableName: 'peer_usage', points: 1e12, duration: WINDOW_SECONDS }, (/** @type {unknown} */ error) => (error ? reject(error) : resolve(created)));
    });
    /** @param {string} hash @returns {Promise<PeerKey | undefined>} */
    const findKey = async (hash) => {
      const { rows } = await pool.query('select token_limit, expires_at from peer_keys where digest = $1', [hash]);
      return rows[0] && { tokenLimit: Number(rows[0].token_limit), expiresAt: Number(rows[0].expires_at) };
    };
    return { backend: 'postgres', findKey, limiter: /** @type {RateLimiterPostgres} */ (limiter), close: () => pool.end() };
  }
  const db = new Database(/** @type {string} */ (process.env.DATABASE_PATH));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec('create table if not exists peer_keys (digest text primary key, token_limit integer not null, expires_at integer not null)');
  const insert = db.prepare('insert or ignore into peer_keys values (?, ?, ?)');
  for (const row of seed) insert.run(...row);
  const byDigest = db.prepare('select token_limit as tokenLimit, expires_at as expiresAt from peer_keys where digest = ?');
  const limiter = new RateLimiterSQLite({ storeClient: db, storeType: 'better-sqlite3', tableName: 'peer_usage', points: 1e12, duration: WINDOW_SECONDS });
  /** @param {string} hash */
  const findKey = async (hash) => /** @type {PeerKey | undefined} */ (byDigest.get(hash));
  return { backend: 'sqlite', findKey, limiter, close: async () => db.close() };
}

/** @param {string} key */
function digest(key) {
  return createHash('sha256').update(key).digest('hex');
}

const store = await openStore();
/** @type {Map<string, { key: PeerKey | undefined, at: number }>} */
const keyCache = new Map();
/** @type {Map<string, { consumed: number, at: number }>} */
const answers = new Map();

/** @param {string} hash */
async function cachedKey(hash) {
  const cached = keyCache.get(hash);
  if (cached && Date.now() - cached.at < KEY_CACHE_MS) return cached.key;
  const key = await store.findKey(hash);
  keyCache.set(hash, { key, at: Date.now() });
  return key;
}

/** Tokens the key has used in its window: the store's answer, or the last one within 2 s when reusing. */
async function consumed(/** @type {string} */ hash) {
  const last = reuse ? answers.get(hash) : undefined;
  if (last && Date.now() - last.at < REUSE_MS) return last.consumed;
  const answer = await store.limiter.get(hash);
  const used = answer?.consumedPoints ?? 0;
  if (reuse) answers.set(hash, { consumed: used, at: Date.now() });
  return used;
}

/** @type {import('express').RequestHandler} */
const limit = (req, res, next) => {
  const header = req.headers.authorization;
  if (!header?.startsWith('Bearer ')) return void res.status(401).json({ error: { message: 'missing key' } });
  const hash = digest(header.slice(7));
  void (async () => {
    const key = await cachedKey(hash);
    if (!key || key.expiresAt <= Date.now()) return void res.status(401).json({ error: { message: 'invalid key' } });
    const used = await consumed(hash);
    if (used >= key.tokenLimit) return void res.status(429).json({ error: { message: 'token limit reached' } });
    res.setHeader('x-ratelimit-remaining-tokens', String(key.tokenLimit - used));
    // The response body, kept to read its usage once it has ended.
    /** @type {Buffer[]} */
    const chunks = [];
    const write = res.write.bind(res);
    const end = res.end.bind(res);
    const keep = (/** @type {unknown} */ chunk) => {
      if (typeof chunk === 'string') chunks.push(Buffer.from(chunk));
      else if (chunk instanceof Uint8Array) chunks.push(Buffer.from(chunk));
    };
    res.write = /** @type {typeof res.write} */ ((/** @type {any} */ chunk, /** @type {any[]} */ ...rest) => (keep(chunk), write(chunk, ...rest)));
    res.end = /** @type {typeof res.end} */ ((/** @type {any} */ chunk, /** @type {any[]} */ ...rest) => (keep(chunk), end(chunk, ...rest)));
    res.once('finish', () => {
      let tokens = 0;
      try {
        tokens = Number(JSON.parse(Buffer.concat(chunks).toString('utf8'))?.usage?.total_tokens) || 0;
      } catch {
        // not JSON: nothing to charge
      }
      if (tokens <= 0) return;
      const last = answers.get(hash);
      if (last) last.consumed += tokens;
      store.limiter.penalty(hash, tokens).catch(() => undefined);
    });
    next();
  })().catch(next);
};

const logger = createLogger();
logger.level = 'warn';
const app = express();
app.use('/v1', limit, proxy({ target: upstreamUrl, logger }));
app.get('/bench/storage', (_req, res) => void res.json({ backend: store.backend }));
const server = app.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: /** @type {import('node:net').AddressInfo} */ (server.address()).port })}\n`);
});
process.on('SIGTERM', () => {
  server.closeAllConnections();
  server.close(() => void store.close().then(() => process.exit(0)));
});
