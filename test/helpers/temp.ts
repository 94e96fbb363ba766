// Temporary directories that remove themselves: after the test that made them, or after the file for those made outside a test.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, onTestFinished } from 'vitest';

/** Directories made in a beforeAll or at collection, shared by several tests: removed once the file's tests are done. */
const sharedDirs: string[] = [];

// Registered when a test file first imports this module, so it belongs to that file's root suite and,
// hooks running in stack order, runs after the file's own afterAll hooks have stopped what used the directories.
afterAll(() => {
  for (const dir of sharedDirs.splice(0)) remove(dir);
});

function remove(dir: string): void {
  rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
}

/** Whether a test (or its beforeEach) is running now: onTestFinished is only allowed then. */
function removeAfterCurrentTest(dir: string): boolean {
  try {
    // Runs after the test's afterEach hooks, and after the onTestFinished callbacks registered later (stack order),
    // so whatever the test opened in the directory is closed by then; it runs when the test fails too.
    onTestFinished(() => remove(dir));
    return true;
  } catch {
    return false;
  }
}

/** A new empty directory under the run's temp directory (0700), removed when the test that made it finishes. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'tokengate-'));
  if (!removeAfterCurrentTest(dir)) sharedDirs.push(dir);
  return dir;
}

/** A SQLite database path in a new temp directory. */
export function tempDbPath(): string {
  return join(tempDir(), 'tokengate.db');
}
