// The floors of docs/architecture.md: every module imports from its own floor or lower ones only.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '../..');

/** The floor of each file or folder; a file takes the floor of the longest entry its path starts with. */
const FLOORS: Record<string, number> = {
  'src/types.ts': 0,
  'src/errors.ts': 0,
  'src/config.ts': 0,
  'src/package-root.ts': 0,
  'src/logger.ts': 0,
  'src/private-files.ts': 0,
  'src/http/': 0,
  'src/quota/': 1,
  'src/usage/': 1,
  'src/keys/': 1,
  'src/dashboard/': 1,
  'src/db/': 2,
  'src/storage/': 3,
  'src/ops/': 4,
  'middleware/': 5,
  'src/sidecar/': 6,
  'src/cli/': 7,
  'src/index.ts': 7,
};

function floorOf(path: string): number | undefined {
  const entry = Object.keys(FLOORS)
    .filter((prefix) => path === prefix || (prefix.endsWith('/') && path.startsWith(prefix)))
    .sort((a, b) => b.length - a.length)[0];
  return entry === undefined ? undefined : FLOORS[entry];
}

/** Relative specifiers of `from '…'` (imports and re-exports), `import('…')` and bare `import '…'`. */
function relativeImports(source: string): string[] {
  const pattern = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)['"](\.{1,2}\/[^'"]+)['"]/g;
  return [...source.matchAll(pattern)].map((match) => match[1] as string);
}

/** The source file a specifier names: NodeNext imports of `x.js` are written as `x.ts`. */
function resolveImport(from: string, specifier: string): string {
  return posix.join(posix.dirname(from), specifier).replace(/\.js$/, '.ts');
}

/** Every breach of the rule in `files` (path relative to the repository → source text). */
function floorViolations(files: Record<string, string>): string[] {
  const violations: string[] = [];
  for (const [path, source] of Object.entries(files)) {
    const floor = floorOf(path);
    if (floor === undefined) {
      violations.push(`${path} has no floor: give its folder one in test/unit/floors.test.ts and docs/architecture.md`);
      continue;
    }
    for (const target of relativeImports(source).map((specifier) => resolveImport(path, specifier))) {
      const targetFloor = floorOf(target);
      if (targetFloor === undefined) violations.push(`${path} (floor ${floor}) imports ${target}, which has no floor`);
      else if (targetFloor > floor) violations.push(`${path} (floor ${floor}) imports ${target} (floor ${targetFloor})`);
    }
  }
  return violations;
}

function sourceTree(): Record<string, string> {
  const files: Record<string, string> = {};
  for (const dir of ['src', 'middleware']) {
    for (const entry of readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })) {
      if (!entry.endsWith('.ts')) continue;
      const path = posix.join(dir, entry.split('\\').join('/'));
      files[path] = readFileSync(join(ROOT, path), 'utf8');
    }
  }
  return files;
}

describe('floors', () => {
  it('no module under src/ or middleware/ imports one on a higher floor', () => {
    const files = sourceTree();
    expect(Object.keys(files).length).toBeGreaterThan(50);
    expect(floorViolations(files)).toEqual([]);
  });

  it('reports an upward import, type-only, re-exported or dynamic', () => {
    const files = {
      'src/keys/view.ts': "import type { KeyRecord } from '../storage/types.js';",
      'src/db/sqlite.ts': "export { createMetrics } from '../ops/metrics.js';\nimport { errorBody } from '../http/error-body.js';",
      'src/storage/create.ts': "const cli = await import('../cli/main.js');",
      'middleware/gate.ts': "import { proxy } from '../src/sidecar/proxy.js';\nimport type { Storage } from '../src/storage/types.js';",
    };
    expect(floorViolations(files)).toEqual([
      'src/keys/view.ts (floor 1) imports src/storage/types.ts (floor 3)',
      'src/db/sqlite.ts (floor 2) imports src/ops/metrics.ts (floor 4)',
      'src/storage/create.ts (floor 3) imports src/cli/main.ts (floor 7)',
      'middleware/gate.ts (floor 5) imports src/sidecar/proxy.ts (floor 6)',
    ]);
  });

  it('reports a file in a folder that has no floor, and an import of one', () => {
    const files = { 'src/cache/lru.ts': '', 'src/storage/file.ts': "import { Lru } from '../cache/lru.js';" };
    expect(floorViolations(files)).toEqual([
      'src/cache/lru.ts has no floor: give its folder one in test/unit/floors.test.ts and docs/architecture.md',
      'src/storage/file.ts (floor 3) imports src/cache/lru.ts, which has no floor',
    ]);
  });
});
