// `tokengate keys …`: create, list, show, update and delete API keys in the configured store.
import { Command } from 'commander';
import { ConflictError, NotFoundError, ValidationError } from '../errors.js';
import { checkFutureExpiry, parseDate, validateNewKey, validatePatch, type KeyPatch, type NewKey } from '../keys/validate.js';
import { keyView, type KeyView } from '../keys/view.js';
import type { KeyRecord } from '../storage/types.js';
import { formatWeights, type TokenWeights } from '../usage/weights.js';
import { checkLimitSet, formatLimit, parseLimitSpec, type Limit, type LimitView } from '../quota/limits.js';
import { FIVE_HOURS } from '../keys/limits.js';
import { DEFAULT_WINDOW_MS } from '../quota/window.js';
import { UsageError, note, printJson, printLine, printable, storeName, withStorage } from './shared.js';

interface CreateOptions {
  name: string;
  limit: string[];
  expires: string;
  model?: string;
  weights?: string;
  key?: string;
  json?: boolean;
}

interface UpdateOptions {
  name?: string;
  limit: string[];
  expires?: string;
  model?: string;
  weights?: string;
  json?: boolean;
}

interface JsonOption {
  json?: boolean;
}

/** The `keys` command group. */
export function keysCommand(): Command {
  const keys = new Command('keys').description('manage API keys (same store and environment as `tokengate serve`)');

  keys
    .command('create')
    .description('create a key; prints the plaintext key alone on stdout, once')
    .requiredOption('--name <name>', 'who or what the key is for')
    .option('--limit <limit>', LIMIT_HELP, collect, [])
    .requiredOption('--expires <date>', 'expiry in the future, an ISO 8601 date (midnight UTC) or date-time with a time zone (e.g. 2027-01-01 or 2027-01-01T00:00:00Z)')
    .option('--model <model>', 'model label recorded with the key')
    .option('--weights <weights>', "what each kind of token is charged, over the gate's TOKEN_WEIGHTS (e.g. cache_read=0.1,cache_creation=1.25)")
    .option('--key <key>', 'use this plaintext key (e.g. one being migrated) instead of a random one')
    .option('--json', 'print the key record with the plaintext key as one JSON object')
    .action(async (options: CreateOptions) => {
      if (options.limit.length === 0) throw new UsageError("required option '--limit <limit>' not specified");
      const input: NewKey = {
        name: options.name,
        ...limitOptions(options.limit),
        expiresAt: parseDate(options.expires, '--expires'),
        model: options.model === undefined || options.model === '' ? null : options.model,
        tokenWeights: options.weights ?? null,
      };
      if (options.key !== undefined) input.key = options.key;
      asOptions(() => validateNewKey(input));
      checkFutureExpiry(input.expiresAt, Date.now(), '--expires');
      const { record, key } = await withStorage((storage) => storage.createKey(input)).catch((error: unknown) => {
        throw error instanceof ConflictError && input.key !== undefined ? new ValidationError('--key', 'a key with this value already exists') : error;
      });
      const view = keyView(record);
      if (options.json) printJson({ ...view, key, store: storeName() });
      else printLine(key);
      note(
        `Created ${view.id} "${printable(view.name)}" (${view.key}) in ${storeName()}: limits ${limitsText(view.limits)}, ` +
          `expires ${view.expiry_date}${view.model === null ? '' : `, model ${printable(view.model)}`}; ` +
          'store it now, it is not shown again',
      );
    });

  keys
    .command('list')
    .description('list all keys (masked)')
    .option('--json', 'print {"keys": [...]} as JSON')
    .action(async (options: JsonOption) => {
      const records = await withStorage((storage) => storage.listKeys());
      const views = records.map(keyView);
      if (options.json) printJson({ keys: views, store: storeName() });
      else {
        printTable(views, Date.now());
        note(`store: ${storeName()}`);
      }
    });

  keys
    .command('show')
    .description('show one key (masked)')
    .argument('<id>', 'key id (key_…)')
    .option('--json', 'print the key as JSON')
    .action(async (id: string, options: JsonOption) => {
      const record = await withStorage((storage) => storage.getKey(id));
      if (!record) throw new NotFoundError(`no key with id ${id}`);
      printKey(record, options.json);
    });

  keys
    .command('update')
    .description('change a key; give at least one option')
    .argument('<id>', 'key id (key_…)')
    .option('--name <name>', 'new name')
    .option('--limit <limit>', `new limits, replacing the key's (${LIMIT_HELP}); a plain number alone changes the 5h limit only`, collect, [])
    .option('--expires <date>', 'new expiry, an ISO 8601 date or date-time')
    .option('--model <model>', "new model label; --model '' clears it")
    .option('--weights <weights>', "new token weights (e.g. cache_read=0.1); --weights '' clears them (the gate's TOKEN_WEIGHTS apply)")
    .option('--json', 'print the updated key as JSON')
    .action(async (id: string, options: UpdateOptions) => {
      const patch: KeyPatch = {};
      if (options.name !== undefined) patch.name = options.name;
      if (options.limit.length > 0) Object.assign(patch, limitOptions(options.limit));
      if (options.expires !== undefined) patch.expiresAt = parseDate(options.expires, '--expires');
      if (options.model !== undefined) patch.model = options.model === '' ? null : options.model;
      if (options.weights !== undefined) patch.tokenWeights = options.weights;
      if (Object.keys(patch).length === 0) throw new UsageError('nothing to update: give at least one of --name, --limit, --expires, --model, --weights');
      asOptions(() => validatePatch(patch));
      const record = await withStorage((storage) => storage.updateKey(id, patch));
      printKey(record, options.json);
    });

  keys
    .command('delete')
    .description('delete a key and its usage')
    .argument('<id>', 'key id (key_…)')
    .action(async (id: string) => {
      const deleted = await withStorage((storage) => storage.deleteKey(id));
      if (!deleted) throw new NotFoundError(`no key with id ${id}`);
      printLine(`deleted ${id} from ${storeName()}`);
    });

  return keys;
}

const LIMIT_HELP = 'tokens per rolling 5-hour window (200000), or a limit such as 5h=200000, 7d=2000000, glm:5h=50000@glm-4.7* (repeat for several)';

const collect = (value: string, previous: string[]): string[] => [...previous, value];

/**
 * The --limit options as a key's limits: one plain number is token_limit_per_5h; anything else
 * (several, or a window=tokens form) are the key's limits, a plain number among them its `5h` one.
 */
function limitOptions(values: string[]): { tokenLimit: number } | { limits: Limit[] } {
  if (values.length === 1 && /^\d+$/.test(values[0]!)) return { tokenLimit: parseLimit(values[0]!) };
  const limits = values.map((value) => (/^\d+$/.test(value) ? { name: FIVE_HOURS, tokens: parseLimit(value), windowMs: DEFAULT_WINDOW_MS } : parseLimitSpec(value, '--limit')));
  return { limits: checkLimitSet(limits, '--limit') };
}

/** `--limit`: digits only, making a positive safe integer. */
export function parseLimit(value: string): number {
  const limit = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(limit) || limit <= 0) throw new ValidationError('--limit', `"${value}" is not a positive integer`);
  return limit;
}

/** The option each validated field comes from, so errors name what the user typed. */
const OPTION_FOR_FIELD: Record<string, string> = {
  name: '--name',
  token_limit_per_5h: '--limit',
  expiry_date: '--expires',
  model: '--model',
  weights: '--weights',
  key: '--key',
};

/** Runs a validation, renaming a failing field to its command-line option. */
function asOptions(validate: () => unknown): void {
  try {
    validate();
  } catch (error) {
    const option = error instanceof ValidationError ? OPTION_FOR_FIELD[error.field] : undefined;
    if (error instanceof ValidationError && option !== undefined) {
      throw new ValidationError(option, error.message.slice(`${error.field}: `.length));
    }
    throw error;
  }
}

function printKey(record: KeyRecord, json: boolean | undefined): void {
  const view = keyView(record);
  if (json) {
    printJson({ ...view, store: storeName() });
    return;
  }
  note(`store: ${storeName()}`);
  const entries = Object.entries(view);
  const width = Math.max(...entries.map(([label]) => label.length)) + 1;
  for (const [label, value] of entries) printLine(`${`${label}:`.padEnd(width)} ${display(label === 'limits' ? limitsText(view.limits) : typeof value === 'object' && value !== null ? formatWeights(value as TokenWeights) : (value as string | number | null))}`);
}

/** Limits as --limit takes them: `5h=200000 7d=2000000`. */
function limitsText(limits: readonly LimitView[]): string {
  return limits.map((view) => formatLimit({ name: view.name, tokens: view.tokens, windowMs: view.window_seconds * 1000, ...(view.models ? { models: view.models } : {}) })).join(' ');
}

function display(value: string | number | null): string {
  return value === null ? '-' : printable(String(value));
}

interface Column {
  title: string;
  right?: boolean;
  cell(view: KeyView): string;
}

function printTable(views: KeyView[], now: number): void {
  if (views.length === 0) {
    printLine('no keys');
    return;
  }
  const columns: Column[] = [
    { title: 'ID', cell: (v) => v.id },
    { title: 'KEY', cell: (v) => v.key },
    { title: 'NAME', cell: (v) => display(v.name) },
    { title: 'MODEL', cell: (v) => display(v.model) },
    { title: 'LIMITS', cell: (v) => limitsText(v.limits) },
    { title: 'EXPIRES', cell: (v) => (Date.parse(v.expiry_date) <= now ? `${v.expiry_date} (expired)` : v.expiry_date) },
    { title: 'LIFETIME TOKENS', right: true, cell: (v) => String(v.total_lifetime_tokens) },
    { title: 'REQUESTS', right: true, cell: (v) => String(v.total_requests) },
  ];
  const rows = [columns.map((c) => c.title), ...views.map((v) => columns.map((c) => c.cell(v)))];
  const widths = columns.map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0)));
  for (const row of rows) {
    const cells = row.map((text, i) => (columns[i]?.right ? text.padStart(widths[i] ?? 0) : text.padEnd(widths[i] ?? 0)));
    printLine(cells.join('  ').trimEnd());
  }
}
