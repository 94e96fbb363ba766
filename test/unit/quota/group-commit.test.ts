// Group commit: batching by turn of the event loop, one batch at a time, one bad item failing alone.
import { describe, expect, it } from 'vitest';
import { GroupCommit } from '../../../src/quota/group-commit.js';

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('GroupCommit', () => {
  it('writes what is added within one turn as one batch, and what comes during a write as the next', async () => {
    const batches: number[][] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const commits = new GroupCommit<number>({
      write: async (batch) => {
        batches.push([...batch]);
        if (batches.length === 1) await held;
      },
      isolates: () => true,
    });
    const first = [1, 2, 3].map((n) => commits.add(n));
    await turn();
    const second = [4, 5].map((n) => commits.add(n));
    await turn();
    expect(batches).toEqual([[1, 2, 3]]); // one write at a time
    release();
    await Promise.all([...first, ...second]);
    expect(batches).toEqual([[1, 2, 3], [4, 5]]);
  });

  it('keeps batches within maxBatch and within what may go together', async () => {
    const batches: string[][] = [];
    const commits = new GroupCommit<string>({
      write: (batch) => void batches.push([...batch]),
      isolates: () => true,
      maxBatch: 2,
      together: (first, item) => first[0] === item[0],
    });
    await Promise.all(['a1', 'a2', 'a3', 'b1', 'a4'].map((item) => commits.add(item)));
    expect(batches).toEqual([['a1', 'a2'], ['a3'], ['b1'], ['a4']]);
  });

  it('writes each item of a failed batch alone when the failure is one item\'s, so only that item fails', async () => {
    const writes: number[][] = [];
    const commits = new GroupCommit<number>({
      write: (batch) => {
        writes.push([...batch]);
        if (batch.includes(2)) throw new Error('bad record 2');
      },
      isolates: () => true,
    });
    const results = await Promise.allSettled([1, 2, 3].map((n) => commits.add(n)));
    expect(results.map((result) => result.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(writes).toEqual([[1, 2, 3], [1], [2], [3]]);
  });

  it('fails the whole batch without retrying when the failure is the store\'s, and hands each item to `failed`', async () => {
    const writes: number[][] = [];
    const handed: number[] = [];
    const commits = new GroupCommit<number>({
      write: (batch) => {
        writes.push([...batch]);
        throw new Error('store down');
      },
      isolates: () => false,
      failed: async (item) => void handed.push(item),
    });
    await Promise.all([1, 2].map((n) => commits.add(n))); // `failed` took them: their adds resolve
    expect(writes).toEqual([[1, 2]]);
    expect(handed).toEqual([1, 2]);
  });

  it('drain() resolves only once everything added is written', async () => {
    const written: number[] = [];
    const commits = new GroupCommit<number>({ write: async (batch) => void written.push(...batch), isolates: () => true });
    void commits.add(1);
    void commits.add(2);
    expect(commits.pending).toBe(2);
    await commits.drain();
    expect(written).toEqual([1, 2]);
    expect(commits.pending).toBe(0);
  });
});
