// tokengate backup and restore through the built CLI: consistent under traffic, across SQLite and PostgreSQL, refusing damaged files.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import type { BackupManifest } from '../../src/ops/backup.js';
import { createStorage } from '../../src/storage/create.js';
import { expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { generate, postgresTarget, run, runAsync, sqliteTarget, storeState, withStore, writeKeyFile, targets, usageUpstream, type Target } from '../helpers/cli-targets.js';
import { post, quietLogger, startGate } from '../helpers/gate.js';
import { tempDir } from '../helpers/temp.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

beforeAll(requireBuiltCli);

const upstream = usageUpstream();

/** Sums over the whole store, straight from its tables. */
async function totals(target: Target): Promise<{ keys: number; lifetime: number; requests: number }> {
  return withStore(target, async (storage) => {
    const keys = await storage.listKeys();
    return { keys: keys.length, lifetime: keys.reduce((s, k) => s + k.totalLifetimeTokens, 0), requests: keys.reduce((s, k) => s + k.totalRequests, 0) };
  });
}

function backupJson(target: Target, outDir?: string): { path: string; manifest: BackupManifest } {
  const result = run(target, ['backup', '--json', ...(outDir ? ['--out', outDir] : [])]);
  expect(result.stderr).toBe('');
  expect(result.status).toBe(0);
  return JSON.parse(result.stdout) as { path: string; manifest: BackupManifest };
}

describe('tokengate backup and restore', () => {
  it.each(targets)('backs up %s while a gate records usage; the restored store equals the backup', async (_name, makeTarget) => {
    const target = await makeTarget();
    const storage = await createStorage({ ...target.config, logger: quietLogger(), fallback: false });
    const gate = await startGate(upstream(), { now: () => Date.now() }, storage);
    const keys = await Promise.all(Array.from({ length: 4 }, () => storage.createKey({ name: 'traffic', tokenLimit: 10_000_000, expiresAt: Date.now() + DAY })));
    let stop = false;
    let sent = 0;
    const traffic = (async () => {
      while (!stop) {
        await Promise.all(keys.map(async ({ key }) => expect((await post(gate, key)).status).toBe(200)));
        sent += keys.length;
      }
    })();
    try {
      await expect.poll(() => sent, { timeout: 20_000 }).toBeGreaterThanOrEqual(40);
      const backup = await runAsync(target, ['backup', '--json']);
      expect(backup.status, backup.stderr).toBe(0);
      const afterBackup = sent;
      await expect.poll(() => sent, { timeout: 20_000 }).toBeGreaterThanOrEqual(afterBackup + 40); // traffic went on during and after
      stop = true;
      await traffic;
      const { path, manifest } = JSON.parse(backup.stdout) as { path: string; manifest: BackupManifest };

      // A consistent snapshot: every recorded request is in its key's totals, its bucket and its record id.
      expect(manifest.tables.api_keys).toBe(4);
      expect(manifest.tables.usage_records).toBe(manifest.totals.requests);
      expect(manifest.totals.record_tokens).toBe(manifest.totals.lifetime_tokens);
      expect(manifest.totals.bucket_tokens).toBe(manifest.totals.lifetime_tokens);
      expect(manifest.totals.requests).toBeGreaterThan(0);
      expect(manifest.totals.lifetime_tokens).toBe(10 * manifest.totals.requests);

      for (const fresh of [sqliteTarget(), await postgresTarget()]) {
        const restored = run(fresh, ['restore', path, '--yes', '--json']);
        expect(restored.status, restored.stderr).toBe(0);
        expect(await totals(fresh)).toEqual({ keys: 4, lifetime: manifest.totals.lifetime_tokens, requests: manifest.totals.requests });
        // The restored store backs up to the same tables and totals.
        const again = backupJson(fresh).manifest;
        expect(again.tables).toEqual(manifest.tables);
        expect(again.totals).toEqual(manifest.totals);
      }
    } finally {
      stop = true;
      await traffic.catch(() => undefined);
      await gate.close();
    }
  });

  it('SQLite → PostgreSQL → SQLite preserves every key field, bucket and record', async () => {
    const source = sqliteTarget();
    const now = Date.now();
    expect(run(source, ['import', writeKeyFile(generate(now, 30).map((g) => g.entry))]).status).toBe(0);
    await withStore(source, async (storage) => {
      const [first] = await storage.listKeys();
      const admission = await storage.admit({ keyId: first!.id, tokenLimit: first!.tokenLimit, estimate: 5, requestId: 'req-1', now, windowMs: 5 * HOUR });
      if (!admission.admitted) throw new Error('not admitted');
      await storage.settle(admission.reservation, { id: 'req-1', keyId: first!.id, tokens: 321, at: now });
    });
    const original = backupJson(source);
    const rowsOf = (path: string): string[] => gunzipSync(readFileSync(path)).toString('utf8').trimEnd().split('\n').slice(1, -1).sort();

    const postgres = await postgresTarget();
    expect(run(postgres, ['restore', original.path, '--yes']).status).toBe(0);
    const viaPostgres = backupJson(postgres);
    expect(viaPostgres.manifest.backend).toBe('postgres');

    const back = sqliteTarget();
    expect(run(back, ['restore', viaPostgres.path, '--yes']).status).toBe(0);
    const final = backupJson(back);

    expect(rowsOf(viaPostgres.path)).toEqual(rowsOf(original.path));
    expect(rowsOf(final.path)).toEqual(rowsOf(original.path));
    expect(final.manifest.tables).toEqual({ api_keys: 30, usage_buckets: original.manifest.tables.usage_buckets, usage_records: 1 });
  });

  it('refuses a backup with one byte flipped, whether gzip notices or not, and leaves the store untouched', async () => {
    for (const target of [sqliteTarget(), await postgresTarget()]) {
      expect(run(target, ['import', writeKeyFile(generate(Date.now(), 20).map((g) => g.entry))]).status).toBe(0);
      const { path } = backupJson(target);
      const before = await storeState(target);
      const bytes = readFileSync(path);
      const dir = tempDir();

      const flippedCompressed = Buffer.from(bytes);
      flippedCompressed[Math.floor(bytes.length / 2)]! ^= 0x01;
      const damaged = join(dir, 'compressed.json.gz');
      writeFileSync(damaged, flippedCompressed);

      // A byte flipped in the contents and compressed again: gzip is satisfied, the checksum is not.
      const plain = gunzipSync(bytes);
      const at = plain.indexOf('"total_lifetime_tokens":') + '"total_lifetime_tokens":'.length;
      plain[at] = plain[at] === 0x31 ? 0x32 : 0x31;
      const regzipped = join(dir, 'contents.json.gz');
      writeFileSync(regzipped, gzipSync(plain));

      for (const file of [damaged, regzipped]) {
        const line = expectFailure(run(target, ['restore', file, '--yes']), /is (damaged|not a tokengate backup, or it is damaged)/);
        expect(line).toContain(file);
      }
      expectFailure(run(target, ['restore', regzipped, '--yes']), /checksum mismatch/);
      expect(await storeState(target)).toEqual(before);
    }
  });

  it('fails in one line on a missing file and on a file that is not a backup; off a terminal it needs no --yes', () => {
    const target = sqliteTarget();
    const dir = tempDir();
    expectFailure(run(target, ['restore', join(dir, 'nope.json.gz'), '--yes']), /nope\.json\.gz cannot be read/);
    const notGzip = join(dir, 'keys.json');
    writeFileSync(notGzip, '{"keys":[]}');
    expectFailure(run(target, ['restore', notGzip, '--yes']), /is not a tokengate backup/);
    const otherGzip = join(dir, 'other.json.gz');
    writeFileSync(otherGzip, gzipSync('{"keys":[]}\n'));
    expectFailure(run(target, ['restore', otherGzip, '--yes']), /is not a tokengate backup \(no "tokengate-backup" header\)/);
    const { path } = backupJson(target);
    expect(run(target, ['restore', path]).status).toBe(0);
  });

  it('writes backups into --out, else BACKUP_DIR, named by backend and UTC time; restore keeps the state before it', () => {
    const target = sqliteTarget();
    const out = join(tempDir(), 'elsewhere');
    mkdirSync(out);
    const first = backupJson(target, out);
    expect(first.path.startsWith(out)).toBe(true);
    expect(first.path).toMatch(/tokengate-sqlite-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z\.json\.gz$/);
    const second = backupJson(target);
    expect(second.path.startsWith(target.env.BACKUP_DIR!)).toBe(true);
    const restored = JSON.parse(run(target, ['restore', first.path, '--yes', '--json']).stdout) as { backup_before_restore: string };
    expect(readdirSync(target.env.BACKUP_DIR!)).toContain(restored.backup_before_restore.split('/').at(-1));
  });

  it('has --help on every new command', () => {
    const target = sqliteTarget();
    for (const command of ['import', 'export', 'backup', 'restore']) {
      const help = run(target, [command, '--help']);
      expect(help.status, command).toBe(0);
      expect(help.stdout, command).toMatch(/^Usage: tokengate /);
    }
  });
});
