// The start-up check of the PostgreSQL driver: the copy tokengate ships passes, one without the fix is refused.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { checkDriver, driverProblem } from '../../../src/db/postgres-driver.js';
import { tempDir } from '../../helpers/temp.js';

const shipped = join(dirname(fileURLToPath(import.meta.resolve('#postgres'))), 'connection.js');

describe('the PostgreSQL driver check', () => {
  it('passes the copy tokengate ships', () => {
    expect(driverProblem(shipped)).toBeUndefined();
    expect(() => checkDriver()).not.toThrow();
  });

  it('names a copy without the fix, and one it cannot read', () => {
    const dir = tempDir();
    const unfixed = join(dir, 'connection.js');
    // The fix's guard removed: what the registry's postgres.js 3.4.9 has.
    writeFileSync(unfixed, readFileSync(shipped, 'utf8').replace(/\n\s+if \(!socket\) \{[^]*?\n\s+\}\n(\s+const x = socket\.write)/, '\n$1'));
    expect(driverProblem(unfixed)).toMatch(/lacks the fix for a connection closing under a waiting write/);
    expect(driverProblem(join(dir, 'missing.js'))).toMatch(/^cannot read /);
  });
});
