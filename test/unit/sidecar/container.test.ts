// The container files, checked for what a Docker engine would only reveal at build or run time.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '../../..');
const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const compose = readFileSync(join(ROOT, 'examples/sidecar/compose.yaml'), 'utf8');
const instructions = dockerfile
  .replace(/\\\n/g, ' ')
  .split('\n')
  .filter((line) => /^[A-Z]+\s/.test(line));
const runtime = instructions.slice(instructions.findLastIndex((line) => line.startsWith('FROM ')));

describe('Dockerfile', () => {
  it('builds in one stage and runs from a second, as a non-root user', () => {
    expect(instructions.filter((line) => line.startsWith('FROM '))).toHaveLength(2);
    expect(dockerfile).toMatch(/npm prune --omit=dev/);
    const user = runtime.find((line) => line.startsWith('USER '));
    expect(user).toBeDefined();
    expect(user).not.toMatch(/\b(root|0)\s*$/);
  });

  it('checks /healthz with node, exposes 8080, keeps its data on the /data volume', () => {
    expect(runtime.find((line) => line.startsWith('HEALTHCHECK '))).toMatch(/CMD \["node", .*\/healthz/);
    expect(runtime).toContain('EXPOSE 8080');
    expect(runtime.find((line) => line.startsWith('VOLUME '))).toContain('"/data"');
    expect(dockerfile).toMatch(/DATABASE_PATH=\/data\//);
    expect(dockerfile).toMatch(/FALLBACK_DIR=\/data\//);
    expect(dockerfile).toMatch(/BACKUP_DIR=\/data\//);
    expect(runtime.find((line) => line.startsWith('ENTRYPOINT '))).toContain('dist/src/cli/main.js');
    expect(runtime.find((line) => line.startsWith('CMD '))).toContain('"serve"');
  });

  it('copies only paths that exist in the repository, none that .dockerignore hides', () => {
    const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').filter((line) => line && !line.startsWith('#'));
    const copied = instructions
      .filter((line) => line.startsWith('COPY ') && !line.includes('--from='))
      .flatMap((line) => line.split(/\s+/).slice(1, -1));
    expect(copied.length).toBeGreaterThan(0);
    for (const path of copied) {
      expect(existsSync(join(ROOT, path)), path).toBe(true);
      expect(ignored, path).not.toContain(path);
    }
  });
});

describe('the production dependencies the image keeps', () => {
  it('hold every package the built code imports (npm prune --omit=dev removes dev-only ones)', () => {
    const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
    const files = ['dist/src', 'dist/middleware'].flatMap((dir) =>
      (readdirSync(join(ROOT, dir), { recursive: true }) as string[]).filter((f) => f.endsWith('.js')).map((f) => join(ROOT, dir, f)),
    );
    expect(files.length).toBeGreaterThan(10);
    const imported = new Set<string>();
    for (const file of files) {
      for (const [, specifier] of readFileSync(file, 'utf8').matchAll(/(?:from|import\()\s*['"]([^'".][^'"]*)['"]/g)) {
        if (specifier!.startsWith('node:') || specifier!.startsWith('#')) continue; // '#…': the package's own files (package.json "imports")
        const parts = specifier!.split('/');
        imported.add(specifier!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!);
      }
    }
    expect(imported).toContain('express');
    for (const name of imported) {
      const entry = lock.packages[`node_modules/${name}`];
      expect(entry, name).toBeDefined();
      expect(entry?.dev, `${name} is dev-only, so the image would not have it`).not.toBe(true);
    }
  });
});

describe('examples/sidecar/compose.yaml', () => {
  it('waits for a healthy PostgreSQL and provisions Prometheus and Grafana from examples/observability', () => {
    expect(compose).toMatch(/condition: service_healthy/);
    expect(compose).toMatch(/pg_isready/);
    expect(compose).toContain('../observability/prometheus.yml:/etc/prometheus/prometheus.yml');
    // prometheus.yml names alerts.yml relative to itself; a missing file would silently load no rules.
    expect(compose).toContain('../observability/alerts.yml:/etc/prometheus/alerts.yml');
    expect(compose).toContain('../observability/grafana-dashboard.json:');
    for (const file of ['grafana/datasource.yaml', 'grafana/dashboards.yaml']) expect(existsSync(join(ROOT, 'examples/sidecar', file)), file).toBe(true);
  });
});
