// What `npm install tokengate` gives a user: the packed tarball installed in a fresh project, used from ES modules, CommonJS and TypeScript.
import { execFile, spawn } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/gate.js';
import { startPostgres } from '../helpers/pg-server.js';
import { freshDatabase } from '../helpers/postgres.js';

const ROOT = join(import.meta.dirname, '../..');
const PROJECT_FILES = join(import.meta.dirname, 'project');
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * The environment of a user's shell: none of the npm_* variables `npm test` passes down (one of
 * them, npm_config_local_prefix, would point a child npm at this repository), and no store chosen
 * by the test run's own variables.
 */
function userEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !/^(npm_|INIT_CWD$|DATABASE_URL$|DATABASE_PATH$|FALLBACK_DIR$|STORAGE$)/i.test(name)));
  return { ...env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false', ...extra };
}

/** Runs a command to its end without throwing on a non-zero exit. */
function run(command: string, args: string[], cwd: string, env: Record<string, string> = {}, timeout = 60_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { cwd, env: userEnv(env), timeout, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (error, stdout, stderr) => {
      if (error && typeof error.code !== 'number') reject(new Error(`${command} ${args.join(' ')} did not run to its end (${error.message}): ${stderr}`));
      else resolve({ status: error ? (error.code as number) : 0, stdout, stderr });
    });
  });
}

const node = (args: string[], cwd: string, env?: Record<string, string>) => run(process.execPath, args, cwd, env);

/** The JSON line a scenario prints last. */
function lastLine(result: Run): Record<string, unknown> {
  const lines = result.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1] ?? '') as Record<string, unknown>;
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => relative(dir, join(entry.parentPath, entry.name)))
    .sort();
}

/** The version of a package in this repository's node_modules: what the npm cache holds, so the install needs no download. */
function repoVersion(name: string): string {
  return (JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
}

/** A new directory in the project to run from: createStorage() puts its default ./data/tokengate.db there. */
function runDir(name: string): string {
  const dir = join(project, name);
  mkdirSync(dir);
  return dir;
}

/** The usage the scenario's key has on disk once its store is closed. */
function recorded(dir: string, keyId: unknown): unknown {
  const sqlite = new Database(join(dir, 'data/tokengate.db'), { readonly: true });
  try {
    return sqlite.prepare('select total_lifetime_tokens as tokens, total_requests as requests from api_keys where id = ?').get(keyId);
  } finally {
    sqlite.close();
  }
}

// The guard the fix adds at the top of nextWrite(): a write that waited for a closed connection fails its queries.
const GUARDED_WRITE = /function nextWrite\(fn\) \{\n\s+if \(!socket\) \{/;

let work: string;
let project: string;
let installed: string;

beforeAll(async () => {
  for (const built of ['dist/src/index.js', 'dist/vendor/postgres/index.js']) {
    if (!existsSync(join(ROOT, built))) throw new Error(`${built} is missing: run \`npm run build\` first (npm test does)`);
  }
  work = tempDir();
  project = join(work, 'project');
  mkdirSync(project);
  // The build is npm test's first step: --ignore-scripts keeps npm pack from running prepare, which would build again and re-apply the patch to this repository's node_modules.
  const packed = await run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], ROOT);
  expect(packed.status, packed.stderr).toBe(0);
  const tarball = join(work, (JSON.parse(packed.stdout) as [{ filename: string }])[0].filename);

  writeFileSync(join(project, 'package.json'), `${JSON.stringify({ name: 'fresh-project', version: '1.0.0', private: true }, null, 2)}\n`);
  // From the npm cache where it can. --ignore-scripts leaves better-sqlite3 without its native module,
  // as an install whose scripts npm or pnpm blocked does: the first tests check what the user is told
  // then. (Its install script would compile it from source here, a minute or two.) better-sqlite3 is
  // pinned to this repository's version, whose built binary is copied in further down.
  const install = await run(
    'npm',
    ['install', tarball, `better-sqlite3@${repoVersion('better-sqlite3')}`, `express@${repoVersion('express')}`, `@types/express@${repoVersion('@types/express')}`, `@types/node@${repoVersion('@types/node')}`, '--prefer-offline', '--ignore-scripts'],
    project,
    {},
    240_000,
  );
  expect(install.status, install.stderr).toBe(0);
  installed = join(project, 'node_modules/tokengate');
  cpSync(PROJECT_FILES, project, { recursive: true });
}, 300_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('the installed package', () => {
  it('holds the built code with its types, the migrations, the patched driver, the dashboard, README and LICENSE, and no source maps', () => {
    expect(readdirSync(installed).sort()).toEqual(['LICENSE', 'README.md', 'dist', 'drizzle', 'package.json']);
    expect(readdirSync(join(installed, 'dist')).sort()).toEqual(['dashboard', 'middleware', 'src', 'vendor']);
    const files = filesUnder(installed);
    expect(files).toEqual(expect.arrayContaining(['dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/cli/main.js', 'dist/middleware/gate.js', 'dist/vendor/postgres/index.js', 'dist/vendor/postgres/connection.js', 'drizzle/sqlite/0000_init.sql', 'drizzle/postgres/meta/_journal.json', 'dist/dashboard/index.html', 'dist/dashboard/index.html.gz', 'dist/dashboard/manifest.json']));
    expect(files.filter((file) => file.endsWith('.map'))).toEqual([]);
    expect(files.filter((file) => file.endsWith('.js') && readFileSync(join(installed, file), 'utf8').includes('sourceMappingURL'))).toEqual([]);

    const license = readFileSync(join(installed, 'LICENSE'), 'utf8');
    expect(license).toMatch(/^MIT License\n\nCopyright \(c\) tokengate contributors\n/);
    const manifest = JSON.parse(readFileSync(join(installed, 'package.json'), 'utf8')) as Record<string, unknown>;
    expect(manifest).toMatchObject({
      license: 'MIT',
      repository: { type: 'git', url: 'git+https://github.com/tokengate/tokengate.git' },
      homepage: 'https://github.com/tokengate/tokengate#readme',
      bugs: 'https://github.com/tokengate/tokengate/issues',
    });
    expect(existsSync(join(project, 'node_modules/.bin/tokengate'))).toBe(true);
  });

  describe('when better-sqlite3 has no usable native module', () => {
    const binding = () => join(project, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node');
    const open = `require('tokengate').createStorage().then(() => console.log('opened'), (error) => console.log(JSON.stringify({ name: error.name, message: error.message })))`;

    it('createStorage() and the CLI say in one line how to build it, when its install script did not run', async () => {
      expect(existsSync(binding())).toBe(false); // what `npm install --ignore-scripts` left
      const opened = await node(['-e', open], runDir('unbuilt'));
      expect(opened.stderr).toBe('');
      const { name, message } = lastLine(opened) as { name: string; message: string };
      expect(name).toBe('ConfigError');
      expect(message).not.toContain('\n');
      expect(message).toMatch(/^better-sqlite3, the embedded SQLite driver, has no native module: its install script did not run/);
      for (const remedy of ['`npm rebuild better-sqlite3`', '`npm approve-scripts better-sqlite3`', '`pnpm approve-builds`', 'DATABASE_URL']) expect(message).toContain(remedy);

      const listed = await run('npx', ['--no-install', 'tokengate', 'keys', 'list'], runDir('unbuilt-cli'));
      expect(listed.status).toBe(1);
      expect(listed.stdout).toBe('');
      expect(listed.stderr).toBe(`tokengate: ${message}\n`);
    });

    it('and when the module it finds does not load (built for another Node.js, or damaged)', async () => {
      mkdirSync(dirname(binding()), { recursive: true });
      writeFileSync(binding(), 'not a shared object');
      try {
        const opened = await node(['-e', open], runDir('unloadable'));
        const { name, message } = lastLine(opened) as { name: string; message: string };
        expect(name).toBe('ConfigError');
        expect(message).not.toContain('\n');
        expect(message).toMatch(new RegExp(`^better-sqlite3's native module does not load on Node.js ${process.version} \\(.*better_sqlite3.node: .*\\): run \`npm rebuild better-sqlite3\``));
      } finally {
        rmSync(join(project, 'node_modules/better-sqlite3/build'), { recursive: true, force: true });
      }
    });
  });

  describe('with better-sqlite3 built', () => {
    beforeAll(() => {
      // The binary this repository's own install of the same better-sqlite3 version built: what the
      // install script would have compiled in the fresh project too.
      const version = (JSON.parse(readFileSync(join(project, 'node_modules/better-sqlite3/package.json'), 'utf8')) as { version: string }).version;
      expect(version).toBe(repoVersion('better-sqlite3'));
      const target = join(project, 'node_modules/better-sqlite3/build/Release');
      mkdirSync(target, { recursive: true });
      copyFileSync(join(ROOT, 'node_modules/better-sqlite3/build/Release/better_sqlite3.node'), join(target, 'better_sqlite3.node'));
    });

    const served = { backend: 'sqlite', status: 200, reported: 42, refused: 401, used: 42, requests: 1, errors: [true, 'invalid_config'] };

    it('an ES module imports it by name, and a request through tokenGate and proxy on the embedded SQLite store is recorded', async () => {
      const dir = runDir('esm');
      const result = await node(['../gate.mjs'], dir);
      expect(result.stderr).toBe('');
      expect(result.status).toBe(0);
      const outcome = lastLine(result);
      expect(outcome).toMatchObject(served);
      expect(recorded(dir, outcome.keyId)).toEqual({ tokens: 42, requests: 1 });
    });

    it('CommonJS require()s it the same (Node.js 20.19 and later load ES modules from require)', async () => {
      const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
      expect(major > 20 || (major === 20 && minor >= 19), `Node.js ${process.version} cannot require() ES modules`).toBe(true);
      const dir = runDir('cjs');
      const result = await node(['../gate.cjs'], dir);
      expect(result.stderr).toBe('');
      expect(result.status).toBe(0);
      const outcome = lastLine(result);
      expect(outcome).toMatchObject(served);
      expect(recorded(dir, outcome.keyId)).toEqual({ tokens: 42, requests: 1 });
    });

    // CommonJS output under each module setting that compiles require() of an ES module (nodenext
    // and node20 model Node.js 20.19+; commonjs resolves through "types"), and ES module output.
    const typescriptProjects = [
      { dir: 'ts-cjs-nodenext', type: 'commonjs', module: 'nodenext', loads: /require\("tokengate"\)/ },
      { dir: 'ts-cjs-node20', type: 'commonjs', module: 'node20', loads: /require\("tokengate"\)/ },
      { dir: 'ts-cjs-commonjs', type: 'commonjs', module: 'commonjs', loads: /require\("tokengate"\)/ },
      { dir: 'ts-esm-nodenext', type: 'module', module: 'nodenext', loads: /from 'tokengate'/ },
    ];

    it('TypeScript projects in CommonJS and ES module mode type-check against the installed types, and run', async () => {
      const results = await Promise.all(
        typescriptProjects.map(async (setup) => {
          const dir = runDir(setup.dir);
          writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: setup.type }));
          const compilerOptions = { module: setup.module, target: 'es2022', strict: true, esModuleInterop: true, skipLibCheck: true, types: ['node'], outDir: 'out' };
          writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions, files: ['gate.ts'] }));
          copyFileSync(join(project, 'gate.ts'), join(dir, 'gate.ts'));
          const checked = await node([TSC, '-p', '.'], dir);
          const ran = checked.status === 0 ? await node(['out/gate.js'], dir) : undefined;
          return { setup, dir, checked, ran };
        }),
      );
      for (const { setup, dir, checked, ran } of results) {
        expect(checked.stdout, `tsc --module ${setup.module}`).toBe('');
        expect(checked.status).toBe(0);
        expect(readFileSync(join(dir, 'out/gate.js'), 'utf8')).toMatch(setup.loads);
        expect(ran?.stderr, `node out/gate.js (--module ${setup.module})`).toBe('');
        expect(ran?.status).toBe(0);
        const outcome = lastLine(ran as Run);
        expect(outcome).toMatchObject({ backend: 'sqlite', status: 200, admittedAs: 'typed', used: 42, requests: 1, errors: [true, 'invalid_config'] });
        expect(recorded(dir, outcome.keyId)).toEqual({ tokens: 42, requests: 1 });
      }
    }, 120_000);

    it('npx tokengate runs the installed command', async () => {
      const help = await run('npx', ['--no-install', 'tokengate', '--help'], runDir('npx'));
      expect(help.stderr).toBe('');
      expect(help.status).toBe(0);
      expect(help.stdout).toMatch(/^Usage: tokengate /);
      for (const command of ['serve', 'keys', 'import', 'backup', 'restore', 'db']) expect(help.stdout).toMatch(new RegExp(`^  ${command}\\b`, 'm'));
    });
  });

  it('talks to PostgreSQL through its own copy of postgres.js, the one with the fix, which survives a connection dying under a waiting write', async () => {
    const databaseUrl = await freshDatabase();
    const log = join(work, 'imports.log');
    const opened = await node(['--import', './record-imports.mjs', 'postgres-store.mjs'], project, { DATABASE_URL: databaseUrl, IMPORTS_LOG: log });
    expect(opened.stderr).toBe('');
    expect(opened.stdout.trim().split('\n').pop()).toBe('postgres');

    // Every postgres.js that tokengate's own modules import (drizzle-orm imports the registry's copy, and never connects with it).
    const tokengate = `${pathToFileURL(installed).href}/`;
    const imports = readFileSync(log, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as { specifier: string; parent?: string; url: string });
    const isDriver = (url: string) => url.startsWith('file:') && url.endsWith('/index.js') && existsSync(join(dirname(fileURLToPath(url)), 'connection.js'));
    const drivers = [...new Set(imports.filter(({ parent, url }) => parent?.startsWith(tokengate) && isDriver(url)).map(({ url }) => url))];
    expect(drivers).toEqual([`${tokengate}dist/vendor/postgres/index.js`]);
    expect(readFileSync(join(installed, 'dist/vendor/postgres/connection.js'), 'utf8')).toMatch(GUARDED_WRITE);
    const registryCopy = join(project, 'node_modules/postgres/src');
    expect(readFileSync(join(registryCopy, 'connection.js'), 'utf8')).not.toMatch(GUARDED_WRITE);

    // The same outage with each copy: the registry's kills the process, the one tokengate runs fails the transaction.
    const fixed = await node(['postgres-close.mjs', drivers[0] ?? ''], project, { DATABASE_URL: databaseUrl });
    expect(fixed).toEqual({ status: 0, stdout: 'CONNECTION_CLOSED\n', stderr: '' });
    const unfixed = await node(['postgres-close.mjs', pathToFileURL(join(registryCopy, 'index.js')).href], project, { DATABASE_URL: databaseUrl });
    expect(unfixed.status).not.toBe(0);
    expect(unfixed.stderr).toContain("TypeError: Cannot read properties of null (reading 'write')");
  });

  it('keeps serving from the installed copy when PostgreSQL stops under load: the process survives and the fallback decides', async () => {
    const pg = await startPostgres();
    const child = spawn(process.execPath, ['postgres-outage.mjs'], { cwd: project, env: userEnv({ DATABASE_URL: pg.url, FALLBACK_DIR: join(work, 'outage-fallback') }), stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (text: string) => (out += text));
      const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
      const { port, key } = await new Promise<{ port: number; key: string }>((resolve, reject) => {
        const poll = setInterval(() => {
          const line = out.split('\n').find((each) => each.startsWith('{"port"'));
          if (line) {
            clearInterval(poll);
            resolve(JSON.parse(line) as { port: number; key: string });
          }
        }, 20);
        void exited.then((code) => reject(new Error(`the proxy exited with ${code} before listening`)));
      });
      const base = `http://127.0.0.1:${port}`;
      const statuses: number[] = [];
      let loading = true;
      const load = Promise.all(
        Array.from({ length: 8 }, async () => {
          while (loading) {
            const response = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: '{"model":"m","messages":[]}' }).catch(() => undefined);
            statuses.push(response?.status ?? 0);
            await response?.arrayBuffer();
          }
        }),
      );
      await new Promise((resolve) => setTimeout(resolve, 500));
      await pg.stop();
      await new Promise((resolve) => setTimeout(resolve, 3000));
      loading = false;
      await load;
      expect(child.exitCode).toBeNull(); // alive
      expect(statuses.filter((status) => status !== 200 && status !== 503)).toEqual([]);
      // After the switch, the fallback decides: the last requests were served.
      expect(statuses.slice(-8)).toEqual(Array(8).fill(200));
      const health = (await (await fetch(`${base}/healthz`)).json()) as { status: string; mode: string };
      expect(health).toMatchObject({ status: 'degraded', mode: 'fallback' });
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(out).toContain('{"stopped":true}');
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      await pg.close();
    }
  }, 120_000);

  it('is built only with the fix: the build refuses the registry\'s postgres.js, and a version the fix is not for', async () => {
    // A tree with just the build script, the patch and a driver; the build stops before it needs anything else.
    const tree = join(work, 'unpatched');
    cpSync(join(ROOT, '.ci/build.js'), join(tree, '.ci/build.js'));
    cpSync(join(ROOT, '.patches'), join(tree, '.patches'), { recursive: true });
    const patch = readdirSync(join(ROOT, '.patches')).find((name) => name.startsWith('postgres+')) ?? '';
    // The registry's driver of the very version the patch is for, not whatever newer 3.x a user's
    // install resolves: that one is refused for its version before its sources are looked at.
    const patchedVersion = /^postgres\+(.+)\.patch$/.exec(patch)?.[1] ?? '';
    writeFileSync(join(tree, 'package.json'), '{"private":true}\n');
    const fetched = await run('npm', ['install', `postgres@${patchedVersion}`, '--no-save', '--prefer-offline', '--ignore-scripts'], tree);
    expect(fetched.status, fetched.stderr).toBe(0);
    expect((JSON.parse(readFileSync(join(tree, 'node_modules/postgres/package.json'), 'utf8')) as { version: string }).version).toBe(patchedVersion);
    const unpatched = await node(['.ci/build.js'], tree);
    expect(unpatched).toMatchObject({ status: 1, stdout: '' });
    expect(unpatched.stderr).toBe(`build: node_modules/postgres/src/connection.js lacks the fix of .patches/${patch} (\`npm ci\` applies it; or run \`npx patch-package --patch-dir .patches\`): refusing to ship an unpatched driver\n`);
    expect(existsSync(join(tree, 'dist/vendor/postgres'))).toBe(false);

    const manifest = join(tree, 'node_modules/postgres/package.json');
    writeFileSync(manifest, JSON.stringify({ ...(JSON.parse(readFileSync(manifest, 'utf8')) as object), version: '3.99.0' }));
    const newer = await node(['.ci/build.js'], tree);
    expect(newer.status).toBe(1);
    expect(newer.stderr).toMatch(new RegExp(`^build: node_modules/postgres is 3\\.99\\.0 but the fix is \\.patches/${patch.replace(/[.+]/g, '\\$&')}: `));
  }, 120_000);
});
