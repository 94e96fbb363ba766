// @ts-check
// `node bench/profile.js DIR`: the CPU profiles `npm run bench -- --profile DIR` wrote, summed by where
// the time went (self time by package or part of tokengate), as shares of each process's busy time.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** @typedef {{ id: number, callFrame: { functionName: string, url: string } }} ProfileNode */

/** @param {ProfileNode['callFrame']} frame */
function category({ functionName, url }) {
  if (functionName === '(garbage collector)') return 'garbage collection';
  if (functionName === '(idle)') return 'idle';
  if (/\/dist\/(middleware|src\/(usage|quota|keys))\//.test(url)) return 'gate: middleware, usage parsing, quota';
  if (/\/dist\/src\/(storage|db)\//.test(url)) return 'tokengate storage';
  if (/\/dist\/src\/(sidecar|ops|cli)\//.test(url)) return 'sidecar, metrics, logs';
  if (/node_modules\/(better-sqlite3|drizzle-orm)\//.test(url)) return 'Drizzle and better-sqlite3';
  if (url.includes('node_modules/postgres/')) return 'postgres.js';
  if (url.includes('node_modules/')) return 'Express and other packages';
  if (url.includes('/examples/') || url.includes('/bench/')) return 'example proxy';
  return 'Node.js: HTTP, streams, events, timers, syscalls';
}

/** @param {string} file */
function summarize(file) {
  const profile = JSON.parse(readFileSync(file, 'utf8'));
  /** @type {Map<number, number>} */
  const selfTime = new Map();
  profile.samples.forEach((/** @type {number} */ id, /** @type {number} */ i) => selfTime.set(id, (selfTime.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  /** @type {Map<string, number>} */
  const byCategory = new Map();
  for (const node of /** @type {ProfileNode[]} */ (profile.nodes)) {
    const time = selfTime.get(node.id) ?? 0;
    if (time > 0) byCategory.set(category(node.callFrame), (byCategory.get(category(node.callFrame)) ?? 0) + time);
  }
  byCategory.delete('idle');
  const busy = [...byCategory.values()].reduce((sum, time) => sum + time, 0);
  return { busyMs: Math.round(busy / 1000), shares: [...byCategory].sort((a, b) => b[1] - a[1]).map(([name, time]) => ({ name, percent: Number(((100 * time) / busy).toFixed(1)) })) };
}

const [dir] = process.argv.slice(2);
if (!dir) throw new Error('usage: node bench/profile.js DIR (the directory given to npm run bench -- --profile)');
for (const file of readdirSync(dir).filter((name) => name.endsWith('.cpuprofile')).sort()) {
  const { busyMs, shares } = summarize(join(dir, file));
  process.stdout.write(`\n${file}: ${busyMs} ms busy\n`);
  for (const { name, percent } of shares) process.stdout.write(`${String(percent).padStart(6)} %  ${name}\n`);
}
