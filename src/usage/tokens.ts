// Token counts read from a parsed `usage` object, OpenAI or Anthropic style, split by kind and checked before they are charged.
import type { TokenParts } from './weights.js';

/**
 * Why a response's usage could not be read, as `tokengate_usage_unreadable_total{reason}` counts it:
 * a content-encoding the tap cannot decode (or a body that fails to decode), a body or usage value
 * that is not what it should be, a JSON value too long to hold, or a finished body with no usage.
 */
export const UNREADABLE_REASONS = ['encoding', 'malformed', 'oversized', 'no_usage'] as const;
export type UnreadableReason = (typeof UNREADABLE_REASONS)[number];

/**
 * A token count with its split by kind, or why there is none (`reason` defaults to malformed).
 * `partial`: a stream cut before its final usage event, so the count is the usage reported so far,
 * not the whole. Without `parts` (a header, a user function) the count is all input; `unsplit`:
 * the count came with a split that does not add up, so it is charged at the heaviest weight.
 */
export type UsageReading = { tokens: number; parts?: TokenParts; unsplit?: true; partial?: true } | { problem: string; reason?: UnreadableReason };

type Fields = Record<string, unknown>;

const MAX_SHOWN = 40;

/**
 * Reads a token count from a parsed `usage` object of OpenAI or Anthropic style, split by kind;
 * undefined when `usage` is not an object carrying any known field. The whole count is what the
 * upstream bills: `total_tokens` when given (chat completions, the Responses API), else prompt +
 * completion, else Anthropic's four fields. OpenAI counts cached prompt tokens inside its input
 * (`*_tokens_details.cached_tokens`); Anthropic reports cache writes and reads apart from it.
 */
export function tokensFromUsage(usage: unknown): UsageReading | undefined {
  if (typeof usage !== 'object' || usage === null || Array.isArray(usage)) return undefined;
  const fields = usage as Fields;
  try {
    if (carries(fields, 'total_tokens')) return fromTotal(fields);
    if (carries(fields, 'prompt_tokens') || carries(fields, 'completion_tokens')) {
      const prompt = count(fields, 'prompt_tokens');
      const output = count(fields, 'completion_tokens');
      const cacheRead = Math.min(cachedOf(fields.prompt_tokens_details), prompt);
      return reading({ input: prompt - cacheRead, output, cache_creation: 0, cache_read: cacheRead });
    }
    if (ANTHROPIC_PARTS.some((name) => carries(fields, name))) {
      const [input, output, cacheCreation, cacheRead] = ANTHROPIC_PARTS.map((name) => count(fields, name)) as [number, number, number, number];
      return reading({ input, output, cache_creation: cacheCreation, cache_read: cacheRead });
    }
  } catch (problem) {
    if (problem instanceof UsageProblem) return { problem: problem.message };
    throw problem;
  }
  return undefined;
}

const ANTHROPIC_PARTS = ['input_tokens', 'output_tokens', 'cache_creation_input_tokens', 'cache_read_input_tokens'] as const;

/**
 * The total decides; the kinds it names (output, cache reads and writes) come out of it, the rest is
 * input. A total alone is input. Parts that are not counts, or do not fit in the total, are not
 * believed: the total is then charged at the heaviest weight.
 */
function fromTotal(fields: Fields): UsageReading {
  const total = count(fields, 'total_tokens');
  const output = partOf(fields, 'completion_tokens') ?? partOf(fields, 'output_tokens') ?? 0;
  const cacheCreation = partOf(fields, 'cache_creation_input_tokens') ?? 0;
  const cacheRead = partOf(fields, 'cache_read_input_tokens') ?? (cachedOf(fields.prompt_tokens_details) || cachedOf(fields.input_tokens_details));
  const input = total - output - cacheCreation - cacheRead;
  const doubtful = input < 0 || PART_FIELDS.some((name) => carries(fields, name) && partOf(fields, name) === undefined);
  if (doubtful) return { tokens: total, unsplit: true };
  return { tokens: total, parts: { input, output, cache_creation: cacheCreation, cache_read: cacheRead } };
}

const PART_FIELDS = ['completion_tokens', 'output_tokens', 'cache_creation_input_tokens', 'cache_read_input_tokens'] as const;

function reading(parts: TokenParts): UsageReading {
  const tokens = parts.input + parts.output + parts.cache_creation + parts.cache_read;
  if (!Number.isSafeInteger(tokens)) return { problem: `usage fields sum past the safe integer range (${JSON.stringify(parts)})` };
  return { tokens, parts };
}

/** Cached prompt tokens in OpenAI's `*_tokens_details`; 0 when absent or not a count (they are charged as input then). */
function cachedOf(details: unknown): number {
  const cached = typeof details === 'object' && details !== null ? (details as Fields).cached_tokens : undefined;
  return typeof cached === 'number' && Number.isSafeInteger(cached) && cached >= 0 ? cached : 0;
}

class UsageProblem extends Error {}

// Anthropic sends null for cache fields it has nothing to say about, so null means "not carried".
function carries(fields: Fields, name: string): boolean {
  return fields[name] !== undefined && fields[name] !== null;
}

/** A part of a total: the total alone is billed, so a part that is not a count is left to the input, not a problem. */
function partOf(fields: Fields, name: string): number | undefined {
  const value = fields[name];
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/** A field's count (0 when not carried); a UsageProblem naming it when it is not a non-negative integer. */
function count(fields: Fields, name: string): number {
  const value = fields[name] ?? 0;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw new UsageProblem(`usage.${name} is ${show(value)}, not a non-negative integer`);
  return value;
}

function show(value: unknown): string {
  // String() keeps Infinity and NaN readable where JSON.stringify would print null.
  const text = typeof value === 'number' ? String(value) : (safeStringify(value) ?? String(value));
  return text.length > MAX_SHOWN ? `${text.slice(0, MAX_SHOWN)}…` : text;
}

function safeStringify(value: unknown): string | undefined {
  try {
    return JSON.stringify(value);
  } catch {
    return undefined; // BigInt or a cycle, which JSON input cannot produce but a caller might pass
  }
}
