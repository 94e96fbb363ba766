// Key changes on the file store by role: durable when standalone, refused while it stands in as a fallback.
import { cpSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ConflictError, NotFoundError, StorageError } from '../../src/errors.js';
import { digestKey } from '../../src/keys/secret.js';
import type { KeyRecord, Storage } from '../../src/storage/types.js';
import { close, filesOf, open } from '../helpers/file-store.js';
import { tempDir } from '../helpers/temp.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

describe('file store: key changes', () => {
  it('standalone: creates, updates and deletes keys durably, across a crash and a reopen', async () => {
    const dir = tempDir();
    const now = Date.now();
    const first = open(dir);
    const alice = await first.createKey({ name: 'alice', tokenLimit: 100, expiresAt: now + DAY }, now - HOUR);
    const bob = await first.createKey({ name: 'bob', tokenLimit: 200, expiresAt: now + DAY }, now - HOUR + 1);
    const carol = await first.createKey({ name: 'carol', tokenLimit: 300, expiresAt: now + DAY, key: 'pk_chosen_carol' }, now - HOUR + 2);
    // Each change is on disk once its call resolved: a store opened right after (a crash) sees it.
    const seenAfterCrash = async (): Promise<KeyRecord[]> => {
      const image = tempDir();
      cpSync(dir, image, { recursive: true }); // what a crash now would leave
      return open(image).listKeys();
    };
    expect(await seenAfterCrash()).toEqual([alice.record, bob.record, carol.record]);
    await first.updateKey(alice.record.id, { name: 'alice2', tokenLimit: 7, expiresAt: now + 2 * DAY, model: 'gpt-4o' });
    const updated = { ...alice.record, name: 'alice2', tokenLimit: 7, expiresAt: now + 2 * DAY, model: 'gpt-4o' };
    expect(await seenAfterCrash()).toEqual([updated, bob.record, carol.record]);
    expect(await first.deleteKey(bob.record.id)).toBe(true);
    expect(await seenAfterCrash()).toEqual([updated, carol.record]);
    const expected = [
      { ...alice.record, name: 'alice2', tokenLimit: 7, expiresAt: now + 2 * DAY, model: 'gpt-4o' },
      carol.record,
    ];
    expect(await first.listKeys()).toEqual(expected);

    const check = async (storage: Storage): Promise<void> => {
      expect(await storage.listKeys()).toEqual(expected);
      expect(await storage.getKey(bob.record.id)).toBeUndefined();
      expect(await storage.findKeyByDigest(digestKey(bob.key))).toBeUndefined();
      expect(await storage.findKeyByDigest(digestKey(alice.key))).toEqual(expected[0]);
      expect(await storage.findKeyByDigest(digestKey('pk_chosen_carol'))).toEqual(carol.record);
    };
    await check(first);
    await close(first);
    const reopened = open(dir);
    await check(reopened);
    // The reopened store still knows which key values are taken.
    await expect(reopened.createKey({ name: 'again', tokenLimit: 1, expiresAt: now + DAY, key: 'pk_chosen_carol' })).rejects.toBeInstanceOf(ConflictError);
    await expect(reopened.updateKey(bob.record.id, { name: 'x' })).rejects.toBeInstanceOf(NotFoundError);
    expect(await reopened.deleteKey(bob.record.id)).toBe(false);
  });

  it('fallback: key changes reject with a transient StorageError and change nothing', async () => {
    const dir = tempDir();
    const now = Date.now();
    const standalone = open(dir);
    const { record } = await standalone.createKey({ name: 'mirrored', tokenLimit: 100, expiresAt: now + DAY }, now);
    await close(standalone);
    const before = filesOf(dir);

    const fallback = open(dir, { role: 'fallback' });
    const attempts: [string, () => Promise<unknown>][] = [
      ['createKey', () => fallback.createKey({ name: 'new', tokenLimit: 1, expiresAt: now + DAY })],
      ['updateKey', () => fallback.updateKey(record.id, { name: 'renamed' })],
      ['deleteKey', () => fallback.deleteKey(record.id)],
    ];
    for (const [what, attempt] of attempts) {
      const error = await attempt().then(
        () => undefined,
        (caught: unknown) => caught,
      );
      expect(error, what).toBeInstanceOf(StorageError);
      expect((error as StorageError).transient, what).toBe(true);
    }
    expect(await fallback.listKeys()).toEqual([record]);
    expect(filesOf(dir)).toEqual(before);
  });
});
