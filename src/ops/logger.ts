// Structured JSON logs (pino), with every place a key or token could appear redacted.
import { pino, type Logger as PinoLogger, type DestinationStream } from 'pino';

/** What tokengate logs through: any pino logger fits. */
export type Logger = Pick<PinoLogger, 'debug' | 'info' | 'warn' | 'error'>;

const REDACT = [
  'key',
  'apiKey',
  'adminToken',
  'authorization',
  'headers.authorization',
  'headers["x-api-key"]',
  'req.headers.authorization',
  'req.headers["x-api-key"]',
];

/** A pino logger at `LOG_LEVEL` (default info), writing to stdout unless told otherwise. */
export function createLogger(destination?: DestinationStream): PinoLogger {
  const options = { name: 'tokengate', level: process.env.LOG_LEVEL ?? 'info', redact: { paths: REDACT, censor: '[redacted]' } };
  return destination ? pino(options, destination) : pino(options);
}

let shared: PinoLogger | undefined;

/** The process-wide default logger, made on first use. */
export function defaultLogger(): PinoLogger {
  shared ??= createLogger();
  return shared;
}
