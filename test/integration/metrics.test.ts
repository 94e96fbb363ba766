// /metrics after a known sequence of requests through a real gate on SQLite: every counter exact.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { createMetrics, type TokenGateMetrics } from '../../src/ops/metrics.js';
import { post, startGate, type Gate } from '../helpers/gate.js';
import { scrape } from '../helpers/metrics.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';

describe('metrics of a gate', () => {
  let upstream: Upstream;
  let gate: Gate;
  let metrics: TokenGateMetrics;

  beforeAll(async () => {
    upstream = await startUpstream(json({ usage: { total_tokens: 7 } }));
    metrics = createMetrics({ perKeyLabels: true });
    gate = await startGate(upstream, { metrics, bodyLimit: 4096 });
  });
  afterAll(async () => {
    await gate.close();
    await upstream.close();
  });

  it('counts each outcome, charged tokens by source, storage timings, and reserves nothing once responses end', async () => {
    const roomy = await gate.createKey(100_000);
    const tight = await gate.createKey(5);
    const expiring = await gate.createKey(100_000, 1_000);

    for (let i = 0; i < 3; i++) expect((await post(gate, roomy.key)).status).toBe(200);
    upstream.respond = json({ answer: 'no usage in here' });
    expect((await post(gate, roomy.key)).status).toBe(200); // charged an estimate
    upstream.respond = json({ usage: { total_tokens: 7 } });
    expect((await post(gate, tight.key)).status).toBe(200); // partial reservation of 5, charged 7
    await gate.settled(tight.record.id, 1);
    expect((await post(gate, tight.key)).status).toBe(429);
    expect((await post(gate, undefined)).status).toBe(401);
    expect((await post(gate, 'tg-no-such-key-anywhere')).status).toBe(401);
    expect((await post(gate, 'k'.repeat(600))).status).toBe(401); // invalid format, no lookup
    expect((await post(gate, roomy.key, { pad: 'x'.repeat(8000) })).status).toBe(413); // not a decision: not counted
    gate.clock.advance(2_000);
    expect((await post(gate, expiring.key)).status).toBe(403);

    const settled = await gate.settled(roomy.record.id, 4);
    const estimated = settled.totalLifetimeTokens - 21;
    expect(estimated).toBeGreaterThan(0);
    await expect.poll(async () => (await scrape(`${gate.url}/metrics`)).value('tokengate_reserved_tokens'), { timeout: 10_000 }).toBe(0);

    const m = await scrape(`${gate.url}/metrics`);
    expect(m.contentType).toBe(metrics.registry.contentType);
    const requests = (outcome: string) => m.value('tokengate_requests_total', { outcome });
    expect({ admitted: requests('admitted'), unauthenticated: requests('unauthenticated'), expired: requests('expired'), rate_limited: requests('rate_limited'), unavailable: requests('unavailable') }).toEqual({
      admitted: 5,
      unauthenticated: 3,
      expired: 1,
      rate_limited: 1,
      unavailable: 0,
    });
    expect(m.value('tokengate_tokens_total', { source: 'reported' })).toBe(28);
    expect(m.value('tokengate_tokens_total', { source: 'estimated' })).toBe(estimated);
    expect(m.value('tokengate_key_requests_total', { key_id: roomy.record.id, outcome: 'admitted' })).toBe(4);
    expect(m.value('tokengate_key_requests_total', { key_id: tight.record.id, outcome: 'admitted' })).toBe(1);
    expect(m.value('tokengate_key_requests_total', { key_id: tight.record.id, outcome: 'rate_limited' })).toBe(1);
    expect(m.value('tokengate_key_requests_total', { key_id: expiring.record.id, outcome: 'expired' })).toBe(1);
    expect(m.value('tokengate_key_tokens_total', { key_id: roomy.record.id })).toBe(21 + estimated);
    expect(m.value('tokengate_key_tokens_total', { key_id: tight.record.id })).toBe(7);
    for (const [operation, count] of [['findKey', 8], ['admit', 6], ['settle', 5]] as const) {
      expect(m.value('tokengate_storage_operation_duration_seconds_count', { backend: 'sqlite', operation }), operation).toBe(count);
      expect(m.value('tokengate_storage_operation_duration_seconds_sum', { backend: 'sqlite', operation }), operation).toBeGreaterThan(0);
    }
    expect(m.value('tokengate_fallback_active')).toBe(0);
    expect(m.value('tokengate_journal_pending_records')).toBe(0);
    expect(m.value('process_cpu_user_seconds_total')).toBeGreaterThan(0);
    expect(m.text).not.toContain(roomy.key);
  });
});

describe('createMetrics', () => {
  it('adds to a registry the user passes, without registering the default metrics twice', async () => {
    const registry = new Registry();
    collectDefaultMetrics({ register: registry });
    const metrics = createMetrics({ registry });
    expect(metrics.registry).toBe(registry);
    const names = (await registry.getMetricsAsJSON()).map((metric) => metric.name);
    expect(names).toEqual(expect.arrayContaining(['process_cpu_user_seconds_total', 'tokengate_requests_total', 'tokengate_reserved_tokens']));
    expect(names.filter((name) => name === 'process_cpu_user_seconds_total')).toHaveLength(1);
  });

  it('leaves out default and per-key metrics unless asked', async () => {
    const names = (await createMetrics({ defaultMetrics: false }).registry.getMetricsAsJSON()).map((metric) => metric.name);
    expect(names.sort()).toEqual([
      'tokengate_fallback_active',
      'tokengate_journal_pending_records',
      'tokengate_journal_quarantined_files',
      'tokengate_recording_failures_total',
      'tokengate_requests_total',
      'tokengate_reserved_tokens',
      'tokengate_storage_operation_duration_seconds',
      'tokengate_storage_up',
      'tokengate_tokens_total',
      'tokengate_usage_unreadable_total',
    ]);
  });
});
