// The example Prometheus config, alert rules and Grafana dashboard parse, and query only metrics tokengate exposes.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { createMetrics } from '../../../src/ops/metrics.js';

const DIR = join(import.meta.dirname, '../../../examples/observability');
const read = (name: string): string => readFileSync(join(DIR, name), 'utf8');

/** Every series name createMetrics() exposes (with per-key labels), histograms by their sample names. */
async function exposedNames(): Promise<Set<string>> {
  const metrics = await createMetrics({ perKeyLabels: true, defaultMetrics: false }).registry.getMetricsAsJSON();
  return new Set(metrics.flatMap((m) => (String(m.type) === 'histogram' ? ['_bucket', '_sum', '_count'].map((suffix) => m.name + suffix) : [m.name])));
}

/** The tokengate metric names a PromQL expression refers to. */
const namesIn = (expr: string): string[] => expr.match(/\btokengate_[a-z_]+/g) ?? [];

describe('examples/observability', () => {
  it('has a Grafana dashboard whose every panel queries existing tokengate metrics', async () => {
    const dashboard = JSON.parse(read('grafana-dashboard.json')) as { title: string; panels: { title: string; targets: { expr: string }[] }[] };
    const exposed = await exposedNames();
    expect(dashboard.panels.length).toBeGreaterThanOrEqual(8);
    for (const panel of dashboard.panels) {
      expect(panel.targets.length, panel.title).toBeGreaterThan(0);
      for (const { expr } of panel.targets) {
        expect(namesIn(expr).length, `${panel.title}: ${expr}`).toBeGreaterThan(0);
        for (const name of namesIn(expr)) expect(exposed, `${panel.title}: ${name}`).toContain(name);
      }
    }
    // Provisioned from a file, a dashboard must name the datasource by the uid the provisioning gives
    // it (examples/sidecar/grafana/datasource.yaml): import-time placeholders stay unresolved there.
    const text = read('grafana-dashboard.json');
    expect(text).not.toContain('${');
    for (const uid of text.matchAll(/"uid":\s*"([^"]*)"/g)) if (/datasource/.test(text.slice(Math.max(0, uid.index - 80), uid.index))) expect(uid[1]).toBe('prometheus');
    const queried = new Set(dashboard.panels.flatMap((panel) => panel.targets.flatMap(({ expr }) => namesIn(expr))));
    for (const name of ['tokengate_requests_total', 'tokengate_tokens_total', 'tokengate_storage_operation_duration_seconds_bucket', 'tokengate_storage_up', 'tokengate_fallback_active', 'tokengate_journal_pending_records', 'tokengate_reserved_tokens']) {
      expect(queried).toContain(name);
    }
  });

  it('has alert rules on existing metrics, and a scrape config that loads them', async () => {
    const exposed = await exposedNames();
    const alerts = parse(read('alerts.yml')) as { groups: { rules: { alert: string; expr: string; for: string }[] }[] };
    const rules = alerts.groups.flatMap((group) => group.rules);
    expect(rules.map((rule) => rule.alert).sort()).toEqual([
      'TokengateFallbackActive',
      'TokengateHighRateLimited',
      'TokengateJournalGrowing',
      'TokengateJournalQuarantined',
      'TokengateRecordingFailing',
      'TokengateStorageDown',
    ]);
    expect(rules.find((rule) => rule.alert === 'TokengateFallbackActive')?.for).toBe('5m');
    for (const rule of rules) for (const name of namesIn(rule.expr)) expect(exposed, rule.alert).toContain(name);

    const prometheus = parse(read('prometheus.yml')) as { rule_files: string[]; scrape_configs: { job_name: string; metrics_path: string; static_configs: { targets: string[] }[] }[] };
    expect(prometheus.rule_files).toEqual(['alerts.yml']);
    expect(prometheus.scrape_configs[0]).toMatchObject({ job_name: 'tokengate', metrics_path: '/metrics', static_configs: [{ targets: ['tokengate:8080'] }] });
  });
});
