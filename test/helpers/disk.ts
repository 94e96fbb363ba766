// A real small filesystem (tmpfs, mounted as root) that a test can fill up and free again.
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SmallDisk {
  dir: string;
  /** Writes a filler file until the filesystem refuses a byte more. */
  fill(): void;
  /** Deletes the filler. */
  free(): void;
  /** Unmounts the filesystem and removes its mount point. */
  remove(): void;
}

/** Mounts a tmpfs of `sizeKiB` on a new temporary directory. */
export function smallDisk(sizeKiB: number): SmallDisk {
  const dir = mkdtempSync(join(tmpdir(), 'tokengate-disk-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeKiB}k,mode=0700`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`mounting a tmpfs needs root (these tests fill a real filesystem): ${(error as Error).message}`, { cause: error });
  }
  const filler = join(dir, 'filler');
  return {
    dir,
    fill() {
      const fd = openSync(filler, 'a');
      const chunk = Buffer.alloc(4096, 1);
      try {
        for (;;) writeSync(fd, chunk);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
      } finally {
        closeSync(fd);
      }
      // The last partial page, byte by byte.
      const tail = openSync(filler, 'a');
      try {
        for (;;) writeSync(tail, Buffer.alloc(1));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
      } finally {
        closeSync(tail);
      }
    },
    free() {
      rmSync(filler, { force: true });
    },
    remove() {
      try {
        execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}
