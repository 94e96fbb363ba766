// The file store (STORAGE=file) opened on a temp directory in a test: its files, and usage charged the way the gate does.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { onTestFinished } from 'vitest';
import type { Logger } from '../../src/types.js';
import { FileStorage } from '../../src/storage/file.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger } from './gate.js';

export const WINDOW = 5 * 3600_000;
export const SNAPSHOT = 'snapshot.json';
const JOURNAL = /^journal-\d{8}\.ndjson$/;

/** Stores a test opened and has not closed yet. */
const opened = new Set<Storage>();

/** Closes the store when the test ends, unless the test closed it itself (a second close would release a lock a newer store holds). */
export function closeAtEnd<T extends Storage>(storage: T): T {
  opened.add(storage);
  onTestFinished(async () => {
    if (opened.delete(storage)) await storage.close().catch(() => undefined);
  });
  return storage;
}

export function open(dir: string, options: { role?: 'standalone' | 'fallback'; logger?: Logger } = {}): FileStorage {
  return closeAtEnd(FileStorage.open({ dir, role: options.role ?? 'standalone', logger: options.logger ?? quietLogger() }));
}

export async function close(storage: Storage): Promise<void> {
  opened.delete(storage);
  await storage.close();
}

/** Admits then settles one request, the way the gate does. */
export async function charge(storage: Storage, keyId: string, requestId: string, tokens: number, at: number): Promise<void> {
  const admission = await storage.admit({ keyId, tokenLimit: 1_000_000_000, estimate: 1, requestId, now: at, windowMs: WINDOW });
  if (!admission.admitted) throw new Error(`${requestId} was not admitted`);
  await storage.settle(admission.reservation, { id: requestId, keyId, tokens, at });
}

export const journalFiles = (dir: string): string[] => readdirSync(dir).filter((name) => JOURNAL.test(name)).sort();

/** Every data file of the directory, name → bytes (the lock file only says who has it open). */
export function filesOf(dir: string): Map<string, Buffer> {
  return new Map(
    readdirSync(dir)
      .filter((name) => name !== 'lock')
      .sort()
      .map((name) => [name, readFileSync(join(dir, name))]),
  );
}
