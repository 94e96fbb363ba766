// @ts-check
// `npm run bench`: the bare proxy, the gated one (SQLite, PostgreSQL, the sidecar, the file fallback)
// and the limiter users would write by hand with rate-limiter-flexible, under the same load in one
// run, in interleaved rounds, then the scale run; writes
// bench/results/latest.{json,md}. Options: see README's "Benchmark" and docs/benchmarks.md.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import postgres from 'postgres';
import { startPostgres } from '../test/helpers/pg-server.js';
import { drive, REQUEST } from './drive.js';
import { benchKeys } from './keys.js';
import { pinBenchmark, root, startProcess, unpinBenchmark } from './processes.js';
import { summarize, writeReport } from './report.js';
import { runScale } from './scale.js';

/** The groups of rows `--rows` can pick from (the bare proxy always runs: the ratios are to it). */
const ROW_GROUPS = ['sqlite', 'postgres', 'sidecar', 'fallback', 'peer', 'sse'];

const { values: args } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    rounds: { type: 'string', default: '5' },
    duration: { type: 'string', default: '3' },
    warmup: { type: 'string', default: '2' },
    connections: { type: 'string', default: '32' },
    'no-pin': { type: 'boolean', default: false },
    profile: { type: 'string' },
    baseline: { type: 'string' },
    rows: { type: 'string', default: ROW_GROUPS.join(',') },
    'no-scale': { type: 'boolean', default: false },
    out: { type: 'string', default: join(root, 'bench/results') },
  },
});
const smoke = args.smoke;
const wanted = new Set(args.rows.split(',').map((name) => name.trim()).filter((name) => name !== '' && name !== 'bare'));
for (const name of wanted) if (!ROW_GROUPS.includes(name)) throw new Error(`--rows: no row group ${JSON.stringify(name)}; the groups are bare (always run), ${ROW_GROUPS.join(', ')}`);
const want = (/** @type {string} */ name) => wanted.has(name);
const settings = {
  smoke,
  rounds: smoke ? 1 : positive('rounds'),
  seconds: positive('duration'),
  warmupSeconds: positive('warmup'),
  connections: positive('connections'),
  latencySeconds: 2,
};

/** @param {'rounds' | 'duration' | 'warmup' | 'connections'} name */
function positive(name) {
  const value = Number(args[name]);
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} must be a positive integer, not ${JSON.stringify(args[name])}`);
  return value;
}

/**
 * A warm-up, one round of saturating load, and the latency pass: one connection, one request at a
 * time, so that its latency is the time a request takes without any queueing (smoke: a few hundred
 * requests each).
 */
const loads = {
  warmup: smoke ? { amount: 50 } : { seconds: settings.warmupSeconds },
  round: { connections: settings.connections, ...(smoke ? { amount: 300 } : { seconds: settings.seconds }) },
  latency: { connections: 1, ...(smoke ? { amount: 100 } : { seconds: settings.latencySeconds }) },
};

/**
 * A new database on a PostgreSQL server of the benchmark.
 * @param {string} serverUrl
 */
async function freshDatabase(serverUrl) {
  const name = `tokengate_bench_${randomBytes(6).toString('hex')}`;
  const admin = postgres(serverUrl, { max: 1, onnotice: () => undefined });
  await admin.unsafe(`create database ${name}`);
  await admin.end();
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

// Every file store of the run lives under one directory, removed when the run ends, failed or not.
// (The PostgreSQL servers' data directories are their own: pg-server.js removes them on close.)
const runDir = mkdtempSync(join(tmpdir(), 'tokengate-bench-'));
let tempDirs = 0;
const tempDir = () => {
  const dir = join(runDir, String(++tempDirs));
  mkdirSync(dir);
  return dir;
};

/**
 * @param {import('./processes.js').BenchProcess} target
 * @param {string} expected
 */
async function expectBackend(target, expected) {
  const { backend } = /** @type {{ backend: string }} */ (await (await fetch(`${target.url}/bench/storage`)).json());
  if (backend !== expected) throw new Error(`the target decides on ${backend}, not ${expected}`);
}

/**
 * --baseline DIR: the gate of another checkout (built, with its node_modules), on SQLite and on
 * PostgreSQL, as rows of this run, so that a change is measured against the code before it under
 * the same load.
 * @param {(name: string, argv: string[], extra: Record<string, string>, cwd?: string) => Promise<import('./processes.js').BenchProcess>} start
 * @param {string} pgUrl
 */
async function baselineRows(start, pgUrl) {
  const dir = args.baseline;
  if (dir === undefined) return [];
  const base = resolve(dir);
  const sqlite = await start('baseline-sqlite', ['bench/target.js'], { DATABASE_PATH: join(tempDir(), 'baseline.db') }, base);
  await expectBackend(sqlite, 'sqlite');
  const postgres = await start('baseline-postgres', ['bench/target.js'], { DATABASE_URL: await freshDatabase(pgUrl), FALLBACK_DIR: tempDir() }, base);
  await expectBackend(postgres, 'postgres');
  return [
    { variant: 'gate, SQLite (baseline)', stream: false, target: sqlite },
    { variant: 'gate, PostgreSQL (baseline)', stream: false, target: postgres, database: true },
  ];
}

/**
 * The peer: bench/peer.js, rate-limiter-flexible's SQLite and PostgreSQL stores behind the same proxy,
 * asking the store on every request or reusing its answer for 2 s.
 * @param {(name: string, argv: string[], extra: Record<string, string>) => Promise<import('./processes.js').BenchProcess>} start
 * @param {string} pgUrl
 */
async function peerRows(start, pgUrl) {
  const rows = [];
  for (const reuse of [false, true]) {
    const argv = ['bench/peer.js', ...(reuse ? ['reuse'] : [])];
    const suffix = reuse ? ' (answer reused 2 s)' : '';
    const sqlite = await start(`peer-sqlite${reuse ? '-reuse' : ''}`, argv, { DATABASE_PATH: join(tempDir(), 'peer.db') });
    await expectBackend(sqlite, 'sqlite');
    const postgres = await start(`peer-postgres${reuse ? '-reuse' : ''}`, argv, { DATABASE_URL: await freshDatabase(pgUrl) });
    await expectBackend(postgres, 'postgres');
    rows.push({ variant: `rate-limiter-flexible, SQLite${suffix}`, stream: false, target: sqlite }, { variant: `rate-limiter-flexible, PostgreSQL${suffix}`, stream: false, target: postgres, database: true });
  }
  return rows;
}

async function main() {
  const pin = pinBenchmark(!args['no-pin']);
  const upstream = await startProcess(['bench/upstream.js'], {});
  const pg = await startPostgres();
  const doomed = await startPostgres(); // the fallback row's own server, stopped once its target is up
  /** @type {import('./processes.js').BenchProcess[]} */
  const targets = [];
  try {
    const env = { UPSTREAM_URL: upstream.url, LOG_LEVEL: 'warn' };
    // --profile DIR: each process under test writes DIR/<name>.cpuprofile when it stops.
    const start = async (/** @type {string} */ name, /** @type {string[]} */ argv, /** @type {Record<string, string>} */ extra, cwd = root) => {
      const profile = args.profile ? ['--cpu-prof', `--cpu-prof-dir=${args.profile}`, `--cpu-prof-name=${name}.cpuprofile`] : [];
      const target = await startProcess([...profile, ...argv], { ...env, ...extra }, pin.prefix, cwd);
      targets.push(target);
      return target;
    };
    const bare = await start('bare', ['bench/target.js', 'bare'], {});
    const sqlite = want('sqlite') || want('sse') ? await start('sqlite', ['bench/target.js'], { DATABASE_PATH: join(tempDir(), 'bench.db') }) : undefined;
    if (sqlite) await expectBackend(sqlite, 'sqlite');
    const pgTarget = want('postgres') ? await start('postgres', ['bench/target.js'], { DATABASE_URL: await freshDatabase(pg.url), FALLBACK_DIR: tempDir() }) : undefined;
    if (pgTarget) await expectBackend(pgTarget, 'postgres');
    let sidecar;
    if (want('sidecar') || want('sse')) {
      const sidecarDb = join(tempDir(), 'sidecar.db');
      execFileSync(process.execPath, ['bench/target.js', 'seed'], { cwd: root, env: { ...process.env, ...env, DATABASE_PATH: sidecarDb }, stdio: 'inherit' });
      sidecar = await start('sidecar', ['dist/src/cli/main.js', 'serve'], { DATABASE_PATH: sidecarDb, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'info', INCLUDE_STREAM_USAGE: 'false' });
    }
    let fallback;
    if (want('fallback')) {
      fallback = await start('fallback', ['bench/target.js'], { DATABASE_URL: await freshDatabase(doomed.url), FALLBACK_DIR: tempDir() });
      await doomed.stop();
      await fetch(`${fallback.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${benchKeys()[0]}`, 'content-type': 'application/json' }, body: REQUEST });
      await expectBackend(fallback, 'file');
    }

    // `database`: the row's store is the PostgreSQL server `pg`, whose CPU time is measured with the row's.
    /** @type {{ variant: string, stream: boolean, target: import('./processes.js').BenchProcess, database?: boolean }[]} */
    const rows = [
      { variant: 'bare proxy', stream: false, target: bare },
      ...(sqlite && want('sqlite') ? [{ variant: 'gate, SQLite', stream: false, target: sqlite }] : []),
      ...(pgTarget ? [{ variant: 'gate, PostgreSQL', stream: false, target: pgTarget, database: true }] : []),
      ...(sidecar && want('sidecar') ? [{ variant: 'sidecar, SQLite', stream: false, target: sidecar }] : []),
      ...(fallback ? [{ variant: 'gate, file fallback (PostgreSQL down)', stream: false, target: fallback }] : []),
      ...(await baselineRows(start, pg.url)),
      ...(want('peer') ? await peerRows(start, pg.url) : []),
      // The SSE rows compare the proxying and metering of a stream; the store's side is the JSON rows'.
      ...(sqlite && sidecar && want('sse')
        ? [
            { variant: 'bare proxy', stream: true, target: bare },
            { variant: 'gate, SQLite', stream: true, target: sqlite },
            { variant: 'sidecar, SQLite', stream: true, target: sidecar },
          ]
        : []),
    ];
    const label = (/** @type {typeof rows[number]} */ row) => `${row.variant} ${row.stream ? 'SSE' : 'JSON'}`;
    for (const row of rows) await drive(row.target, { stream: row.stream, connections: settings.connections, ...loads.warmup });
    /** @type {Map<typeof rows[number], Awaited<ReturnType<typeof drive>>[]>} */
    const rounds = new Map(rows.map((row) => [row, []]));
    for (let round = 1; round <= settings.rounds; round++) {
      for (const row of rows) {
        const measured = await drive(row.target, { stream: row.stream, ...loads.round }, row.database ? pg : undefined);
        rounds.get(row)?.push(measured);
        process.stderr.write(`round ${round}/${settings.rounds} ${label(row)}: ${measured.requestsPerSecond} req/s, ${measured.cpuUsPerRequest} µs CPU/request\n`);
      }
    }
    /** @type {Map<typeof rows[number], Awaited<ReturnType<typeof drive>>>} */
    const alone = new Map();
    for (const row of rows) {
      const measured = await drive(row.target, { stream: row.stream, ...loads.latency });
      alone.set(row, measured);
      process.stderr.write(`one connection ${label(row)}: p50 ${measured.p50Ms} ms, p99 ${measured.p99Ms} ms\n`);
    }
    const summary = summarize(
      rows.map((row) => ({
        variant: row.variant,
        response: row.stream ? 'SSE' : 'JSON',
        rounds: /** @type {Awaited<ReturnType<typeof drive>>[]} */ (rounds.get(row)),
        alone: /** @type {Awaited<ReturnType<typeof drive>>} */ (alone.get(row)),
        peakRssMiB: row.target.peakRssMiB(),
      })),
    );
    for (const target of targets.splice(0)) await target.stop();
    unpinBenchmark(pin);
    const scale = args['no-scale'] ? [] : await runScale({ databaseUrl: () => freshDatabase(pg.url), tempDir, keyCounts: smoke ? [1, 100] : [1, 10_000, 100_000], measureMs: smoke ? 200 : 1500, pastRecords: smoke ? 1000 : 1_000_000 });
    writeReport(args.out, { settings: { ...settings, pinned: pin.prefix.length > 0 }, proxy: summary, scale });
  } finally {
    for (const target of targets) await target.stop();
    await upstream.stop();
    await doomed.close();
    await pg.close();
    rmSync(runDir, { recursive: true, force: true });
  }
}

await main();
