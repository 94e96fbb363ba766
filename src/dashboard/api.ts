// The page's calls to its own API: the key or the admin token goes in the Authorization header, never in a URL.
import type { KeyView, LimitStats } from '../keys/view.js';
import type { UsageView } from '../keys/usage-view.js';

export type { LimitStats, UsageView };
export type { LimitUsage } from '../keys/usage-view.js';

/** An answer other than 2xx, with the error envelope's code and message. */
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** A key in `GET api/admin/keys?usage=1`: its record, each limit with where its window stands. */
export type AdminKey = Omit<KeyView, 'limits'> & { limits: LimitStats[] };

/** `path` relative to the page (so the page works wherever it is mounted), as JSON. */
export async function call<T>(path: string, token: string, method = 'GET', body?: unknown): Promise<T> {
  const headers: Record<string, string> = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response: Response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store', credentials: 'omit' });
  } catch {
    throw new ApiError(0, 'unreachable', 'The server cannot be reached.');
  }
  const text = await response.text();
  let json: unknown;
  try {
    json = text === '' ? {} : JSON.parse(text);
  } catch {
    throw new ApiError(response.status, 'invalid_response', `The server answered ${response.status} with something that is not JSON.`);
  }
  if (!response.ok) {
    const error = (json as { error?: { code?: string; message?: string } }).error;
    throw new ApiError(response.status, error?.code ?? 'error', error?.message ?? `The server answered ${response.status}.`);
  }
  return json as T;
}
