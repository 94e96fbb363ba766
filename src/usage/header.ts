// Usage counts reported by the upstream in a response header.
import type { UsageReading } from './tokens.js';

const MAX_SHOWN = 40;

/** Reads a usage count from a response header value (as returned by res.getHeader): undefined when absent, a reading otherwise. Accepts a string of ASCII digits (surrounding whitespace ok) or a number; anything else (e.g. "-5", "1e3", "12abc", an array with two different values) is a problem. */
export function usageFromHeader(
  value: number | string | string[] | undefined,
  headerName: string,
): UsageReading | undefined {
  if (!Array.isArray(value)) return value === undefined ? undefined : readOne(value, headerName);
  // A header repeated with one value (say, copied by a proxy) is still unambiguous.
  const [first, ...others] = new Set(value);
  if (first === undefined) return undefined;
  if (others.length > 0) return { problem: `header ${headerName} has ${others.length + 1} different values` };
  return readOne(first, headerName);
}

function readOne(value: number | string, headerName: string): UsageReading {
  // \d is [0-9] only, so signs, exponents, hex and other scripts' digits are all refused.
  const count = typeof value === 'number' ? value : /^\s*\d+\s*$/.test(value) ? Number(value) : NaN;
  if (Number.isSafeInteger(count) && count >= 0) return { tokens: count };
  const text = String(value);
  const shown = text.length > MAX_SHOWN ? `${text.slice(0, MAX_SHOWN)}…` : text;
  return { problem: `header ${headerName} is ${JSON.stringify(shown)}, not a non-negative integer` };
}
