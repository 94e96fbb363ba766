// The append-only usage journal: one file per generation, each line checksummed, appended and fsynced in groups.
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../types.js';
import { GroupCommit } from '../quota/group-commit.js';
import type { UsageRecord } from './types.js';

const FILE = /^journal-(\d{8})\.ndjson$/;
const SET_ASIDE = /^journal-\d{8}\.quarantined-\d+\.ndjson$/;
const fileName = (generation: number): string => `journal-${String(generation).padStart(8, '0')}.ndjson`;
/** Owner only: the journal holds key ids and usage. */
const FILE_MODE = 0o600;

/** A line of a journal file that cannot be trusted, and why. */
export interface JournalProblem {
  file: string;
  line: number;
  reason: string;
}

export interface JournalRead {
  records: UsageRecord[];
  problems: JournalProblem[];
}

/** What a replay's `apply` says of a record: taken (or known already), or refused for good (an unknown key, say). */
export type ReplayOutcome = 'taken' | 'refused';

/** The checksum a line carries: SHA-256 of its fields, so that a value changed inside a valid line is caught. */
function checksum(record: UsageRecord): string {
  const buckets = record.buckets ? `\n${JSON.stringify(record.buckets)}` : '';
  return createHash('sha256').update(`${record.id}\n${record.keyId}\n${record.tokens}\n${record.at}${buckets}`).digest('hex').slice(0, 16);
}

/** A record's line; `buckets` only for a record of several limits, so that the lines of the others stay as they were. */
export function journalLine(record: UsageRecord): string {
  const { id, keyId, tokens, at, buckets } = record;
  return `${JSON.stringify(buckets ? { id, keyId, tokens, at, buckets, sum: checksum(record) } : { id, keyId, tokens, at, sum: checksum(record) })}\n`;
}

const isBucketList = (value: unknown): value is [string, number][] =>
  Array.isArray(value) && value.length > 0 && value.every((bucket) => Array.isArray(bucket) && bucket.length === 2 && typeof bucket[0] === 'string' && Number.isSafeInteger(bucket[1]));

/** Reads one journal file: the records whose lines check out, and every line that does not (a torn last line included). */
export function readJournalFile(path: string): JournalRead {
  const lines = readFileSync(path, 'utf8').split('\n');
  const tail = lines.pop() ?? '';
  const records: UsageRecord[] = [];
  const problems: JournalProblem[] = [];
  lines.forEach((line, index) => {
    if (line === '') return;
    const parsed = parseLine(line);
    if (typeof parsed === 'string') problems.push({ file: path, line: index + 1, reason: parsed });
    else records.push(parsed);
  });
  if (tail !== '') problems.push({ file: path, line: lines.length + 1, reason: 'torn last line (a write cut short)' });
  return { records, problems };
}

/** The record a line holds, or why it holds none. */
function parseLine(line: string): UsageRecord | string {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return 'not JSON';
  }
  const { id, keyId, tokens, at, buckets, sum } = (value ?? {}) as Record<string, unknown>;
  const valid =
    typeof id === 'string' && id !== '' && typeof keyId === 'string' && Number.isSafeInteger(tokens) && (tokens as number) >= 0 && Number.isSafeInteger(at) && (buckets === undefined || isBucketList(buckets));
  if (!valid) return 'not a usage record';
  const record: UsageRecord = { id, keyId, tokens: tokens as number, at: at as number };
  if (buckets !== undefined) record.buckets = buckets as [string, number][];
  // A line written before lines carried checksums (exactly the four fields) is taken as it is, so that
  // an upgrade during an outage loses nothing; any other line must check out.
  if (sum === undefined && Object.keys(value as object).length === 4) return record;
  if (sum !== checksum(record)) return sum === undefined ? 'no checksum' : 'checksum mismatch';
  return record;
}

interface Append {
  generation: number;
  line: string;
}

interface Handle {
  file: FileHandle;
  size: number;
}

/**
 * Appends go to the current generation's file; `rotate()` starts a new one so that the finished
 * files can be replayed (or folded into a snapshot) and then deleted, one whole file at a time. A
 * file holding a line that fails its checksum, or a record a replay refused, is never deleted: it is
 * set aside under a `.quarantined-<time>` name for an operator to look at.
 */
export class Journal {
  private readonly handles = new Map<number, Handle>();
  /** Lines appended within one turn of the event loop go to disk together, one generation per write. */
  private readonly appends = new GroupCommit<Append>({
    write: (group) => this.write(group),
    isolates: () => false,
    together: (first, line) => line.generation === first.generation,
  });
  private current: number;
  /** Records on disk per generation, not yet replayed or folded. */
  private readonly onDisk = new Map<number, number>();
  /** Appends not yet on disk (nor failed), per generation. */
  private readonly appending = new Map<number, number>();
  /** Generations with a problem: set aside instead of deleted once done with. */
  private readonly suspect = new Set<number>();
  private readonly problemList: JournalProblem[] = [];
  private readonly setAside: string[];

  private constructor(
    private readonly dir: string,
    generation: number,
    private readonly logger: Logger,
  ) {
    this.current = generation;
    this.setAside = readdirSync(dir).filter((name) => SET_ASIDE.test(name)).sort();
  }

  /** Opens the journal in `dir`, starting a generation after every file already there and after `after`. */
  static open(dir: string, after: number, logger: Logger): Journal {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const newest = Math.max(after, ...Journal.generations(dir));
    return new Journal(dir, newest + 1, logger);
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

  /** Records on disk that are not yet replayed or folded. */
  get pendingRecords(): number {
    let total = 0;
    for (const count of this.onDisk.values()) total += count;
    return total;
  }

  /** Generations holding records on disk or on their way there, oldest first. */
  get pendingGenerations(): number[] {
    return [...new Set([...this.onDisk.keys(), ...this.appending.keys()])].sort((a, b) => a - b);
  }

  /** Whether any record is on disk unreplayed, or still being appended. */
  get holdsRecords(): boolean {
    return this.onDisk.size > 0 || this.appending.size > 0;
  }

  /** Files set aside (by this process or an earlier one), by name. */
  get quarantinedFiles(): string[] {
    return [...this.setAside];
  }

  /** Lines found untrustworthy since this journal was opened. */
  get problems(): readonly JournalProblem[] {
    return this.problemList;
  }

  /**
   * Reads the records of a generation already on disk (left by an earlier run) and counts them as
   * pending; a generation with untrustworthy lines will be set aside rather than deleted.
   */
  load(generation: number): UsageRecord[] {
    const { records } = this.read(generation);
    this.onDisk.set(generation, records.length);
    return records;
  }

  /** Appends a record to the current generation; resolves once it is on disk (fsynced with its group). */
  append(record: UsageRecord): Promise<void> {
    const generation = this.current;
    this.appending.set(generation, (this.appending.get(generation) ?? 0) + 1);
    return this.appends.add({ generation, line: journalLine(record) });
  }

  /** Writes one generation's group of lines with one append and one fsync. */
  private async write(group: readonly Append[]): Promise<void> {
    const { generation } = group[0]!;
    let handle: Handle | undefined;
    try {
      handle = this.handles.get(generation) ?? (await this.openGeneration(generation));
      // appendFile writes every byte or throws (a short write on a full disk is retried, not dropped).
      const data = Buffer.from(group.map((entry) => entry.line).join(''));
      await handle.file.appendFile(data);
      await handle.file.datasync();
      handle.size += data.length;
      this.onDisk.set(generation, (this.onDisk.get(generation) ?? 0) + group.length);
      this.settleAppends(generation, group.length);
    } catch (error) {
      // Cut off what part of the group did reach the file, so the next group starts on a clean line;
      // when that fails too, the next group goes to a new file (this one ends torn, and is set aside).
      const clean = await handle?.file.truncate(handle.size).then(
        () => true,
        () => false,
      );
      if (handle && !clean) {
        await handle.file.close().catch(() => undefined);
        this.handles.delete(generation);
        this.suspect.add(generation);
        if (generation === this.current) this.current++;
      }
      this.settleAppends(generation, group.length);
      throw error;
    }
  }

  private settleAppends(generation: number, count: number): void {
    const left = (this.appending.get(generation) ?? 0) - count;
    if (left > 0) this.appending.set(generation, left);
    else this.appending.delete(generation);
  }

  private async openGeneration(generation: number): Promise<Handle> {
    const file = await open(join(this.dir, fileName(generation)), 'a', FILE_MODE);
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

  /** Waits until every append made so far is on disk (or has failed). */
  drain(): Promise<void> {
    return this.appends.drain();
  }

  /**
   * Starts the next generation, at once: appends made before this call belong to the finished one
   * (returned), appends after it to the next. `drain()` then waits for the finished one to be on disk.
   */
  rotate(): number {
    return this.current++;
  }

  /**
   * Replays every finished generation, oldest first, through `apply`, then deletes it (or sets it
   * aside when it had a problem or `apply` refused one of its records). A replay cut short by a
   * throwing `apply` is simply run again: `apply` must make records already taken no-ops. Returns
   * the records taken.
   */
  async replay(apply: (record: UsageRecord) => Promise<ReplayOutcome>): Promise<number> {
    this.rotate();
    await this.drain();
    let taken = 0;
    for (const generation of this.pendingGenerations.filter((g) => g < this.current)) {
      for (const record of this.read(generation).records) {
        if ((await apply(record)) === 'taken') taken++;
        else this.refuse(generation, record);
      }
      await this.done(generation);
    }
    return taken;
  }

  /** Deletes a generation's file once its records are elsewhere (replayed, or folded into a snapshot); sets it aside when suspect. */
  async done(generation: number): Promise<void> {
    await this.handles.get(generation)?.file.close();
    this.handles.delete(generation);
    const path = join(this.dir, fileName(generation));
    try {
      if (this.suspect.has(generation)) this.quarantine(generation, path);
      else unlinkSync(path);
    } catch (error) {
      // Still on disk (and still suspect): counted as pending, tried again at the next replay or start.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    this.suspect.delete(generation);
    this.onDisk.delete(generation);
  }

  /**
   * Removes a generation a snapshot already holds (a crash came between writing the snapshot and
   * deleting the file), setting it aside instead when it has lines that cannot be trusted.
   */
  discardFolded(generation: number): Promise<void> {
    this.read(generation);
    return this.done(generation);
  }

  async close(): Promise<void> {
    await this.drain();
    for (const handle of this.handles.values()) await handle.file.close();
    this.handles.clear();
  }

  private read(generation: number): JournalRead {
    let result: JournalRead;
    try {
      result = readJournalFile(join(this.dir, fileName(generation)));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { records: [], problems: [] };
      throw error;
    }
    if (result.problems.length > 0 && !this.suspect.has(generation)) {
      this.suspect.add(generation);
      this.problemList.push(...result.problems);
      for (const problem of result.problems) {
        // A torn last line is what a crash mid-write leaves; anything else means the file was changed.
        const level = problem.reason.startsWith('torn') ? 'warn' : 'error';
        this.logger[level](problem, 'journal line cannot be trusted: not replayed; its file will be set aside, not deleted');
      }
    }
    return result;
  }

  private refuse(generation: number, record: UsageRecord): void {
    this.suspect.add(generation);
    const problem = { file: join(this.dir, fileName(generation)), line: 0, reason: `record ${record.id} for key ${record.keyId} was refused (unknown key or rejected by the database)` };
    this.problemList.push(problem);
    this.logger.error({ ...problem, tokens: record.tokens }, 'journal record refused on replay: its file will be set aside, not deleted');
  }

  private quarantine(generation: number, path: string): void {
    const name = fileName(generation).replace(/\.ndjson$/, `.quarantined-${Date.now()}.ndjson`);
    renameSync(path, join(this.dir, name));
    this.setAside.push(name);
    this.logger.error({ file: join(this.dir, name) }, 'journal file set aside: it holds lines that were not replayed');
  }
}
