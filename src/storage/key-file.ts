// The JSON key file of the earlier file-based gateway: parsed, validated in full, turned into snapshot keys.
import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import { digestKey, keyPrefix, keyProblem } from '../keys/secret.js';
import { bucketStart, countsAfter } from '../quota/window.js';
import type { SnapshotKey } from './snapshot.js';

interface Entry {
  key?: unknown;
  name?: unknown;
  model?: unknown;
  token_limit_per_5h?: unknown;
  expiry_date?: unknown;
  created_at?: unknown;
  last_used?: unknown;
  total_lifetime_tokens?: unknown;
  usage_windows?: unknown;
}

/** Milliseconds from an ISO date string or epoch milliseconds; NaN when it is neither. */
function time(value: unknown): number {
  if (typeof value === 'number') return Number.isSafeInteger(value) ? value : Number.NaN;
  return typeof value === 'string' && /^\d{4}-\d{2}-\d{2}/.test(value) ? Date.parse(value) : Number.NaN;
}

const count = (value: unknown): boolean => Number.isSafeInteger(value) && (value as number) >= 0;

/**
 * Reads `{"keys":[…]}` and returns its keys (hashed, with their usage still inside the window), or
 * throws one ConfigError listing every problem by entry index and field; nothing is half-read.
 */
export function readKeyFile(path: string, now: number, windowMs: number): SnapshotKey[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    throw new ConfigError(`key file ${path} cannot be read: ${(error as Error).message}`);
  }
  const entries = (parsed as { keys?: unknown })?.keys;
  if (!Array.isArray(entries)) throw new ConfigError(`key file ${path} has no "keys" array`);
  const problems: string[] = [];
  const seen = new Map<string, number>();
  const keys = entries.map((raw: Entry, index): SnapshotKey | undefined => {
    const problem = (field: string, what: string): undefined => void problems.push(`keys[${index}].${field}: ${what}`);
    if (typeof raw !== 'object' || raw === null) return problem('', 'not an object');
    if (typeof raw.key !== 'string' || keyProblem(raw.key)) problem('key', typeof raw.key === 'string' ? keyProblem(raw.key)! : 'missing');
    else if (seen.has(raw.key)) problem('key', `duplicate of keys[${seen.get(raw.key)}]`);
    else seen.set(raw.key, index);
    if (typeof raw.name !== 'string' || raw.name.trim() === '') problem('name', 'missing');
    if (!Number.isSafeInteger(raw.token_limit_per_5h) || (raw.token_limit_per_5h as number) <= 0) problem('token_limit_per_5h', 'not a positive integer');
    if (Number.isNaN(time(raw.expiry_date))) problem('expiry_date', 'not a date');
    if (raw.created_at != null && Number.isNaN(time(raw.created_at))) problem('created_at', 'not a date');
    if (raw.last_used != null && Number.isNaN(time(raw.last_used))) problem('last_used', 'not a date');
    if (raw.total_lifetime_tokens != null && !count(raw.total_lifetime_tokens)) problem('total_lifetime_tokens', 'not a non-negative integer');
    const windows = raw.usage_windows ?? [];
    if (!Array.isArray(windows)) return problem('usage_windows', 'not an array');
    const buckets = new Map<number, number>();
    windows.forEach((window: { window_start?: unknown; tokens_used?: unknown }, w) => {
      const start = time(window?.window_start);
      if (Number.isNaN(start)) return problem(`usage_windows[${w}].window_start`, 'not a date');
      if (!count(window.tokens_used)) return problem(`usage_windows[${w}].tokens_used`, 'not a non-negative integer');
      if (start <= countsAfter(now, windowMs)) return; // out of the window: only the lifetime total keeps it
      const bucket = bucketStart(start);
      buckets.set(bucket, (buckets.get(bucket) ?? 0) + (window.tokens_used as number));
    });
    if (problems.length > 0) return undefined;
    const key = raw.key as string;
    const keyHash = digestKey(key);
    return {
      id: `key_${keyHash.slice(0, 16)}`,
      keyHash,
      keyPrefix: keyPrefix(key),
      name: raw.name as string,
      model: typeof raw.model === 'string' && raw.model !== '' ? raw.model : null,
      tokenLimit: raw.token_limit_per_5h as number,
      expiresAt: time(raw.expiry_date),
      createdAt: raw.created_at == null ? now : time(raw.created_at),
      lastUsedAt: raw.last_used == null ? null : time(raw.last_used),
      totalLifetimeTokens: (raw.total_lifetime_tokens as number | undefined) ?? 0,
      totalRequests: 0,
      buckets: [...buckets].sort((a, b) => a[0] - b[0]),
    };
  });
  if (problems.length > 0) throw new ConfigError(`key file ${path} has ${problems.length} problem(s), nothing was loaded: ${problems.join('; ')}`);
  return keys as SnapshotKey[];
}
