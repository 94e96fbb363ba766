// Global setup: every temporary file of the run (the tests', their child processes', PostgreSQL's)
// goes under one directory, removed when the run ends, whether its tests passed or failed.
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export default function setup(): () => void {
  const previous = process.env.TMPDIR;
  const dir = mkdtempSync(join(tmpdir(), 'tokengate-run-'));
  // Reachable by the unprivileged user a root-started PostgreSQL runs as; each test's own directory is 0700.
  chmodSync(dir, 0o755);
  process.env.TMPDIR = dir; // os.tmpdir() reads it on every call; the test processes inherit it
  return () => {
    if (previous === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = previous;
    rmSync(dir, { recursive: true, force: true });
  };
}
