// One list of environment variables: what the code reads, what `serve --help` prints and the reference table agree.
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { VARIABLES } from '../../src/cli/variables.js';
import { VARIABLE_NAMES } from '../../src/config.js';
import { CLI } from '../helpers/sidecar.js';

const ROOT = join(import.meta.dirname, '../..');

/** Variable names the sources read: those of the schema in src/config.ts, and any `process.env.X` or `env.X` read past it. */
function variablesRead(): Set<string> {
  const names = new Set<string>(VARIABLE_NAMES);
  for (const dir of ['src', 'middleware']) {
    for (const file of readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' }).filter((name) => name.endsWith('.ts'))) {
      const text = readFileSync(join(ROOT, dir, file), 'utf8');
      for (const match of text.matchAll(/(?:process\.env|\benv)\.([A-Z][A-Z0-9_]+)/g)) names.add(match[1]!);
    }
  }
  return names;
}

/** The rows of docs/operations.md's configuration reference: name and default. */
function referenceTable(): { name: string; default: string }[] {
  const text = readFileSync(join(ROOT, 'docs/operations.md'), 'utf8');
  const section = text.slice(text.indexOf('## Configuration reference'));
  return section
    .split('\n')
    .filter((line) => line.startsWith('| `'))
    .map((line) => {
      const [name, fallback] = line.slice(2).split(' | ');
      return { name: name!.replace(/`/g, ''), default: fallback! };
    });
}

describe('the environment variables', () => {
  it('are the ones the code reads, no more and no fewer', () => {
    expect(new Set(VARIABLES.map((variable) => variable.name))).toEqual(variablesRead());
  });

  it('are the rows of the reference table, in order, with their defaults', () => {
    expect(referenceTable()).toEqual(VARIABLES.map(({ name, default: fallback }) => ({ name, default: fallback })));
  });

  it('are listed by `tokengate serve --help`', () => {
    const help = spawnSync(process.execPath, [CLI, 'serve', '--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    for (const { name } of VARIABLES) expect(help.stdout).toMatch(new RegExp(`^  ${name} `, 'm'));
  });
});
