// A pino logger whose lines a test can read back.
import { Writable } from 'node:stream';
import { createLogger } from '../../src/logger.js';
import type { Logger } from '../../src/types.js';

export const WARN = 40;
export const ERROR = 50;

export interface Captured {
  logger: Logger;
  lines: Record<string, unknown>[];
  at(level: number): Record<string, unknown>[];
}

/** A pino logger whose lines are kept, parsed. */
export function captureLogs(): Captured {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { logger: createLogger(sink), lines, at: (level) => lines.filter((line) => line.level === level) };
}
