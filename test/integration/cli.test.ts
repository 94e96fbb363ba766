// The built `tokengate` CLI run as users run it: a child process on a temp SQLite file.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { createStorage } from '../../src/storage/create.js';
import { digestKey } from '../../src/keys/secret.js';
import type { KeyView } from '../../src/keys/view.js';
import { ROOT, cli, expectFailure, requireBuiltCli } from '../helpers/cli.js';
import { tempDir } from '../helpers/temp.js';

/** A fresh directory and a database path inside it (the file does not exist yet). */
function freshDb(): { dir: string; dbPath: string } {
  const dir = tempDir();
  return { dir, dbPath: join(dir, 'tokengate.db') };
}

function createArgs(extra: string[] = []): string[] {
  return ['keys', 'create', '--name', 'alice', '--limit', '200000', '--expires', '2027-01-01', ...extra];
}

function createJson(dbPath: string, extra: string[] = []): KeyView {
  const run = cli(dbPath, createArgs([...extra, '--json']));
  expect(run.status).toBe(0);
  return JSON.parse(run.stdout) as KeyView;
}

/** Every byte of every file in `dir` (the database, and its WAL and shared-memory files if any). */
function allBytes(dir: string): Buffer {
  return Buffer.concat(readdirSync(dir, { withFileTypes: true }).filter((entry) => entry.isFile()).map((entry) => readFileSync(join(dir, entry.name))));
}

beforeAll(requireBuiltCli);

describe('tokengate keys create', () => {
  it('prints only the new key on stdout, a one-line summary on stderr, and the key authenticates', async () => {
    const { dir, dbPath } = freshDb();
    const run = cli(dbPath, createArgs());
    expect(run.status).toBe(0);
    expect(run.stdout).toMatch(/^tg-[A-Za-z0-9_-]{32}\n$/);
    const key = run.stdout.slice(0, -1);
    expect(run.stderr.split('\n')).toHaveLength(2);
    expect(run.stderr).toMatch(/store it now, it is not shown again/);
    expect(run.stderr).toMatch(/alice/);
    expect(run.stderr).not.toContain(key);

    const storage = await createStorage({ databasePath: dbPath });
    try {
      const record = await storage.findKeyByDigest(digestKey(key));
      expect(record).toMatchObject({ name: 'alice', tokenLimit: 200_000, expiresAt: Date.parse('2027-01-01'), model: null });
      expect(record?.id).toMatch(/^key_[0-9a-f]{16}$/);
    } finally {
      await storage.close();
    }
    expect(allBytes(dir).includes(key)).toBe(false);
  });

  it('with --json prints the masked record plus the plaintext key as one object', async () => {
    const { dir, dbPath } = freshDb();
    const created = createJson(dbPath, ['--model', 'gpt-4o']);
    expect(created.key).toMatch(/^tg-[A-Za-z0-9_-]{32}$/);
    expect(created.id).toMatch(/^key_[0-9a-f]{16}$/);
    expect(created.name).toBe('alice');
    expect(created.model).toBe('gpt-4o');
    expect(created.token_limit_per_5h).toBe(200_000);
    expect(created.expiry_date).toBe('2027-01-01T00:00:00.000Z');
    expect(Number.isFinite(Date.parse(created.created_at))).toBe(true);
    expect(created.last_used).toBeNull();
    expect(created.total_lifetime_tokens).toBe(0);
    expect(created.total_requests).toBe(0);

    const storage = await createStorage({ databasePath: dbPath });
    try {
      expect((await storage.findKeyByDigest(digestKey(created.key)))?.id).toBe(created.id);
    } finally {
      await storage.close();
    }
    expect(allBytes(dir).includes(created.key)).toBe(false);
  });

  it('creates a missing data directory', () => {
    const { dir } = freshDb();
    const dbPath = join(dir, 'not', 'yet', 'there', 'tokengate.db');
    const run = cli(dbPath, createArgs());
    expect(run.status).toBe(0);
    expect(existsSync(dbPath)).toBe(true);
  });

  it('accepts a chosen key and never shows it again: list, list --json and show mask it', () => {
    const { dbPath } = freshDb();
    const run = cli(dbPath, createArgs(['--key', 'pk_user_123', '--model', 'gpt-4o']));
    expect(run.status).toBe(0);
    expect(run.stdout).toBe('pk_user_123\n');

    const list = cli(dbPath, ['keys', 'list', '--json']);
    expect(list.status).toBe(0);
    expect(list.stdout).not.toContain('pk_user_123');
    const parsed = JSON.parse(list.stdout) as { keys: KeyView[] };
    expect(Object.keys(parsed)).toEqual(['keys', 'store']);
    expect((parsed as unknown as { store: string }).store).toBe(`sqlite ${dbPath}`);
    expect(parsed.keys).toHaveLength(1);
    const [view] = parsed.keys;
    expect(view).toEqual({
      id: expect.stringMatching(/^key_[0-9a-f]{16}$/),
      key: 'pk...',
      name: 'alice',
      model: 'gpt-4o',
      token_limit_per_5h: 200_000,
      limits: [{ name: '5h', tokens: 200_000, window: '5h', window_seconds: 18_000 }],
      expiry_date: '2027-01-01T00:00:00.000Z',
      created_at: expect.any(String),
      last_used: null,
      total_lifetime_tokens: 0,
      total_requests: 0,
      weights: null,
    });

    const table = cli(dbPath, ['keys', 'list']);
    expect(table.status).toBe(0);
    expect(table.stdout).not.toContain('pk_user_123');
    const lines = table.stdout.trimEnd().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^ID\s+KEY\s+NAME\s+MODEL\s+LIMITS\s+EXPIRES\s+LIFETIME TOKENS\s+REQUESTS$/);
    expect(lines[1]?.split(/\s{2,}/)).toEqual([view?.id, 'pk...', 'alice', 'gpt-4o', '5h=200000', '2027-01-01T00:00:00.000Z', '0', '0']);

    const show = cli(dbPath, ['keys', 'show', view?.id ?? '']);
    expect(show.status).toBe(0);
    expect(show.stdout).not.toContain('pk_user_123');
    expect(show.stdout).toMatch(/^key:\s+pk\.\.\.$/m);
  });

  it('rejects a --key that is already in use', () => {
    const { dbPath } = freshDb();
    expect(cli(dbPath, createArgs(['--key', 'pk_user_123'])).status).toBe(0);
    const line = expectFailure(cli(dbPath, createArgs(['--key', 'pk_user_123'])), /--key/);
    expect(line).toMatch(/already exists/);
    expect(line).not.toContain('pk_user_123');
  });

  it('lists nothing in an empty store', () => {
    const { dbPath } = freshDb();
    const run = cli(dbPath, ['keys', 'list', '--json']);
    expect(run.status).toBe(0);
    expect(JSON.parse(run.stdout)).toEqual({ keys: [], store: `sqlite ${dbPath}` });
  });
});

describe('tokengate keys show / update / delete', () => {
  it('round-trips a key', () => {
    const { dbPath } = freshDb();
    const created = createJson(dbPath, ['--model', 'gpt-4o']);
    const id = created.id;

    const shown = cli(dbPath, ['keys', 'show', id, '--json']);
    expect(shown.status).toBe(0);
    const view = JSON.parse(shown.stdout) as KeyView;
    expect(view.id).toBe(id);
    expect(view.key).toBe(`${created.key.slice(0, 8)}...`);
    expect(view.name).toBe('alice');
    expect(view.model).toBe('gpt-4o');
    expect(view.token_limit_per_5h).toBe(200_000);
    expect(view.expiry_date).toBe('2027-01-01T00:00:00.000Z');
    expect(view.created_at).toBe(created.created_at);
    expect(view.last_used).toBeNull();
    expect(view.total_lifetime_tokens).toBe(0);
    expect(view.total_requests).toBe(0);
    expect(shown.stdout).not.toContain(created.key);

    const updated = cli(dbPath, ['keys', 'update', id, '--name', 'alice-2', '--limit', '300000', '--expires', '2027-06-01T12:00:00Z', '--model', 'claude', '--json']);
    expect(updated.status).toBe(0);
    const after = JSON.parse(updated.stdout) as KeyView;
    expect(after.id).toBe(id);
    expect(after.key).toBe(view.key);
    expect(after.name).toBe('alice-2');
    expect(after.model).toBe('claude');
    expect(after.token_limit_per_5h).toBe(300_000);
    expect(after.expiry_date).toBe('2027-06-01T12:00:00.000Z');
    expect(after.created_at).toBe(view.created_at);
    expect(after.total_requests).toBe(0);

    const again = JSON.parse(cli(dbPath, ['keys', 'show', id, '--json']).stdout) as KeyView;
    expect(again).toEqual(after);

    const human = cli(dbPath, ['keys', 'show', id]);
    expect(human.status).toBe(0);
    expect(human.stdout).toMatch(new RegExp(`^id:\\s+${id}$`, 'm'));
    expect(human.stdout).toMatch(/^name:\s+alice-2$/m);
    expect(human.stdout).toMatch(/^token_limit_per_5h:\s+300000$/m);

    const deleted = cli(dbPath, ['keys', 'delete', id]);
    expect(deleted.status).toBe(0);
    expect(deleted.stdout).toBe(`deleted ${id} from sqlite ${dbPath}\n`);
    expectFailure(cli(dbPath, ['keys', 'show', id]), new RegExp(`no key with id ${id}`));
    expect(JSON.parse(cli(dbPath, ['keys', 'list', '--json']).stdout)).toMatchObject({ keys: [] });
  });

  it("clears the model with --model '' and prints the updated key", () => {
    const { dbPath } = freshDb();
    const { id } = createJson(dbPath, ['--model', 'gpt-4o']);
    const json = cli(dbPath, ['keys', 'update', id, '--model', '', '--json']);
    expect(json.status).toBe(0);
    expect((JSON.parse(json.stdout) as KeyView).model).toBeNull();
    expect((JSON.parse(cli(dbPath, ['keys', 'show', id, '--json']).stdout) as KeyView).model).toBeNull();

    const human = cli(dbPath, ['keys', 'update', id, '--limit', '5']);
    expect(human.status).toBe(0);
    expect(human.stdout).toMatch(/^model:\s+-$/m);
    expect(human.stdout).toMatch(/^token_limit_per_5h:\s+5$/m);
  });
});

describe('tokengate keys --limit, several of them', () => {
  it('creates a key with a 5-hour and a weekly limit, shows them, changes the 5h one with a plain number', () => {
    const { dbPath } = freshDb();
    const created = createJson(dbPath, ['--limit', '7d=2000000', '--limit', 'glm:5h=5000@glm-4.7*,glm-5*']);
    expect(created.token_limit_per_5h).toBe(200_000);
    expect(created.limits).toEqual([
      { name: '5h', tokens: 200_000, window: '5h', window_seconds: 18_000 },
      { name: '7d', tokens: 2_000_000, window: '7d', window_seconds: 604_800 },
      { name: 'glm', tokens: 5000, window: '5h', window_seconds: 18_000, models: ['glm-4.7*', 'glm-5*'] },
    ]);
    expect(cli(dbPath, ['keys', 'show', created.id]).stdout).toMatch(/^limits:\s+5h=200000 7d=2000000 glm:5h=5000@glm-4\.7\*,glm-5\*$/m);
    const updated = JSON.parse(cli(dbPath, ['keys', 'update', created.id, '--limit', '300000', '--json']).stdout) as KeyView;
    expect(updated.limits.map((limit) => [limit.name, limit.tokens])).toEqual([
      ['5h', 300_000],
      ['7d', 2_000_000],
      ['glm', 5000],
    ]);
    const replaced = JSON.parse(cli(dbPath, ['keys', 'update', created.id, '--limit', '7d=10', '--json']).stdout) as KeyView;
    expect(replaced).toMatchObject({ token_limit_per_5h: null, limits: [{ name: '7d', tokens: 10 }] });
  });

  it.each([
    ['7d=0', /--limit: tokens "0" is not a positive integer/],
    ['5x=5', /--limit: window "5x" is not a number of minutes, hours or days/],
    ['32d=5', /--limit: window "32d" is not from 1m to 31d/],
    ['glm:5h=5@glm-*', /--limit: a key needs at least one limit that applies to every model/],
  ])('refuses --limit %j before touching the store, naming the option', (limit, message) => {
    const { dbPath } = freshDb();
    expectFailure(cli(dbPath, ['keys', 'create', '--name', 'a', '--limit', limit, '--expires', '2027-01-01']), message);
    expect(existsSync(dbPath)).toBe(false);
  });
});

describe('tokengate keys --weights', () => {
  it("sets a key's token weights on create and update, shows them, clears them with --weights ''", () => {
    const { dbPath } = freshDb();
    const created = createJson(dbPath, ['--weights', 'cache_read=0.10, output=2']);
    expect(created.weights).toEqual({ output: 2, cache_read: 0.1 });
    const human = cli(dbPath, ['keys', 'show', created.id]);
    expect(human.stdout).toMatch(/^weights:\s+output=2,cache_read=0\.1$/m);
    const updated = cli(dbPath, ['keys', 'update', created.id, '--weights', 'cache_creation=1.25', '--json']);
    expect((JSON.parse(updated.stdout) as KeyView).weights).toEqual({ cache_creation: 1.25 });
    const cleared = cli(dbPath, ['keys', 'update', created.id, '--weights', '', '--json']);
    expect((JSON.parse(cleared.stdout) as KeyView).weights).toBeNull();
    expect(cli(dbPath, ['keys', 'show', created.id]).stdout).toMatch(/^weights:\s+-$/m);
  });

  it.each(['cache_read=0', 'cache=1', 'input=2,input=3', 'output=1e3'])('refuses --weights %j before touching the store, naming the option', (weights) => {
    const { dbPath } = freshDb();
    expectFailure(cli(dbPath, createArgs(['--weights', weights])), /^.*--weights: /);
    expect(existsSync(dbPath)).toBe(false);
  });
});

describe('tokengate errors', () => {
  it.each(['0', '-5', '1.5', 'abc', '1e3', ' 7', '9007199254740993'])('rejects --limit %j before touching the store', (limit) => {
    const { dbPath } = freshDb();
    expectFailure(cli(dbPath, ['keys', 'create', '--name', 'a', '--limit', limit, '--expires', '2027-01-01']), /--limit/);
    expect(existsSync(dbPath)).toBe(false);
  });

  it('rejects a bad --limit on update too', () => {
    const { dbPath } = freshDb();
    const { id } = createJson(dbPath);
    expectFailure(cli(dbPath, ['keys', 'update', id, '--limit', '0']), /--limit/);
  });

  it('rejects an --expires that is not an ISO 8601 date', () => {
    const { dbPath } = freshDb();
    const line = expectFailure(cli(dbPath, ['keys', 'create', '--name', 'a', '--limit', '5', '--expires', 'tomorrow']), /--expires/);
    expect(line).toMatch(/ISO 8601/);
    const { id } = createJson(dbPath);
    expectFailure(cli(dbPath, ['keys', 'update', id, '--expires', 'tomorrow']), /--expires/);
  });

  it('names the option when the store would refuse the value', () => {
    const { dbPath } = freshDb();
    expectFailure(cli(dbPath, ['keys', 'create', '--name', ' ', '--limit', '5', '--expires', '2027-01-01']), /--name/);
    expectFailure(cli(dbPath, createArgs(['--key', 'has space'])), /--key/);
  });

  it.each([['show'], ['update', '--name', 'x'], ['delete']])('fails on an unknown id: keys %s', (command, ...rest) => {
    const { dbPath } = freshDb();
    createJson(dbPath);
    expectFailure(cli(dbPath, ['keys', command, 'key_0000000000000000', ...rest]), /no key with id key_0000000000000000/);
  });

  it('refuses an update with nothing to change', () => {
    const { dbPath } = freshDb();
    const { id } = createJson(dbPath);
    expectFailure(cli(dbPath, ['keys', 'update', id]), /at least one of --name, --limit, --expires, --model, --weights/);
  });

  it('refuses a key HTTP cannot carry, a date without a time zone and an expiry in the past, naming the option', () => {
    const { dbPath } = freshDb();
    expectFailure(cli(dbPath, createArgs(['--key', 'pk_ünïcode'])), /--key: .*visible ASCII/);
    for (const expires of ['2099-01-01T00:00', '2099-01-01 12:00 PST', '2020-01-01']) {
      expectFailure(cli(dbPath, ['keys', 'create', '--name', 'a', '--limit', '5', '--expires', expires]), /--expires: /);
    }
  });

  it('reports usage errors from commander', () => {
    const { dbPath } = freshDb();
    const missing = cli(dbPath, ['keys', 'create', '--name', 'a', '--limit', '5']);
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(/--expires/);
    const unknown = cli(dbPath, ['keys', 'list', '--bogus']);
    expect(unknown.status).not.toBe(0);
    expect(unknown.stderr).toMatch(/unknown option '--bogus'/);
    expect(existsSync(dbPath)).toBe(false);
  });

  it('reports a configuration error in one line', () => {
    const { dbPath } = freshDb();
    expectFailure(cli(dbPath, ['keys', 'list'], { DATABASE_URL: 'mysql://localhost/tokengate' }), /DATABASE_URL must start with postgres:\/\//);
  });

  it('reports an unreachable database in one line, without its password', () => {
    const { dbPath } = freshDb();
    const line = expectFailure(cli(dbPath, ['keys', 'list'], { DATABASE_URL: 'postgres://tg:hunter2@127.0.0.1:1/tokengate' }), /cannot migrate PostgreSQL at 127\.0\.0\.1:1\/tokengate: .*ECONNREFUSED/);
    expect(line).not.toContain('hunter2');
  });
});

describe('tokengate --help and --version', () => {
  it('documents keys create', () => {
    const { dbPath } = freshDb();
    const run = cli(dbPath, ['keys', 'create', '--help']);
    expect(run.status).toBe(0);
    expect(run.stdout).toContain('--limit');
    expect(run.stdout).toContain('--expires');
  });

  it('prints the package version', () => {
    const { dbPath } = freshDb();
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const run = cli(dbPath, ['--version']);
    expect(run.status).toBe(0);
    expect(run.stdout).toBe(`${pkg.version}\n`);
  });
});
