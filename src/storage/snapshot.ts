// The key snapshot: keys, limits, expiry, totals and window buckets, replaced atomically on disk.
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { KeyRecord } from './types.js';
import { parseWeights } from '../usage/weights.js';
import { parseStoredLimits } from '../keys/limits.js';
import { LEGACY } from '../quota/limits.js';

export const SNAPSHOT_FILE = 'snapshot.json';
const FORMAT = 'tokengate-snapshot';

export interface SnapshotKey extends KeyRecord {
  keyHash: string;
  /** [bucket start, tokens] pairs of the `5h` limit's buckets that may still count (a key without limits of its own has only these). */
  buckets: [number, number][];
  /** The same pairs for each of the key's other limits, by limit name. */
  limitBuckets?: Record<string, [number, number][]>;
}

export interface Snapshot {
  /** Journal generations up to this one are included in the snapshot's numbers. */
  journalGeneration: number;
  writtenAt: number;
  keys: SnapshotKey[];
}

export class SnapshotError extends Error {}

/** The snapshot in `dir`; undefined when there is none; a SnapshotError when it cannot be read. */
export function readSnapshot(dir: string): Snapshot | undefined {
  const path = join(dir, SNAPSHOT_FILE);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new SnapshotError(`${path} is not valid JSON (${(error as Error).message})`);
  }
  const snapshot = value as Partial<Snapshot> & { format?: unknown };
  if (snapshot?.format !== FORMAT || !Array.isArray(snapshot.keys) || !Number.isSafeInteger(snapshot.journalGeneration)) {
    throw new SnapshotError(`${path} is not a tokengate snapshot`);
  }
  for (const [index, key] of snapshot.keys.entries()) {
    if (!validKey(key)) throw new SnapshotError(`${path}: key ${index} is malformed`);
  }
  // Snapshots written before keys had weights or limits of their own: those keys have none.
  const keys = snapshot.keys.map((key) => ({ ...key, tokenWeights: key.tokenWeights ?? null, limits: key.limits ?? null }));
  return { journalGeneration: snapshot.journalGeneration!, writtenAt: Number(snapshot.writtenAt), keys };
}

const isInt = (value: unknown): boolean => Number.isSafeInteger(value);

function validKey(key: SnapshotKey | undefined): boolean {
  return (
    typeof key?.id === 'string' &&
    typeof key.keyHash === 'string' &&
    typeof key.keyPrefix === 'string' &&
    typeof key.name === 'string' &&
    (key.model === null || typeof key.model === 'string') &&
    (key.tokenWeights === null || key.tokenWeights === undefined || weightsText(key.tokenWeights)) &&
    (key.limits === null || key.limits === undefined || limitsText(key.limits)) &&
    [key.tokenLimit, key.expiresAt, key.createdAt, key.totalLifetimeTokens, key.totalRequests].every(isInt) &&
    (key.lastUsedAt === null || isInt(key.lastUsedAt)) &&
    bucketPairs(key.buckets) &&
    (key.limitBuckets === undefined || (typeof key.limitBuckets === 'object' && key.limitBuckets !== null && Object.values(key.limitBuckets).every(bucketPairs)))
  );
}

function bucketPairs(value: unknown): boolean {
  return Array.isArray(value) && value.every((bucket) => Array.isArray(bucket) && isInt(bucket[0]) && isInt(bucket[1]));
}

function limitsText(value: unknown): boolean {
  try {
    return typeof value === 'string' && parseStoredLimits(value).length > 0;
  } catch {
    return false;
  }
}

function weightsText(value: unknown): boolean {
  try {
    return typeof value === 'string' && parseWeights(value, 'tokenWeights') !== undefined;
  } catch {
    return false;
  }
}

/** Writes the snapshot to a temporary file, fsyncs it, renames it over the old one and fsyncs the directory. */
export function writeSnapshot(dir: string, snapshot: Snapshot): void {
  const path = join(dir, SNAPSHOT_FILE);
  const temporary = `${path}.${process.pid}.tmp`;
  const fd = openSync(temporary, 'w', 0o600); // owner only: it holds key digests and usage
  try {
    writeSync(fd, JSON.stringify({ format: FORMAT, ...snapshot }));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temporary, path);
  const dirFd = openSync(dir, 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

/** Moves an unreadable snapshot aside, so that writing a new one never destroys what might be recovered. */
export function setAsideSnapshot(dir: string, now: number): string {
  const aside = join(dir, `snapshot.corrupt-${now}.json`);
  renameSync(join(dir, SNAPSHOT_FILE), aside);
  return aside;
}

/** A key as stored, with its digest: a snapshot key without its buckets. */
export type StoredKey = Omit<SnapshotKey, 'buckets'>;

/** A stored bucket; `limit` absent means the `5h` limit's. */
export interface StoredBucket {
  keyId: string;
  limit?: string;
  start: number;
  tokens: number;
}

/** Stored keys and their buckets joined into snapshot keys. */
export function withBuckets(keys: StoredKey[], buckets: StoredBucket[]): SnapshotKey[] {
  const byKey = new Map<string, Map<string, [number, number][]>>();
  for (const bucket of buckets) {
    let limits = byKey.get(bucket.keyId);
    if (!limits) byKey.set(bucket.keyId, (limits = new Map()));
    const name = bucket.limit ?? LEGACY;
    let list = limits.get(name);
    if (!list) limits.set(name, (list = []));
    list.push([bucket.start, bucket.tokens]);
  }
  return keys.map((key) => {
    const { [LEGACY]: legacy = [], ...others } = Object.fromEntries(byKey.get(key.id) ?? []);
    return Object.keys(others).length > 0 ? { ...key, buckets: legacy, limitBuckets: others } : { ...key, buckets: legacy };
  });
}
