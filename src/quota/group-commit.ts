// Group commit: what is queued within one turn of the event loop is written as one batch, one batch at a time.

export interface GroupCommitOptions<T> {
  /**
   * Writes a batch at once (one transaction, one fsync); throws when the batch as a whole failed.
   * `alone`: the item is written again by itself, after its batch failed.
   */
  write(batch: readonly T[], alone: boolean): void | Promise<void>;
  /** Whether a failed batch is written again one item at a time: a failure of one item, not of the store. */
  isolates(error: unknown): boolean;
  /** What becomes of an item whose write failed (the journal takes it, say); default: its add() rejects with the failure. */
  failed?(item: T, error: unknown): Promise<void>;
  /** Most items one batch holds. Default: all that are queued. */
  maxBatch?: number;
  /** Whether an item may join the batch `first` opened. Default: always. */
  together?(first: T, item: T): boolean;
}

interface Entry<T> {
  item: T;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * Items added while a batch is being written wait for the next one, so batches grow with the load
 * and the store sees one write at a time. add() resolves once its item is written (or taken care of
 * by `failed`), and one bad item fails only its own add().
 */
export class GroupCommit<T> {
  private queue: Entry<T>[] = [];
  private running: Promise<void> | undefined;

  constructor(private readonly options: GroupCommitOptions<T>) {}

  add(item: T): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.running ??= new Promise<void>((turn) => setImmediate(turn)).then(() => this.run());
    });
  }

  /** Items queued and not yet written. */
  get pending(): number {
    return this.queue.length;
  }

  /** Resolves once every item added so far is written or has failed. */
  async drain(): Promise<void> {
    while (this.running) await this.running;
  }

  private async run(): Promise<void> {
    try {
      while (this.queue.length > 0) await this.commit(this.nextBatch());
    } finally {
      this.running = undefined;
    }
  }

  private nextBatch(): Entry<T>[] {
    const { maxBatch = Number.POSITIVE_INFINITY, together } = this.options;
    const first = this.queue[0]!.item;
    let end = 1;
    while (end < this.queue.length && end < maxBatch && (!together || together(first, this.queue[end]!.item))) end++;
    return this.queue.splice(0, end);
  }

  private async commit(batch: Entry<T>[]): Promise<void> {
    try {
      await this.options.write(batch.map((entry) => entry.item), false);
      for (const entry of batch) entry.resolve();
      return;
    } catch (error) {
      if (batch.length === 1 || !this.options.isolates(error)) {
        for (const entry of batch) this.fail(entry, error);
        return;
      }
    }
    for (const entry of batch) {
      try {
        await this.options.write([entry.item], true);
        entry.resolve();
      } catch (alone) {
        this.fail(entry, alone);
      }
    }
  }

  /** Not awaited: what `failed` does (a journal append, say) groups with the other failures of the batch. */
  private fail(entry: Entry<T>, error: unknown): void {
    if (!this.options.failed) return entry.reject(error);
    try {
      this.options.failed(entry.item, error).then(entry.resolve, entry.reject);
    } catch (thrown) {
      entry.reject(thrown);
    }
  }
}
