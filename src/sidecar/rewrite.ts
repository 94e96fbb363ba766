// Request-body rewrites that no client input switches off: the key's model, usage on OpenAI streams.
import { parseJsonObject } from '../../middleware/body.js';

export interface RewriteRules {
  /** Set `model` to this (the key's model), when given. */
  model: string | undefined;
  /** Set `stream_options.include_usage` to true on streaming OpenAI completions. */
  includeStreamUsage: boolean;
}

/** OpenAI endpoints that take `stream_options`: chat completions and the legacy completions. */
const STREAMING_COMPLETIONS = /\/(?:chat\/)?completions$/;

/** Whether any rule applies to a request to `path` (without its query): its body must then be read. */
export function rewriteMayApply(rules: RewriteRules, path: string): boolean {
  return rules.model !== undefined || (rules.includeStreamUsage && STREAMING_COMPLETIONS.test(path));
}

/**
 * The body to forward, or undefined when it is not a JSON object (a leading byte order mark is
 * allowed), whatever its Content-Type said. With a model to force, the body is always re-serialized,
 * so that the upstream reads the very object checked here (a duplicate `"model"` member would
 * otherwise be read differently by different parsers).
 */
export function rewriteBody(raw: Buffer, path: string, rules: RewriteRules): Buffer | undefined {
  const body = parseJsonObject(raw);
  if (body === undefined) return undefined;
  let changed = false;
  if (rules.model !== undefined) {
    body.model = rules.model;
    changed = true;
  }
  if (rules.includeStreamUsage && STREAMING_COMPLETIONS.test(path) && body.stream === true && !reportsUsage(body.stream_options)) {
    body.stream_options = { ...(isObject(body.stream_options) ? body.stream_options : {}), include_usage: true };
    changed = true;
  }
  return changed ? Buffer.from(JSON.stringify(body), 'utf8') : raw;
}

function reportsUsage(options: unknown): boolean {
  return isObject(options) && options.include_usage === true;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
