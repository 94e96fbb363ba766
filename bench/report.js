// @ts-check
// The benchmark's results: medians over the rounds, ratios to the bare proxy measured round by round,
// and the tables written to bench/results/latest.{json,md}.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';

/** @typedef {Awaited<ReturnType<typeof import('./drive.js').drive>>} Measured */

/** The hot key's history in the scale table. @type {Record<string, (records: number) => string>} */
const HISTORIES = {
  empty: () => 'empty',
  dense: (records) => `5 h of minute buckets, ${records} records`,
  plan: (records) => `a 5 h and a 7 d limit: 5 h of minute buckets, 7 d of 30-minute buckets, ${records} records`,
};

/**
 * @param {number[]} values
 * @returns {number}
 */
function median(values) {
  const sorted = values.toSorted((a, b) => a - b);
  const middle = sorted.length >> 1;
  const at = (/** @type {number} */ i) => sorted[i] ?? Number.NaN;
  return sorted.length % 2 ? at(middle) : (at(middle - 1) + at(middle)) / 2;
}

/** @param {number | null} value @param {number | null | undefined} bare */
const difference = (value, bare) => (value === null || bare === null || bare === undefined ? null : Number((value - bare).toFixed(2)));

const round3 = (/** @type {number} */ value) => Number(value.toFixed(3));

/**
 * One row per variant and response: medians over its rounds; the ratio to the bare proxy is the median
 * of the per-round ratios (each against the bare round just before, so load on the machine cancels out).
 * @param {{ variant: string, response: string, rounds: Measured[], alone: Measured, peakRssMiB: number | null }[]} rows
 */
export function summarize(rows) {
  return rows.map((row) => {
    const bare = rows.find((other) => other.variant === 'bare proxy' && other.response === row.response);
    const ratios = bare ? row.rounds.map((measured, i) => measured.requestsPerSecond / (bare.rounds[i]?.requestsPerSecond ?? Number.NaN)) : [];
    const cpu = median(row.rounds.map((measured) => measured.cpuUsPerRequest ?? Number.NaN));
    // Noise on a shared machine only ever adds CPU time: the least a row needed in any round is its
    // least disturbed figure.
    const least = (/** @type {Measured[]} */ rounds) => Math.min(...rounds.map((measured) => measured.cpuUsPerRequest ?? Number.NaN));
    return {
      variant: row.variant,
      response: row.response,
      requestsPerSecond: Math.round(median(row.rounds.map((measured) => measured.requestsPerSecond))),
      ratioToBare: ratios.length ? round3(median(ratios)) : null,
      ratiosByRound: ratios.map(round3),
      cpuUsPerRequest: Math.round(cpu),
      cpuUsPerRequestLeast: least(row.rounds),
      cpuRatioToBare: bare ? round3(least(bare.rounds) / least(row.rounds)) : null,
      databaseCpuUsPerRequest: row.rounds.some((measured) => measured.databaseCpuUsPerRequest !== null) ? Math.round(median(row.rounds.map((measured) => measured.databaseCpuUsPerRequest ?? Number.NaN))) : null,
      cpuBusy: median(row.rounds.map((measured) => measured.cpuBusy)),
      p50Ms: median(row.rounds.map((measured) => measured.p50Ms ?? Number.NaN)),
      p99Ms: median(row.rounds.map((measured) => measured.p99Ms ?? Number.NaN)),
      alone: { p50Ms: row.alone.p50Ms, p99Ms: row.alone.p99Ms, addedP50Ms: difference(row.alone.p50Ms, bare?.alone.p50Ms), addedP99Ms: difference(row.alone.p99Ms, bare?.alone.p99Ms) },
      requests: row.rounds.reduce((sum, measured) => sum + measured.requests, 0),
      failures: row.rounds.reduce((sum, measured) => sum + measured.failures, 0) + row.alone.failures,
      peakRssMiB: row.peakRssMiB,
    };
  });
}

/**
 * @param {string} out
 * @param {{ settings: Record<string, any>, proxy: ReturnType<typeof summarize>, scale: Array<Record<string, any>> }} result
 */
export function writeReport(out, { settings, proxy, scale }) {
  const machine = { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30) };
  const at = new Date().toISOString();
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'latest.json'), `${JSON.stringify({ at, machine, settings, proxy, scale }, null, 2)}\n`);
  const load = settings.smoke
    ? 'smoke run: 300 requests per row'
    : `${settings.rounds} interleaved rounds of ${settings.seconds} s per row after ${settings.warmupSeconds} s of warm-up, medians`;
  const markdown = [
    `Run ${at} on ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, Node.js ${machine.node}.`,
    `autocannon, ${settings.connections} connections, ${load}; ${settings.pinned ? 'processes under test pinned to one CPU, load generator, upstream and PostgreSQL to another' : 'no CPU pinning'}.`,
    '',
    `| variant | response | requests/s | ratio to bare | CPU µs/request | least CPU µs/request | CPU ratio | PostgreSQL server CPU µs/request | p50 / p99 ms, ${settings.connections} connections | p50 / p99 ms, 1 connection | added p99 ms, 1 connection | failures | peak RSS MiB |`,
    '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...proxy.map(
      (r) =>
        `| ${r.variant} | ${r.response} | ${r.requestsPerSecond} | ${r.ratioToBare} | ${r.cpuUsPerRequest} | ${r.cpuUsPerRequestLeast} | ${r.cpuRatioToBare} | ${r.databaseCpuUsPerRequest ?? ''} | ${r.p50Ms} / ${r.p99Ms} | ${r.alone.p50Ms} / ${r.alone.p99Ms} | ${r.alone.addedP99Ms} | ${r.failures} | ${r.peakRssMiB} |`,
    ),
    '',
    ...(scale.length === 0
      ? []
      : [
          'Scale run, straight against the store: decisions (digest, key lookup, admission, release; one at a time) and recording (admission then usage record, 32 at once) on one hot key.',
          '',
          '| store | keys | hot key history | decisions/s | µs per decision | records/s |',
          '|---|---:|---|---:|---:|---:|',
          ...scale.map((s) => `| ${s.backend} | ${s.keys} | ${HISTORIES[s.history]?.(s.pastRecords) ?? s.history} | ${s.decisionsPerSecond} | ${s.decisionUs} | ${s.recordsPerSecond} |`),
          '',
        ]),
  ].join('\n');
  writeFileSync(join(out, 'latest.md'), markdown);
  process.stdout.write(markdown);
}
