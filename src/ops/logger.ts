// Structured JSON logs (pino), with every place a key or token could appear redacted.
import { pino, type Logger as PinoLogger, type DestinationStream } from 'pino';

/** What tokengate logs through: any pino logger fits. */
export type Logger = Pick<PinoLogger, 'debug' | 'info' | 'warn' | 'error'>;

// Top level and one level down (`{ key }`, `{ created: { key } }`), and request headers wherever logged.
const SECRETS = ['key', 'apiKey', 'api_key', 'adminToken', 'admin_token', 'token', 'password', 'authorization', 'x-api-key'];
const REDACT = [
  ...SECRETS.flatMap((name) => [`["${name}"]`, `*["${name}"]`]),
  'headers.authorization',
  'headers["x-api-key"]',
  '*.headers.authorization',
  '*.headers["x-api-key"]',
];

/** A pino logger at `level` (default `LOG_LEVEL`, then info), writing to stdout unless told otherwise. */
export function createLogger(destination?: DestinationStream, level = process.env.LOG_LEVEL ?? 'info'): PinoLogger {
  const options = { name: 'tokengate', level, redact: { paths: REDACT, censor: '[redacted]' } };
  return destination ? pino(options, destination) : pino(options);
}

let shared: PinoLogger | undefined;

/** The process-wide default logger, made on first use. */
export function defaultLogger(): PinoLogger {
  shared ??= createLogger();
  return shared;
}
