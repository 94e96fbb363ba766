// Where the SQLite store's usage goes when the database refuses it (disk full, a corrupt page, a lock
// held too long): the journal, replayed into the database each second until it takes it.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../types.js';
import { lockDirectory, type DirectoryLock } from './dir-lock.js';
import { Journal } from './journal.js';
import type { ApplyOutcome, Overflow } from '../quota/local-quota.js';
import type { RecordingState, UsageRecord } from './types.js';


export interface SpillOptions {
  dir: string;
  logger: Logger;
  /** Applies one record to the database, throwing when the database refuses it (for now). */
  apply: (record: UsageRecord) => ApplyOutcome;
  /** Whether the database holds a record already (records journaled by an earlier run). */
  holds: (id: string) => boolean;
  /** How often what the database refused is offered to it again. Default: 1000 ms. */
  retryMs?: number;
}

/**
 * Holds the records the database refused, and counts them (`records(keyId)`) until the database
 * takes them, so that a key's window never forgets usage that is journaled. A record the journal
 * cannot take either stays in memory (`holding`): the store then admits nothing until it is written.
 */
export class Spill implements Overflow {
  private readonly journal: Journal;
  private readonly lock: DirectoryLock;
  /** Records journaled or held, not yet in the database, by key id then record id. */
  private readonly waiting = new Map<string, Map<string, UsageRecord>>();
  /** Records neither the database nor the journal took: in memory only. */
  private unwritten: UsageRecord[] = [];
  private readonly failures = { database: 0, journal: 0 };
  /** Whether the last write the database was offered (a record, or the health probe) failed. */
  private refusing = false;
  private timer: NodeJS.Timeout | undefined;
  private retrying: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(private readonly options: SpillOptions) {
    mkdirSync(options.dir, { recursive: true, mode: 0o700 });
    this.lock = lockDirectory(options.dir, options.logger);
    try {
      this.journal = Journal.open(options.dir, 0, options.logger);
      // Left by an earlier run: still unknown to the database, they count in the window until it takes them.
      for (const generation of Journal.generations(options.dir)) {
        for (const record of this.journal.load(generation)) if (!this.safeHolds(record.id)) this.wait(record);
      }
    } catch (error) {
      this.lock.release();
      throw error;
    }
    if (this.journal.holdsRecords) {
      options.logger.warn({ dir: options.dir, records: this.journal.pendingRecords }, 'usage journaled by an earlier run: replaying it into the database');
      this.schedule(0);
    }
  }

  /** `failing` while a record is in memory only; `journal` while the database refuses or the journal holds records. */
  get state(): RecordingState {
    if (this.unwritten.length > 0) return 'failing';
    return this.refusing || this.journal.holdsRecords ? 'journal' : 'ok';
  }

  /** Records neither the database nor the journal could take: nothing may be admitted meanwhile. */
  get holding(): boolean {
    return this.unwritten.length > 0;
  }

  get pendingRecords(): number {
    return this.journal.pendingRecords;
  }

  get quarantinedFiles(): string[] {
    return this.journal.quarantinedFiles.map((name) => join(this.options.dir, name));
  }

  get recordingFailures(): { database: number; journal: number } {
    return { ...this.failures };
  }

  /** Whether a record is held here already (journaled or in memory), not yet in the database. */
  holds(record: UsageRecord): boolean {
    return this.waiting.get(record.keyId)?.has(record.id) ?? false;
  }

  /** The records of `keyId` the database does not hold yet. */
  records(keyId: string): Iterable<UsageRecord> {
    return this.waiting.get(keyId)?.values() ?? [];
  }

  /** The database took a write (a record or the probe): it is not refusing any more. */
  databaseWrote(): void {
    this.refusing = false;
  }

  /** The database refused a write; records are offered to it again within a second. */
  databaseRefused(): void {
    this.refusing = true;
  }

  /**
   * Takes a record the database refused: resolves once it is on disk in the journal; rejects when the
   * journal refused it too (it is then kept in memory, counted, and written as soon as either can).
   */
  async take(record: UsageRecord, refusal?: unknown): Promise<void> {
    if (refusal !== undefined) {
      this.failures.database++;
      this.refusing = true;
    }
    this.wait(record);
    this.schedule();
    try {
      await this.journal.append(record);
    } catch (error) {
      this.failures.journal++;
      this.unwritten.push(record);
      this.options.logger.error(
        { err: error, refusal: refusal instanceof Error ? refusal.message : refusal, dir: this.options.dir },
        'neither the database nor the journal can take usage: admitting nothing until one of them can',
      );
      throw error;
    }
  }

  private wait(record: UsageRecord): void {
    let byId = this.waiting.get(record.keyId);
    if (!byId) this.waiting.set(record.keyId, (byId = new Map()));
    byId.set(record.id, record);
  }

  private taken(record: UsageRecord): void {
    const byId = this.waiting.get(record.keyId);
    byId?.delete(record.id);
    if (byId?.size === 0) this.waiting.delete(record.keyId);
  }

  private safeHolds(id: string): boolean {
    try {
      return this.options.holds(id);
    } catch {
      return false; // cannot tell: count it here, the replay finds out
    }
  }

  private schedule(delayMs = this.options.retryMs ?? 1000): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.retrying = this.retrying.then(() => this.retry());
    }, delayMs).unref();
  }

  /** Offers the database what it refused: first the records in memory only, then the journal. */
  private async retry(): Promise<void> {
    try {
      while (this.unwritten.length > 0) {
        const record = this.unwritten[0]!;
        let applied = false;
        try {
          this.settled(record, this.options.apply(record));
          applied = true;
        } catch {
          await this.journal.append(record); // throws while the journal still cannot take it
        }
        this.unwritten.shift();
        if (applied) this.refusing = false;
      }
      const replayed = await this.journal.replay(async (record) => {
        const outcome = this.options.apply(record);
        this.settled(record, outcome);
        return outcome === 'no-key' ? 'refused' : 'taken';
      });
      this.refusing = false;
      if (replayed > 0) this.options.logger.info({ replayed }, 'the database takes usage again: journal replayed');
    } catch {
      // Still refused: tried again in a second.
    }
    if (this.unwritten.length > 0 || this.journal.holdsRecords || this.refusing) this.schedule();
  }

  private settled(record: UsageRecord, outcome: ApplyOutcome): void {
    this.taken(record);
    if (outcome === 'no-key') this.options.logger.warn({ keyId: record.keyId, recordId: record.id, tokens: record.tokens }, 'journaled usage for a key that no longer exists');
  }

  /** Writes what it can (a last replay), then closes the journal and lets the directory go. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.retrying;
    await this.retry().catch(() => undefined);
    clearTimeout(this.timer);
    if (this.unwritten.length > 0) {
      this.options.logger.error({ records: this.unwritten.length, tokens: this.unwritten.reduce((sum, r) => sum + r.tokens, 0) }, 'closing with usage neither the database nor the journal took: it is lost');
    }
    try {
      await this.journal.close();
    } finally {
      this.lock.release();
    }
  }
}
