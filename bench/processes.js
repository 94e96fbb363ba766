// @ts-check
// The benchmark's child processes: start one, wait for the {"port"} it prints, read its CPU time and
// peak RSS from /proc, stop it; and the CPU pinning that keeps the process under test on a core of its own.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export const root = join(import.meta.dirname, '..');

/** Longest wait for a child to print its port. */
const STARTUP_TIMEOUT_MS = 60_000;
/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ, 100 on Linux). */
const TICKS_PER_SECOND = 100;

const started = new Set();
process.once('exit', () => {
  for (const child of started) child.kill('SIGKILL');
});

/** The CPUs this process may run on, as /proc/self/status lists them ("0-1", "1,3-4"); [] elsewhere. */
function allowedCpus() {
  let list;
  try {
    list = /^Cpus_allowed_list:\s*(\S+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  } catch {
    return { list: '', cpus: [] };
  }
  if (!list) return { list: '', cpus: [] };
  const cpus = list.split(',').flatMap((part) => {
    const [from, to = from] = part.split('-').map(Number);
    return Array.from({ length: /** @type {number} */ (to) - /** @type {number} */ (from) + 1 }, (_, i) => /** @type {number} */ (from) + i);
  });
  return { list, cpus };
}

/**
 * Pinning: with two CPUs or more allowed, the benchmark itself (load generator, upstream, PostgreSQL)
 * runs on the second and every process under test on the first, so that the proxy's own CPU is what
 * limits its throughput and the rows compare like with like.
 * @param {boolean} wanted
 * @returns {{ prefix: string[], restore: string }} the prefix to run a process under test with, and
 * the CPU list to give the benchmark back
 */
export function pinBenchmark(wanted) {
  const { list, cpus } = allowedCpus();
  const [target, bench] = cpus;
  if (!wanted || target === undefined || bench === undefined) return { prefix: [], restore: '' };
  const own = spawnSync('taskset', ['-a', '-p', '-c', String(bench), String(process.pid)], { stdio: 'ignore' });
  if (own.status !== 0) return { prefix: [], restore: '' };
  return { prefix: ['taskset', '-c', String(target)], restore: list };
}

/**
 * Lets the benchmark use the CPUs it had again (the scale run measures the store from this process).
 * @param {{ restore: string }} pin what pinBenchmark() returned
 */
export function unpinBenchmark({ restore }) {
  if (restore) spawnSync('taskset', ['-a', '-p', '-c', restore, String(process.pid)], { stdio: 'ignore' });
}

/**
 * Starts `node ...argv` (behind `prefix`, such as taskset) and waits for the first stdout line carrying a
 * numeric "port" (our bench targets print {"port"}; the sidecar's pino start line has one too).
 * @param {string[]} argv
 * @param {Record<string, string>} env
 * @param {string[]} [prefix]
 * @param {string} [cwd] the checkout whose code runs (another one's for --baseline)
 */
export async function startProcess(argv, env, prefix = [], cwd = root) {
  const [command, ...args] = [...prefix, process.execPath, ...argv];
  const child = spawn(/** @type {string} */ (command), args, { cwd, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  started.add(child);
  child.once('exit', () => started.delete(child));
  const lines = createInterface({ input: /** @type {import('node:stream').Readable} */ (child.stdout) });
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  try {
    const port = await new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`${argv.join(' ')} did not listen within ${STARTUP_TIMEOUT_MS / 1000} s`)), STARTUP_TIMEOUT_MS);
      child.once('exit', (code) => reject(new Error(`${argv.join(' ')} exited with ${code} before listening`)));
      lines.on('line', (line) => {
        try {
          const message = JSON.parse(line);
          if (typeof message.port === 'number') resolve(message.port);
        } catch {
          // not a JSON line
        }
      });
    });
    lines.removeAllListeners('line');
    // What a process under test warns about (a store falling back, usage it could not read) shows, so a row's figures are never silently those of another path.
    lines.on('line', (line) => {
      if (/"level":(40|50|60)\b/.test(line)) process.stderr.write(`${argv.join(' ')}: ${line}\n`);
    });
    return processHandle(child, `http://127.0.0.1:${port}`);
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * @param {import('node:child_process').ChildProcess} child
 * @param {string} url
 */
function processHandle(child, url) {
  const pid = /** @type {number} */ (child.pid);
  return {
    child,
    url,
    /** User plus system CPU time the process has used so far, in microseconds (Linux). */
    cpuMicros() {
      // Fields after the command name, which is in parentheses and may hold spaces: utime is the 12th, stime the 13th.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return ((Number(fields[11]) + Number(fields[12])) * 1e6) / TICKS_PER_SECOND;
    },
    /** Peak resident set size of the process so far, in MiB (Linux). */
    peakRssMiB() {
      const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      return match ? Math.round(Number(match[1]) / 1024) : null;
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** @typedef {Awaited<ReturnType<typeof startProcess>>} BenchProcess */
