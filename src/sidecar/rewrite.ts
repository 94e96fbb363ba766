// Request-body rewrites that no client input switches off: the key's model, usage on OpenAI streams.
import { parseJsonObject } from '../http/request-body.js';

export interface RewriteRules {
  /** Set `model` to this (the key's model), when given. */
  model: string | undefined;
  /** Set `stream_options.include_usage` to true on streaming OpenAI completions. */
  includeStreamUsage: boolean;
}

/** OpenAI endpoints that take `stream_options`: chat completions and the legacy completions. */
const STREAMING_COMPLETIONS = /\/(?:chat\/)?completions$/;

/**
 * Whether `path` (without its query) is a completions endpoint as an upstream would route it:
 * percent-decoded, without `;` parameters or trailing slashes.
 */
function isCompletions(path: string): boolean {
  let decoded = path;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    // Malformed: the sidecar refused it already; a proxy() alone forwards it as it is.
  }
  return STREAMING_COMPLETIONS.test(decoded.replace(/;[^/]*/g, '').replace(/\/+$/, ''));
}

/** Whether any rule applies to a request to `path` (without its query): its body must then be read. */
export function rewriteMayApply(rules: RewriteRules, path: string): boolean {
  return rules.model !== undefined || (rules.includeStreamUsage && isCompletions(path));
}

/**
 * The body to forward, re-serialized, or undefined when it is not a JSON object (a leading byte
 * order mark is allowed), whatever its Content-Type said. The upstream reads the very object checked
 * here: a duplicate `"model"` or `"stream_options"` member would otherwise be read differently by
 * different parsers.
 */
export function rewriteBody(raw: Buffer, path: string, rules: RewriteRules): Buffer | undefined {
  const body = parseJsonObject(raw);
  if (body === undefined) return undefined;
  if (rules.model !== undefined) body.model = rules.model;
  // Any `stream` an upstream could take for true (`"true"`, `1`) streams.
  const streams = body.stream !== undefined && body.stream !== null && body.stream !== false;
  if (rules.includeStreamUsage && streams && isCompletions(path)) {
    body.stream_options = { ...(isObject(body.stream_options) ? body.stream_options : {}), include_usage: true };
  }
  return Buffer.from(JSON.stringify(body), 'utf8');
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
