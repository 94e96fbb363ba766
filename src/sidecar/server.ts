// The sidecar: assembles the Express app (stats, admin, extra routes, gated proxy) and runs its lifecycle.
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type Express, type RequestHandler } from 'express';
import { Gauge } from 'prom-client';
import { tokenGate, type TokenGateMiddleware } from '../../middleware/gate.js';
import { statsHandler, statsUsageHandler } from '../../middleware/stats.js';
import { dashboardHandler } from './dashboard.js';
import { errorBody } from '../http/error-body.js';
import { healthHandler, metricsHandler, readyHandler } from '../../middleware/ops.js';
import { scheduleBackups, type BackupSchedule } from '../ops/backup-schedule.js';
import { monitorStorage, type StorageMonitor } from '../ops/health.js';
import { createLogger } from '../logger.js';
import type { Logger } from '../types.js';
import { createMetrics, type TokenGateMetrics } from '../ops/metrics.js';
import { createStorage, openAdminStore } from '../storage/create.js';
import type { Storage } from '../storage/types.js';
import { adminRouter } from './admin.js';
import type { SidecarConfig } from './config.js';
import { proxy as createProxy, type ProxyHandler } from './proxy.js';
import { connectRefusal, plainTargetsOnly } from './target.js';

export interface SidecarParts {
  config: SidecarConfig;
  storage: Storage;
  logger: Logger;
  metrics: TokenGateMetrics;
  monitor: StorageMonitor;
}

export interface SidecarApp {
  app: Express;
  gate: TokenGateMiddleware;
  proxy: ProxyHandler;
}

/**
 * The routes, in order: refusal of targets that cannot be forwarded, health, readiness and metrics,
 * /stats, /admin, /dashboard, then everything else gated and proxied.
 */
export function createSidecarApp(parts: SidecarParts): SidecarApp {
  const { config, storage, logger, metrics, monitor } = parts;
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.use(plainTargetsOnly);
  app.get('/healthz', healthHandler(monitor));
  app.get('/readyz', readyHandler(monitor));
  app.get('/metrics', metricsHandler(metrics));
  app.get('/stats', statsHandler({ storage, allowQueryKey: config.allowQueryKey, logger }));
  app.all('/stats', onlyGet);
  app.get('/stats/usage', statsUsageHandler({ storage, allowQueryKey: config.allowQueryKey, logger }));
  app.all('/stats/usage', onlyGet);
  app.use('/admin', adminRouter({ storage, adminToken: config.adminToken, logger }));
  app.use('/dashboard', dashboardHandler({ storage, adminToken: config.adminToken, logger }));
  const { bodyLimit, bodyTimeoutMs, bodyMemoryLimit, allowQueryKey, tokenWeights: weights } = config;
  // With OVERRIDE_MODEL the upstream gets the key's model: limits scoped to models match that one.
  const gate = tokenGate({ storage, logger, metrics, bodyLimit, bodyTimeoutMs, bodyMemoryLimit, allowQueryKey, weights, keyModelWins: config.overrideModel });
  const proxy = createProxy({
    target: config.upstreamUrl,
    apiKey: config.upstreamApiKey,
    authHeader: config.upstreamAuthHeader,
    timeoutMs: config.upstreamTimeoutMs,
    overrideModel: config.overrideModel,
    includeStreamUsage: config.includeStreamUsage,
    bodyLimit,
    logger,
  });
  app.use(gate, proxy);
  return { app, gate, proxy };
}

const onlyGet: RequestHandler = (req, res) => {
  res.setHeader('Allow', 'GET, HEAD');
  res.status(405).json(errorBody({ type: 'invalid_request_error', code: 'method_not_allowed', message: `${req.method} is not allowed on ${req.path}; use GET.` }));
};

export interface RunningSidecar {
  server: Server;
  port: number;
  /** Resolves when the sidecar has stopped and its storage is closed. */
  stopped: Promise<void>;
  /** Stops accepting, lets in-flight requests finish (up to SHUTDOWN_TIMEOUT_MS), records their usage, closes the storage. */
  shutdown(reason: string): Promise<void>;
}

/** Opens the storage, listens, and stops gracefully on SIGTERM or SIGINT. */
export async function runSidecar(config: SidecarConfig): Promise<RunningSidecar> {
  const logger = createLogger(undefined, config.logLevel ?? 'info');
  const storage = await createStorage({ ...config.storage, logger });
  const metrics = createMetrics();
  const monitor = monitorStorage(storage, { metrics, logger });
  const parts = createSidecarApp({ config, storage, logger, metrics, monitor });
  let server: Server;
  try {
    server = await listen(parts.app, config);
  } catch (error) {
    // Nothing may keep the process alive after it failed to start (a pool, the file store's lock).
    monitor.stop();
    await parts.proxy.close();
    await storage.close();
    throw error;
  }
  const backups = startBackups(config, metrics, logger);
  const responses = openResponses(server);
  const port = (server.address() as AddressInfo).port;
  logger.info({ host: config.host, port, upstream: config.upstreamUrl.origin, admin: config.adminToken !== undefined, backend: storage.backend }, 'tokengate sidecar listening');
  let stopping: Promise<void> | undefined;
  const shutdown = (reason: string): Promise<void> => {
    if (stopping) {
      logger.warn({ reason }, 'shutdown already under way; closing all connections now');
      server.closeAllConnections();
      return stopping;
    }
    stopping = drain({ server, responses, parts, storage, config, logger, reason, monitor, backups });
    return stopping;
  };
  const stopped = new Promise<void>((resolve, reject) => {
    const onSignal = (signal: NodeJS.Signals): void => void shutdown(signal).then(resolve, reject);
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  return { server, port, stopped, shutdown };
}

/** Listens on PORT and HOST; rejects when it cannot (the port is taken), under Express 4 and 5 alike. */
function listen(app: Express, config: SidecarConfig): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer(app);
    // Node gives CONNECT to this event, never to the app; without a listener it drops the connection unanswered.
    server.on('connect', (_req, socket) => socket.end(connectRefusal()));
    server.once('error', reject);
    server.listen(config.port, config.host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/** The responses still being written, kept so that shutdown can close each connection when its response is done. */
function openResponses(server: Server): Set<ServerResponse> {
  const open = new Set<ServerResponse>();
  server.on('request', (_req, res: ServerResponse) => {
    open.add(res);
    res.once('close', () => open.delete(res));
  });
  return open;
}

/** BACKUP_SCHEDULE's backups, each one's time in `tokengate_last_backup_timestamp_seconds`. */
function startBackups(config: SidecarConfig, metrics: TokenGateMetrics, logger: Logger): BackupSchedule | undefined {
  if (!config.backups) return undefined;
  const lastBackup = new Gauge({
    name: 'tokengate_last_backup_timestamp_seconds',
    help: 'When the last scheduled backup succeeded (Unix time); 0 until the first one.',
    registers: [metrics.registry],
  });
  lastBackup.set(0);
  return scheduleBackups({ ...config.backups, open: () => openAdminStore({ ...config.storage, logger }), logger, onSuccess: (atMs) => lastBackup.set(atMs / 1000) });
}

interface Draining {
  server: Server;
  responses: Set<ServerResponse>;
  parts: SidecarApp;
  storage: Storage;
  config: SidecarConfig;
  logger: Logger;
  reason: string;
  monitor: StorageMonitor;
  backups: BackupSchedule | undefined;
}

async function drain({ server, responses, parts, storage, config, logger, reason, monitor, backups }: Draining): Promise<void> {
  logger.info({ reason, timeoutMs: config.shutdownTimeoutMs }, 'shutting down: no new connections; finishing in-flight requests');
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  // Keep-alive connections would hold server.close() for their idle timeout: each one goes as soon
  // as it is idle, and requests that still arrive on one are told the connection closes after them.
  const closeIdle = (): void => void setImmediate(() => server.closeIdleConnections());
  server.closeIdleConnections();
  for (const res of responses) res.once('finish', closeIdle);
  server.prependListener('request', (_req, res: ServerResponse) => {
    res.setHeader('Connection', 'close');
    res.once('finish', closeIdle);
  });
  const deadline = setTimeout(() => {
    logger.warn({ timeoutMs: config.shutdownTimeoutMs }, 'in-flight requests did not finish in time; closing their connections');
    server.closeAllConnections();
  }, config.shutdownTimeoutMs);
  await closed;
  clearTimeout(deadline);
  // Every response has ended; its usage is recorded after that, so wait for the recording.
  await parts.gate.settled();
  await parts.proxy.close();
  monitor.stop();
  await backups?.stop();
  await storage.close();
  logger.info('tokengate sidecar stopped; usage recorded, storage closed');
}
