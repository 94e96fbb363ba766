// Files that hold keys or usage (database, backups, exports) are readable by their owner only, whatever the umask.
import { closeSync, fchmodSync, fstatSync, openSync, writeSync } from 'node:fs';

export const PRIVATE_FILE_MODE = 0o600;

/** Writes `text` to `path` (created or truncated) and leaves a regular file 0600; a device such as /dev/stdout keeps its mode. */
export function writePrivateFile(path: string, text: string): void {
  const fd = openSync(path, 'w', PRIVATE_FILE_MODE);
  try {
    if (fstatSync(fd).isFile()) fchmodSync(fd, PRIVATE_FILE_MODE);
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}
