// Structured JSON logs (pino), with every place a key or token could appear redacted.
import { pino, type Logger as PinoLogger, type DestinationStream } from 'pino';
import { logLevel } from './config.js';

// Top level and one level down (`{ key }`, `{ created: { key } }`), and request headers wherever logged.
const SECRETS = ['key', 'apiKey', 'api_key', 'adminToken', 'admin_token', 'token', 'password', 'authorization', 'x-api-key'];
const REDACT = [
  ...SECRETS.flatMap((name) => [`["${name}"]`, `*["${name}"]`]),
  'headers.authorization',
  'headers["x-api-key"]',
  '*.headers.authorization',
  '*.headers["x-api-key"]',
];

/**
 * A pino logger at `level`, writing to stdout unless told otherwise. The default is `LOG_LEVEL`, then
 * info: the one variable the library reads besides createStorage()'s three, so that a host app's
 * own LOG_LEVEL quiets tokengate's default logger too.
 */
export function createLogger(destination?: DestinationStream, level: string = logLevel(process.env) ?? 'info'): PinoLogger {
  const options = { name: 'tokengate', level, redact: { paths: REDACT, censor: '[redacted]' } };
  return destination ? pino(options, destination) : pino(options);
}

let shared: PinoLogger | undefined;

/** The process-wide default logger, made on first use. */
export function defaultLogger(): PinoLogger {
  shared ??= createLogger();
  return shared;
}
