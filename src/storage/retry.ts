// Retries of transient database failures (p-retry), and the typed error for everything else.
import pRetry, { AbortError } from 'p-retry';
import { StorageError, TokenGateError } from '../errors.js';

// SQLSTATE classes and driver codes of failures that another attempt may get past: the server shut
// down or restarted (57P01-57P03), a connection broke (08xxx, sockets), the host cannot be resolved
// or reached (DNS, routes), serialization failures and deadlocks (40001, 40P01), too many
// connections (53300), a server out of disk or memory (53100, 53200) or read-only (25006, a standby):
// it cannot take usage now, so the gate journals it until it can.
const TRANSIENT = new Set([
  '57P01', '57P02', '57P03', '40001', '40P01', '53300', '53100', '53200', '25006', '08000', '08001', '08003', '08004', '08006',
  'ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ENETDOWN',
  'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'CONNECT_TIMEOUT',
]);

/** The SQLSTATE or driver code of an error, looking through wrappers such as Drizzle's query error. */
export function errorCode(error: unknown): string | undefined {
  for (let e: unknown = error, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && code !== '') return code;
  }
  return undefined;
}

export function isTransient(error: unknown): boolean {
  const code = errorCode(error);
  return code !== undefined && TRANSIENT.has(code);
}

/** A small, bounded budget: a request must not wait long on a database that is gone. */
const RETRY = { retries: 2, minTimeout: 20, maxTimeout: 100, factor: 3 };

/**
 * Runs `attempt`, again on transient failures (within the budget). Errors of tokengate's own pass
 * through; any other failure becomes a StorageError naming the operation.
 */
export async function withRetry<T>(operation: string, attempt: () => Promise<T>): Promise<T> {
  try {
    return await pRetry(
      async () => {
        try {
          return await attempt();
        } catch (error) {
          throw isTransient(error) ? error : new AbortError(error as Error);
        }
      },
      RETRY,
    );
  } catch (error) {
    if (error instanceof TokenGateError) throw error;
    const code = errorCode(error);
    const cause = error instanceof Error ? (error.cause instanceof Error ? error.cause.message : error.message) : String(error);
    throw new StorageError(`PostgreSQL ${operation} failed: ${cause}${code ? ` (${code})` : ''}`, isTransient(error), { cause: error });
  }
}
