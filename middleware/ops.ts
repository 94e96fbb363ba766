// Handlers for operators: /metrics (Prometheus text), /healthz and /readyz (from the storage monitor).
import type { RequestHandler } from 'express';
import type { StorageMonitor } from '../src/ops/health.js';
import type { TokenGateMetrics } from '../src/ops/metrics.js';

/** The registry in the Prometheus text exposition format, with the registry's content type. */
export function metricsHandler(metrics: TokenGateMetrics): RequestHandler {
  return async (_req, res) => {
    try {
      const text = await metrics.registry.metrics();
      res.status(200).setHeader('content-type', metrics.registry.contentType);
      res.end(text);
    } catch (error) {
      res.status(500).setHeader('content-type', 'text/plain; charset=utf-8');
      res.end(`collecting metrics failed: ${(error as Error).message}\n`);
    }
  };
}

/** Liveness and storage state; reads the monitor's last probe, never the database. */
export function healthHandler(monitor: StorageMonitor): RequestHandler {
  return (_req, res) => {
    const { statusCode, body } = monitor.health();
    res.status(statusCode).setHeader('cache-control', 'no-store');
    res.json(body);
  };
}

/** 200 while the store (or its fallback) can decide requests, else 503. */
export function readyHandler(monitor: StorageMonitor): RequestHandler {
  return (_req, res) => {
    const { statusCode, body } = monitor.readiness();
    res.status(statusCode).setHeader('cache-control', 'no-store');
    res.json(body);
  };
}
