// Token counts read from a parsed `usage` object, OpenAI or Anthropic style, checked before they are charged.

/**
 * Why a response's usage could not be read, as `tokengate_usage_unreadable_total{reason}` counts it:
 * a content-encoding the tap cannot decode (or a body that fails to decode), a body or usage value
 * that is not what it should be, a JSON value too long to hold, or a finished body with no usage.
 */
export const UNREADABLE_REASONS = ['encoding', 'malformed', 'oversized', 'no_usage'] as const;
export type UnreadableReason = (typeof UNREADABLE_REASONS)[number];

/**
 * A token count, or why there is none (`reason` defaults to malformed). `partial`: a stream cut
 * before its final usage event, so the count is the usage reported so far, not the whole.
 */
export type UsageReading = { tokens: number; partial?: true } | { problem: string; reason?: UnreadableReason };

type Fields = Record<string, unknown>;

const OPENAI_PARTS = ['prompt_tokens', 'completion_tokens'] as const;
// Anthropic reports cache writes and reads apart from input_tokens, and all of them are billed.
const ANTHROPIC_PARTS = [
  'input_tokens',
  'output_tokens',
  'cache_creation_input_tokens',
  'cache_read_input_tokens',
] as const;
const MAX_SHOWN = 40;

/** Reads a token count from a parsed `usage` object of OpenAI or Anthropic style; undefined when `usage` is not an object carrying any known field. */
export function tokensFromUsage(usage: unknown): UsageReading | undefined {
  if (typeof usage !== 'object' || usage === null || Array.isArray(usage)) return undefined;
  const fields = usage as Fields;
  // total_tokens covers chat completions and the Responses API (whose input/output look like Anthropic's).
  if (carries(fields, 'total_tokens')) return sum(fields, ['total_tokens']);
  if (OPENAI_PARTS.some((name) => carries(fields, name))) return sum(fields, OPENAI_PARTS);
  if (ANTHROPIC_PARTS.some((name) => carries(fields, name))) return sum(fields, ANTHROPIC_PARTS);
  return undefined;
}

// Anthropic sends null for cache fields it has nothing to say about, so null means "not carried".
function carries(fields: Fields, name: string): boolean {
  return fields[name] !== undefined && fields[name] !== null;
}

function sum(fields: Fields, names: readonly string[]): UsageReading {
  let total = 0;
  for (const name of names) {
    const value = fields[name] ?? 0;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
      return { problem: `usage.${name} is ${show(value)}, not a non-negative integer` };
    }
    total += value;
  }
  if (!Number.isSafeInteger(total)) return { problem: `usage fields ${names.join(' + ')} sum past the safe integer range` };
  return { tokens: total };
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
