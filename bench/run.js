// @ts-check
// `npm run bench`: the bare proxy and the gated one (SQLite, PostgreSQL, the file fallback) under the
// same load in one run, then the scale run; writes bench/results/latest.{json,md}.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import postgres from 'postgres';
import { startPostgres } from '../test/helpers/pg-server.js';
import { benchKeys } from './keys.js';
import { runScale } from './scale.js';

const root = join(import.meta.dirname, '..');
const { values: args } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    duration: { type: 'string', default: '10' },
    connections: { type: 'string', default: '32' },
    out: { type: 'string', default: join(root, 'bench/results') },
  },
});
const smoke = args.smoke;
const duration = Number(args.duration);
const connections = Number(args.connections);

/**
 * Starts `node file ...args` and waits for the {"port"} line it prints when it listens.
 * @param {string[]} argv
 * @param {Record<string, string>} env
 */
async function startProcess(argv, env) {
  const child = spawn(process.execPath, argv, { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: /** @type {import('node:stream').Readable} */ (child.stdout) });
  const port = await new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`${argv.join(' ')} exited with ${code} before listening`)));
    lines.on('line', (line) => {
      try {
        const message = JSON.parse(line);
        if (typeof message.port === 'number') resolve(message.port);
      } catch {
        // a log line
      }
    });
  });
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    /** Peak resident set size of the process so far, in MiB (Linux). */
    peakRssMiB() {
      const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      return match ? Math.round(Number(match[1]) / 1024) : null;
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

const REQUEST = JSON.stringify({ model: 'bench-model', messages: [{ role: 'user', content: 'Say hello in five words.' }], max_tokens: 50 });
const STREAM_REQUEST = JSON.stringify({ ...JSON.parse(REQUEST), stream: true, stream_options: { include_usage: true } });

/**
 * Drives `url` with autocannon, spreading the requests over the bench keys.
 * @param {string} url
 * @param {{ stream: boolean, seconds?: number, amount?: number }} load
 */
async function drive(url, { stream, seconds, amount }) {
  const keys = benchKeys();
  let next = 0;
  const result = await autocannon({
    url: `${url}/v1/chat/completions`,
    method: 'POST',
    connections,
    ...(amount ? { amount } : { duration: seconds }),
    headers: { 'content-type': 'application/json' },
    body: stream ? STREAM_REQUEST : REQUEST,
    requests: [{ setupRequest: (/** @type {any} */ req) => ({ ...req, headers: { ...req.headers, authorization: `Bearer ${keys[next++ % keys.length]}` } }) }],
  });
  return {
    requestsPerSecond: Math.round(result.requests.average),
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    requests: result.requests.total,
    failures: result.errors + result.timeouts + result.non2xx,
  };
}

/**
 * A new database on the benchmark's PostgreSQL server.
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

const tempDir = () => mkdtempSync(join(tmpdir(), 'tokengate-bench-'));

async function main() {
  const upstream = await startProcess(['bench/upstream.js'], {});
  const pg = await startPostgres();
  const env = { UPSTREAM_URL: upstream.url, LOG_LEVEL: 'warn' };
  /** @type {{ name: string, start: () => Promise<Awaited<ReturnType<typeof startProcess>> & { after?: () => Promise<void> }> }[]} */
  const variants = [
    { name: 'bare proxy', start: () => startProcess(['bench/target.js', 'bare'], env) },
    { name: 'gate, SQLite', start: () => startProcess(['bench/target.js'], { ...env, DATABASE_PATH: join(tempDir(), 'bench.db') }) },
    { name: 'gate, PostgreSQL', start: async () => startProcess(['bench/target.js'], { ...env, DATABASE_URL: await freshDatabase(pg.url), FALLBACK_DIR: tempDir() }) },
    {
      name: 'gate, file fallback (PostgreSQL down)',
      start: async () => {
        const target = await startProcess(['bench/target.js'], { ...env, DATABASE_URL: await freshDatabase(pg.url), FALLBACK_DIR: tempDir() });
        await pg.stop();
        await fetch(`${target.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${benchKeys()[0]}` }, body: REQUEST });
        return { ...target, after: () => pg.start() };
      },
    },
  ];

  const rows = [];
  try {
    for (const stream of [false, true]) {
      for (const variant of variants) {
        if (stream && /PostgreSQL/.test(variant.name)) continue; // the SSE rows compare the proxying path only
        const target = await variant.start();
        try {
          await drive(target.url, { stream, ...(smoke ? { amount: 50 } : { seconds: 2 }) }); // warm-up
          const measured = await drive(target.url, { stream, ...(smoke ? { amount: 300 } : { seconds: duration }) });
          rows.push({ variant: variant.name, response: stream ? 'SSE' : 'JSON', ...measured, peakRssMiB: target.peakRssMiB() });
          process.stderr.write(`${variant.name} ${stream ? 'SSE' : 'JSON'}: ${measured.requestsPerSecond} req/s, p99 ${measured.p99Ms} ms\n`);
        } finally {
          await target.stop();
          await target.after?.();
        }
      }
    }
    const scale = await runScale({ databaseUrl: () => freshDatabase(pg.url), keyCounts: smoke ? [1, 100] : [1, 10_000, 100_000], measureMs: smoke ? 200 : 1500 });
    report(rows, scale);
  } finally {
    await upstream.stop();
    await pg.close();
  }
}

/**
 * @param {Array<Record<string, any>>} rows
 * @param {Array<Record<string, any>>} scale
 */
function report(rows, scale) {
  for (const row of rows) {
    const bare = rows.find((r) => r.variant === 'bare proxy' && r.response === row.response);
    row.ratioToBare = bare ? Number((row.requestsPerSecond / bare.requestsPerSecond).toFixed(3)) : null;
    row.addedP99Ms = bare ? row.p99Ms - bare.p99Ms : null;
  }
  const machine = { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), connections, seconds: smoke ? null : duration, smoke };
  const result = { at: new Date().toISOString(), machine, proxy: rows, scale };
  mkdirSync(args.out, { recursive: true });
  writeFileSync(join(args.out, 'latest.json'), `${JSON.stringify(result, null, 2)}\n`);
  const markdown = [
    `Run ${result.at} on ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, Node.js ${machine.node}; autocannon, ${connections} connections, ${smoke ? 'smoke run' : `${duration} s per row`}.`,
    '',
    '| variant | response | requests/s | ratio to bare | p50 ms | p99 ms | added p99 ms | failures | peak RSS MiB |',
    '|---|---|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.variant} | ${r.response} | ${r.requestsPerSecond} | ${r.ratioToBare} | ${r.p50Ms} | ${r.p99Ms} | ${r.addedP99Ms} | ${r.failures} | ${r.peakRssMiB} |`),
    '',
    'Scale run: one hot key, lookup → admit → settle from 8 concurrent loops, straight against the store.',
    '',
    '| store | keys | hot key history | cycles/s | lookup µs | admit µs | settle µs |',
    '|---|---:|---|---:|---:|---:|---:|',
    ...scale.map((s) => `| ${s.backend} | ${s.keys} | ${s.history === 'dense' ? '5 h of minute buckets' : 'empty'} | ${s.cyclesPerSecond} | ${s.lookupUs} | ${s.admitUs} | ${s.settleUs} |`),
    '',
  ].join('\n');
  writeFileSync(join(args.out, 'latest.md'), markdown);
  process.stdout.write(markdown);
}

await main();
