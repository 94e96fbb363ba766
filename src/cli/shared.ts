// What every tokengate command shares: running the program, one-line errors, the package version, storage.
import type { Command } from 'commander';
import { pino } from 'pino';
import { readEnvironment, type Environment } from '../config.js';
import { TokenGateError } from '../errors.js';
import { createLogger } from '../logger.js';
import type { Logger } from '../types.js';
import { configuredStore, createStorage, openAdminStore } from '../storage/create.js';
import type { AdminStore } from '../storage/admin.js';
import type { Storage } from '../storage/types.js';

/** A command used the wrong way (beyond what commander itself checks). */
export class UsageError extends TokenGateError {
  constructor(message: string) {
    super(message, 'usage');
  }
}

let parsed: Environment | undefined;

/** The variables `serve` reads, less its own: parsed on first use, so once per command and not at all for --help. */
export function environment(): Environment {
  parsed ??= readEnvironment(process.env);
  return parsed;
}

/** Logs go to stderr, so stdout stays the command's output; info lines (migrations applied) only with LOG_LEVEL=info. */
export function cliLogger(): Logger {
  return createLogger(pino.destination({ dest: 2, sync: true }), environment().logLevel ?? 'warn');
}

/** Opens the store the environment names (as `serve` does), runs `use`, and always closes it. */
export async function withStorage<T>(use: (storage: Storage) => Promise<T>): Promise<T> {
  // Key tools talk to the database directly: the file fallback, background pruning and the SQLite lock belong to the running gate.
  const storage = await createStorage({ ...environment().storage, fallback: false, prune: false, lock: false, logger: cliLogger() });
  try {
    return await use(storage);
  } finally {
    await storage.close();
  }
}

/** Opens the configured database for the tools (import, export, backup, restore), runs `use`, and always closes it. */
export async function withAdminStore<T>(use: (store: AdminStore) => Promise<T>): Promise<T> {
  const store = await openAdminStore(environment().storage);
  try {
    return await use(store);
  } finally {
    await store.close();
  }
}

/**
 * The store a command uses, as its output names it (`sqlite /abs/path.db`, `postgres host:port/db`):
 * run from another directory, a command would otherwise quietly use another database.
 */
export function storeName(): string {
  return configuredStore(environment().storage);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

export function printLine(line = ''): void {
  process.stdout.write(`${line}\n`);
}

/** Writes one line to stderr, for notes that must stay out of stdout. */
export function note(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** Shows stored text on a terminal without letting control characters (newlines, escapes) through. */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex -- replacing control characters is the point
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/gu, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

const PREFIX = 'tokengate: ';

/** One line for stderr: commander's "error: …" (and any "Did you mean" line) joined and prefixed like ours. */
function commanderLine(message: string): string {
  const text = message.trim().replace(/^error: /, '').replace(/\s*\n\s*/g, ' ');
  return `${PREFIX}${text}\n`;
}

function allCommands(command: Command): Command[] {
  return [command, ...command.commands.flatMap(allCommands)];
}

/**
 * Parses `argv` and runs the chosen command. Every failure ends as exit code 1 and one stderr line
 * `tokengate: <message>`, with no stack trace; help and `--version` exit 0.
 */
export async function runCli(program: Command, argv: readonly string[]): Promise<void> {
  for (const command of allCommands(program)) {
    command.configureOutput({ outputError: (message, write) => write(commanderLine(message)) });
  }
  try {
    await program.parseAsync([...argv]);
  } catch (error) {
    process.stderr.write(`${PREFIX}${errorMessage(error)}\n`);
    process.exitCode = 1;
  }
}

function errorMessage(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.trim().replace(/\s*\n\s*/g, ' ') || (error instanceof Error ? error.name : 'unknown error');
}
