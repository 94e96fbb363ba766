// The file store on damaged files: torn and garbled journals are read around, a corrupt snapshot stops a
// standalone store and is set aside by a fallback.
import { randomBytes } from 'node:crypto';
import { appendFileSync, cpSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { digestKey } from '../../src/keys/secret.js';
import { createStorage } from '../../src/storage/create.js';
import { FileStorage } from '../../src/storage/file.js';
import type { Storage } from '../../src/storage/types.js';
import { quietLogger } from '../helpers/gate.js';
import { charge, close, filesOf, journalFiles, open, SNAPSHOT, WINDOW } from '../helpers/file-store.js';
import { captureLogs, ERROR, WARN } from '../helpers/logs.js';
import { tempDir } from '../helpers/temp.js';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/**
 * A directory as a crash leaves it: the snapshot plus a journal of three records (60 tokens) on
 * one key, copied while the writer was alive and idle (every settle resolved, so fsynced).
 */
async function crashImage(now: number): Promise<{ dir: string; keyId: string; key: string }> {
  const live = tempDir();
  const storage = open(live);
  const { record, key } = await storage.createKey({ name: 'k', tokenLimit: 1_000_000, expiresAt: now + DAY }, now - HOUR);
  await charge(storage, record.id, 'r-1', 10, now - 40 * MINUTE);
  await charge(storage, record.id, 'r-2', 20, now - 30 * MINUTE);
  await charge(storage, record.id, 'r-3', 30, now - 20 * MINUTE);
  const dir = tempDir();
  cpSync(live, dir, { recursive: true });
  await close(storage);
  expect(journalFiles(dir)).toHaveLength(1);
  expect(existsSync(join(dir, SNAPSHOT))).toBe(true);
  return { dir, keyId: record.id, key };
}

async function expectSixty(storage: Storage, keyId: string, now: number, extra = 0, extraRequests = 0): Promise<void> {
  expect(await storage.getKey(keyId)).toMatchObject({ totalLifetimeTokens: 60 + extra, totalRequests: 3 + extraRequests });
  expect((await storage.windowUsage(keyId, now, WINDOW)).used).toBe(60 + extra);
}

describe('file store: damaged journals', () => {
  it('skips a torn last line with one warning naming the file, and keeps every complete record', async () => {
    const now = Date.now();
    const { dir, keyId } = await crashImage(now);
    const [name] = journalFiles(dir);
    const path = join(dir, name!);
    appendFileSync(path, `{"id":"torn","keyId":"${keyId}","tokens":99`); // a write cut short

    const logs = captureLogs();
    const second = open(dir, { logger: logs.logger });
    await expectSixty(second, keyId, now);
    expect(logs.at(WARN)).toHaveLength(1);
    expect(logs.at(WARN)[0]).toMatchObject({ file: path });
    expect(logs.at(ERROR)).toEqual([]);

    // New usage is not glued onto the torn line: a second crash still finds it.
    await charge(second, keyId, 'after-tear', 5, now - MINUTE);
    const third = open(dir, { logger: quietLogger() });
    await expectSixty(third, keyId, now, 5, 1);

    // Once folded, the torn file is set aside for an operator (never deleted) and nothing warns any more.
    await close(third);
    const quiet = captureLogs();
    const fourth = open(dir, { logger: quiet.logger });
    await expectSixty(fourth, keyId, now, 5, 1);
    expect(quiet.lines.filter((line) => (line.level as number) >= WARN)).toEqual([]);
    expect(fourth.health().quarantinedFiles).toEqual([expect.stringMatching(/journal-\d{8}\.quarantined-\d+\.ndjson$/)]);
    expect(readFileSync(fourth.health().quarantinedFiles[0]!, 'utf8')).toContain('"id":"torn"');
  });

  it('keeps the good lines around garbage and wrong JSON in the middle, with an error per bad line', async () => {
    const now = Date.now();
    const { dir, keyId } = await crashImage(now);
    const [name] = journalFiles(dir);
    const path = join(dir, name!);
    const good = readFileSync(path, 'utf8').split('\n').filter(Boolean);
    expect(good).toHaveLength(3);
    // Random bytes, no newline among them, sure not to be JSON.
    const garbage = Buffer.concat([Buffer.from([0xff, 0xfe, 0x00, 0x7b]), randomBytes(200).map((byte) => (byte === 0x0a ? 0x20 : byte))]);
    writeFileSync(path, Buffer.concat([Buffer.from(`${good[0]}\n`), garbage, Buffer.from(`\n${good[1]}\n{"id":5}\n${good[2]}\n`)]));

    const logs = captureLogs();
    const second = open(dir, { logger: logs.logger });
    await expectSixty(second, keyId, now);
    expect(logs.at(ERROR)).toHaveLength(2);
    expect(logs.at(ERROR).map((line) => ({ file: line.file, line: line.line }))).toEqual([
      { file: path, line: 2 },
      { file: path, line: 4 },
    ]);
    expect(logs.at(WARN)).toEqual([]);

    // The store carries on and folds cleanly.
    await charge(second, keyId, 'after-garbage', 1, now - MINUTE);
    await close(second);
    const third = open(dir);
    await expectSixty(third, keyId, now, 1, 1);
  });
});

describe('file store: corrupt snapshot', () => {
  const variants = (real: Buffer): [string, Buffer][] => [
    ['garbage bytes', Buffer.concat([Buffer.from([0xff, 0x00, 0xfe]), randomBytes(256)])],
    ['a truncated copy of a real snapshot', real.subarray(0, Math.floor(real.length / 2))],
    ['valid JSON of the wrong shape', Buffer.from('{"keys":"x"}')],
  ];

  it('refuses to start standalone, names the snapshot and leaves every file untouched', async () => {
    const now = Date.now();
    const image = await crashImage(now);
    const real = readFileSync(join(image.dir, SNAPSHOT));
    // A key file, to be sure a broken snapshot is not taken for a missing one and imported over.
    const keyFile = join(tempDir(), 'keys.json');
    writeFileSync(keyFile, JSON.stringify({ keys: [{ key: 'pk_user_1', name: 'u', token_limit_per_5h: 10, expiry_date: new Date(now + DAY).toISOString() }] }));

    for (const [what, bytes] of variants(real)) {
      const dir = tempDir();
      cpSync(image.dir, dir, { recursive: true });
      writeFileSync(join(dir, SNAPSHOT), bytes);
      const before = filesOf(dir);
      const snapshotPath = join(dir, SNAPSHOT);

      expect(() => FileStorage.open({ dir, role: 'standalone', logger: quietLogger() }), what).toThrow(ConfigError);
      expect(() => FileStorage.open({ dir, role: 'standalone', logger: quietLogger() }), what).toThrow(snapshotPath);
      const viaCreate = await createStorage({ storage: 'file', fallbackDir: dir, keyFile, logger: quietLogger() }).then(
        () => undefined,
        (error: unknown) => error,
      );
      expect(viaCreate, what).toBeInstanceOf(ConfigError);
      expect((viaCreate as Error).message, what).toContain(snapshotPath);

      expect(filesOf(dir), what).toEqual(before);
      expect(readFileSync(snapshotPath).equals(bytes), what).toBe(true);
    }
  });

  it('as a fallback, moves the corrupt snapshot aside (bytes kept), logs an error and opens empty', async () => {
    const now = Date.now();
    const image = await crashImage(now);
    const real = readFileSync(join(image.dir, SNAPSHOT));

    for (const [what, bytes] of variants(real)) {
      const dir = tempDir();
      cpSync(image.dir, dir, { recursive: true });
      writeFileSync(join(dir, SNAPSHOT), bytes);
      const [journal] = journalFiles(dir);
      const journalBytes = readFileSync(join(dir, journal!));

      const logs = captureLogs();
      const storage = open(dir, { role: 'fallback', logger: logs.logger });
      expect(await storage.listKeys(), what).toEqual([]);
      expect(await storage.findKeyByDigest(digestKey(image.key)), what).toBeUndefined();

      const aside = readdirSync(dir).filter((name) => /^snapshot\.corrupt-.+\.json$/.test(name));
      expect(aside, what).toHaveLength(1);
      expect(readFileSync(join(dir, aside[0]!)).equals(bytes), what).toBe(true);
      expect(existsSync(join(dir, SNAPSHOT)), what).toBe(false);
      expect(logs.at(ERROR), what).toHaveLength(1);
      expect(logs.at(ERROR)[0], what).toMatchObject({ movedTo: join(dir, aside[0]!) });

      // The journal (usage the database may still lack) is kept, untouched, pending replay.
      expect(storage.health().journalPendingRecords, what).toBe(3);
      expect(readFileSync(join(dir, journal!)).equals(journalBytes), what).toBe(true);
      await close(storage);
    }
  });
});
