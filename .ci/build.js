// @ts-check
// The build: dist/ from scratch, holding the postgres.js driver tokengate runs (refused unless it carries the fix in .patches/) and tsc's output.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

const root = join(import.meta.dirname, '..');
const dist = join(root, 'dist');
const driverDir = join(root, 'node_modules/postgres');
const vendorDir = join(dist, 'vendor/postgres');

/**
 * Stops the build, leaving no driver copy behind for a test run to pick up.
 * @param {string} message
 */
function fail(message) {
  rmSync(vendorDir, { recursive: true, force: true });
  console.error(`build: ${message}`);
  process.exit(1);
}

// From scratch, so that no file of an earlier build (a source map, a deleted module) is packed.
rmSync(dist, { recursive: true, force: true });

// postgres.js 3.4.9 (and 3.4.10, the latest 3.x) can crash the process when a connection closes
// while a write waits (porsager/postgres#1154, #1208). npm runs no patch step when a user installs
// tokengate, so the patched driver ships inside the package: its ES module sources (no
// dependencies, Unlicense), imported through "#postgres" in package.json. Types still come from the
// `postgres` dependency.
const { version } = JSON.parse(readFileSync(join(driverDir, 'package.json'), 'utf8'));
const patches = readdirSync(join(root, '.patches')).filter((name) => name.startsWith('postgres+'));
if (patches.length !== 1) fail(`expected one postgres.js patch in .patches/, found ${patches.length}`);
const patchName = /** @type {string} */ (patches[0]);
if (patchName !== `postgres+${version}.patch`) {
  fail(`node_modules/postgres is ${version} but the fix is .patches/${patchName}: port the fix to ${version}, or drop it if ${version} fixes porsager/postgres#1154`);
}
cpSync(join(driverDir, 'src'), vendorDir, { recursive: true });

// Each run of lines the patch adds to an ES module source must be in the copy, as it is.
const patch = readFileSync(join(root, '.patches', patchName), 'utf8');
for (const section of patch.split(/^diff --git /m).slice(1)) {
  const file = /^a\/node_modules\/postgres\/src\/(\S+)/.exec(section)?.[1];
  if (!file) continue; // the CommonJS build, which tokengate does not load
  const copied = readFileSync(join(vendorDir, file), 'utf8');
  for (const block of addedRuns(section)) {
    if (!copied.includes(block)) fail(`node_modules/postgres/src/${file} lacks the fix of .patches/${patchName} (\`npm ci\` applies it; or run \`npx patch-package --patch-dir .patches\`): refusing to ship an unpatched driver`);
  }
}

// Names the copy for whoever audits node_modules; "type" keeps its files ES modules.
const manifest = {
  name: 'postgres',
  version,
  description: `postgres.js ${version} src/ with .patches/${patchName} applied (porsager/postgres#1154, #1208), the driver tokengate runs`,
  license: 'Unlicense',
  homepage: 'https://github.com/porsager/postgres',
  type: 'module',
};
writeFileSync(join(vendorDir, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`);

// Then the TypeScript: after the driver, so that a build without the fix stops before compiling anything.
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const compiled = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.build.json'], { cwd: root, stdio: 'inherit' });
if (compiled.status !== 0) process.exit(compiled.status ?? 1);

await buildDashboard();

/**
 * The dashboard's page (src/dashboard/): one minified script and one stylesheet, named by their
 * hash so that browsers may keep them, each beside its gzip; the page names both. No file is fetched
 * from anywhere at run time.
 */
async function buildDashboard() {
  // Loaded here: the driver's checks above run without it.
  const { build } = await import('esbuild');
  const source = join(root, 'src/dashboard');
  const out = join(dist, 'dashboard');
  mkdirSync(out, { recursive: true });
  const bundled = await build({
    entryPoints: [join(source, 'main.tsx')],
    bundle: true,
    minify: true,
    format: 'iife',
    target: 'es2022',
    jsx: 'automatic',
    jsxImportSource: 'preact',
    legalComments: 'none',
    write: false,
    logLevel: 'warning',
  });
  const script = bundled.outputFiles[0]?.contents;
  if (!script) throw new Error('build: the dashboard bundle is empty');
  const styles = await build({
    stdin: { contents: `@import "uplot/dist/uPlot.min.css";\n@import "./style.css";`, resolveDir: source, loader: 'css' },
    bundle: true,
    minify: true,
    write: false,
    logLevel: 'warning',
  });
  const style = styles.outputFiles[0]?.contents;
  if (!style) throw new Error('build: the dashboard stylesheet is empty');
  const files = { script: hashed('app', '.js', script), style: hashed('app', '.css', style) };
  const page = readFileSync(join(source, 'index.html'), 'utf8').replace('{{script}}', files.script).replace('{{style}}', files.style);
  const written = { [files.script]: script, [files.style]: style, 'index.html': Buffer.from(page) };
  for (const [name, body] of Object.entries(written)) {
    writeFileSync(join(out, name), body);
    writeFileSync(join(out, `${name}.gz`), gzipSync(body, { level: 9 }));
  }
  writeFileSync(join(out, 'manifest.json'), `${JSON.stringify({ files: Object.keys(written) }, null, 2)}\n`);
}

/**
 * @param {string} name
 * @param {string} extension
 * @param {Uint8Array} body
 */
function hashed(name, extension, body) {
  return `${name}-${createHash('sha256').update(body).digest('hex').slice(0, 12)}${extension}`;
}

/**
 * The runs of consecutive lines a patch section adds, each joined into one block.
 * @param {string} section
 */
function addedRuns(section) {
  /** @type {string[]} */
  const runs = [];
  /** @type {string[]} */
  let run = [];
  for (const line of section.split('\n')) {
    if (line.startsWith('+') && !line.startsWith('+++')) {
      run.push(line.slice(1));
    } else if (run.length > 0) {
      runs.push(run.join('\n'));
      run = [];
    }
  }
  if (run.length > 0) runs.push(run.join('\n'));
  return runs;
}
