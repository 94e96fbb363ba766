// One process per store (the file store's directory, a SQLite file): a lock file naming its owner (host, pid, a random token), kept fresh.
import { randomBytes } from 'node:crypto';
import { linkSync, readFileSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { ConfigError } from '../errors.js';
import type { Logger } from '../types.js';

/** The owner touches the lock this often; an owner on another host counts as gone after STALE_MS. */
const HEARTBEAT_MS = 5_000;
const STALE_MS = 30_000;

interface Owner {
  host: string;
  pid: number;
  token: string;
}

export interface HeldLock {
  release(): void;
}

export interface LockOptions {
  /** What the lock guards, as errors and logs name it: `the file store ./data/fallback`. */
  what: string;
  /** Appended to the error when the lock is held: what the operator should do instead. */
  advice: string;
  logger: Logger;
}

/**
 * Creates the lock file `path` for this process, or throws a ConfigError naming the owner. A lock
 * left by a process that is gone is taken over: on this host when its pid no longer runs (or is this
 * process's own pid: a container restarted, or this process reopening a store it abandoned), from
 * another host (another container sharing the volume) when it has not been touched for 30 s.
 */
export function lockFile(path: string, { what, advice, logger }: LockOptions): HeldLock {
  const me: Owner = { host: hostname(), pid: process.pid, token: randomBytes(12).toString('hex') };
  const text = JSON.stringify(me);
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      writeFileSync(path, text, { flag: 'wx' });
      return hold(what, path, me, logger);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') throw new ConfigError(`cannot lock ${what}: cannot create ${path} (${code ?? String(error)})`, { cause: error });
    }
    const seen = readLock(path);
    if (seen === undefined) continue; // gone in between: try again
    const owner = parseOwner(seen.text);
    if (!isGone(owner, seen.mtimeMs)) {
      const who = owner ? `process ${owner.pid} on ${owner.host}` : 'another process';
      throw new ConfigError(`${what} is in use by ${who}; ${advice}`);
    }
    takeOver(path, seen.text);
  }
  throw new ConfigError(`cannot lock ${what}: its lock ${path} keeps changing hands`);
}

function readLock(path: string): { text: string; mtimeMs: number } | undefined {
  try {
    return { mtimeMs: statSync(path).mtimeMs, text: readFileSync(path, 'utf8') };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** The owner a lock names; a bare pid is the format of earlier versions (same host). */
function parseOwner(text: string): Owner | undefined {
  if (/^\d+$/.test(text.trim())) return { host: hostname(), pid: Number(text), token: '' };
  try {
    const owner = JSON.parse(text) as Partial<Owner>;
    if (typeof owner.host === 'string' && Number.isSafeInteger(owner.pid) && typeof owner.token === 'string') return owner as Owner;
  } catch {
    // unreadable: judged by its age alone
  }
  return undefined;
}

function isGone(owner: Owner | undefined, mtimeMs: number): boolean {
  if (owner === undefined || owner.host !== hostname()) return Date.now() - mtimeMs > STALE_MS;
  return owner.pid === process.pid || !isAlive(owner.pid);
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Moves a stale lock aside: renaming is atomic, so of two processes taking over at once only one
 * moves the stale lock. The other may move the winner's fresh lock instead; it notices, puts it back
 * and finds the store in use.
 */
function takeOver(path: string, staleText: string): void {
  const aside = `${path}.stale-${randomBytes(6).toString('hex')}`;
  try {
    renameSync(path, aside);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw error;
  }
  if (readFileSync(aside, 'utf8') === staleText) return rmSync(aside, { force: true });
  try {
    linkSync(aside, path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error; // a third process locked it meanwhile
  } finally {
    rmSync(aside, { force: true });
  }
}

function hold(what: string, path: string, me: Owner, logger: Logger): HeldLock {
  const heartbeat = setInterval(() => {
    try {
      if (parseOwner(readFileSync(path, 'utf8'))?.token !== me.token) throw new Error('the lock file names another owner');
      const now = new Date();
      utimesSync(path, now, now);
    } catch (error) {
      logger.error({ err: error, lock: path }, `lost the lock of ${what}: another process may be writing to it`);
    }
  }, HEARTBEAT_MS).unref();
  return {
    release() {
      clearInterval(heartbeat);
      const seen = readLock(path);
      if (seen !== undefined && parseOwner(seen.text)?.token === me.token) rmSync(path, { force: true });
    },
  };
}
