// One process per file store: the lock file `lock` in its directory.
import { join } from 'node:path';
import type { Logger } from '../types.js';
import { lockFile, type HeldLock } from './lock-file.js';

export type DirectoryLock = HeldLock;

/** Locks the file store `dir` for this process, or throws a ConfigError naming the process that holds it. */
export function lockDirectory(dir: string, logger: Logger): DirectoryLock {
  return lockFile(join(dir, 'lock'), { what: `the file store ${dir}`, advice: 'each gate instance needs its own FALLBACK_DIR', logger });
}
