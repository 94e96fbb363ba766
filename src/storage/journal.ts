// The append-only usage journal: one file per generation, appended and fsynced in groups.
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, unlinkSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../ops/logger.js';
import type { UsageRecord } from './types.js';

const FILE = /^journal-(\d{8})\.ndjson$/;
const fileName = (generation: number): string => `journal-${String(generation).padStart(8, '0')}.ndjson`;

export interface JournalFile {
  generation: number;
  records: UsageRecord[];
}

/** Reads one journal file, keeping every line that parses; a torn last line is skipped with a warning. */
export function readJournalFile(path: string, logger: Logger): UsageRecord[] {
  const text = readFileSync(path, 'utf8');
  const lines = text.split('\n');
  const tail = lines.pop() ?? '';
  if (tail !== '') logger.warn({ file: path, bytes: Buffer.byteLength(tail) }, 'journal ends in a torn line (a write cut short); skipped');
  const records: UsageRecord[] = [];
  lines.forEach((line, index) => {
    if (line === '') return;
    const record = parseRecord(line);
    if (record) records.push(record);
    else logger.error({ file: path, line: index + 1 }, 'journal line is not a usage record; skipped, the other lines are kept');
  });
  return records;
}

function parseRecord(line: string): UsageRecord | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  const { id, keyId, tokens, at } = (value ?? {}) as Record<string, unknown>;
  const valid =
    typeof id === 'string' && id !== '' && typeof keyId === 'string' && Number.isSafeInteger(tokens) && (tokens as number) >= 0 && Number.isSafeInteger(at);
  return valid ? { id, keyId, tokens: tokens as number, at: at as number } : undefined;
}

/**
 * Appends go to the current generation's file; `rotate()` starts a new one so that the finished
 * files can be replayed (or folded into the snapshot) and then deleted, one whole file at a time.
 */
export class Journal {
  private readonly handles = new Map<number, { file: FileHandle; size: number }>();
  private pending: { generation: number; line: string; done: () => void; fail: (error: Error) => void }[] = [];
  private flushing: Promise<void> = Promise.resolve();
  private scheduled = false;
  private current: number;

  private constructor(
    private readonly dir: string,
    generation: number,
  ) {
    this.current = generation;
  }

  /** Opens the journal in `dir`, starting a generation after every file already there and after `after`. */
  static open(dir: string, after: number): Journal {
    mkdirSync(dir, { recursive: true });
    const newest = Math.max(after, ...Journal.generations(dir));
    return new Journal(dir, newest + 1);
  }

  /** Generations with a file in `dir`, oldest first. */
  static generations(dir: string): number[] {
    return readdirSync(dir)
      .map((name) => FILE.exec(name)?.[1])
      .filter((match): match is string => match !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
  }

  /** The generation appends go to now. */
  get generation(): number {
    return this.current;
  }

  /** Appends a record to the current generation; resolves once it is on disk (fsynced with its group). */
  append(record: UsageRecord): Promise<void> {
    const line = `${JSON.stringify({ id: record.id, keyId: record.keyId, tokens: record.tokens, at: record.at })}\n`;
    return new Promise((done, fail) => {
      this.pending.push({ generation: this.current, line, done, fail });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => {
          this.scheduled = false;
          this.flushing = this.flushing.then(() => this.flush());
        });
      }
    });
  }

  private async flush(): Promise<void> {
    const group = this.pending;
    this.pending = [];
    for (const generation of new Set(group.map((entry) => entry.generation))) {
      const entries = group.filter((entry) => entry.generation === generation);
      let handle: { file: FileHandle; size: number } | undefined;
      try {
        handle = this.handles.get(generation) ?? (await this.openGeneration(generation));
        // appendFile writes every byte or throws (a short write on a full disk is retried, not dropped).
        const data = Buffer.from(entries.map((entry) => entry.line).join(''));
        await handle.file.appendFile(data);
        await handle.file.datasync();
        handle.size += data.length;
        for (const entry of entries) entry.done();
      } catch (error) {
        // Cut off what part of the group did reach the file, so the next group starts on a clean line.
        await handle?.file.truncate(handle.size).catch(() => undefined);
        for (const entry of entries) entry.fail(error as Error);
      }
    }
  }

  private async openGeneration(generation: number): Promise<{ file: FileHandle; size: number }> {
    const file = await open(join(this.dir, fileName(generation)), 'a');
    const handle = { file, size: (await file.stat()).size };
    this.handles.set(generation, handle);
    // The new file's name must survive a crash too: fsync the directory that holds it.
    const dirFd = openSync(this.dir, 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
    return handle;
  }

  /** Waits until every append made so far is on disk. */
  async drain(): Promise<void> {
    while (this.pending.length > 0 || this.scheduled) {
      await new Promise((resolve) => setImmediate(resolve));
      await this.flushing;
    }
    await this.flushing;
  }

  /**
   * Starts the next generation, at once: appends made before this call belong to the finished one
   * (returned), appends after it to the next. `drain()` then waits for the finished one to be on disk.
   */
  rotate(): number {
    return this.current++;
  }

  read(generation: number, logger: Logger): UsageRecord[] {
    try {
      return readJournalFile(join(this.dir, fileName(generation)), logger);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
  }

  /** Deletes a generation's file (after it was replayed or folded into the snapshot). */
  async remove(generation: number): Promise<void> {
    await this.handles.get(generation)?.file.close();
    this.handles.delete(generation);
    try {
      unlinkSync(join(this.dir, fileName(generation)));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
  }

  async close(): Promise<void> {
    await this.drain();
    for (const handle of this.handles.values()) await handle.file.close();
    this.handles.clear();
  }
}
