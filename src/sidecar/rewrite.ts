// Optional request-body rewrites: force the key's model, ask OpenAI streams to report their usage.

export interface RewriteRules {
  /** Set `model` to this (the key's model), when given. */
  model: string | undefined;
  /** Add `stream_options.include_usage: true` to streaming OpenAI completions that do not set it. */
  includeStreamUsage: boolean;
}

/** OpenAI endpoints that take `stream_options`: chat completions and the legacy completions. */
const STREAMING_COMPLETIONS = /\/(?:chat\/)?completions$/;

/** Whether any rule could apply to a request to `path` (without its query). */
export function rewriteMayApply(rules: RewriteRules, path: string): boolean {
  return rules.model !== undefined || (rules.includeStreamUsage && STREAMING_COMPLETIONS.test(path));
}

/**
 * The rewritten JSON body, or undefined when nothing changes (the body is not a JSON object, or no
 * rule applies), in which case the original bytes are forwarded as they are.
 */
export function rewriteBody(raw: Buffer, path: string, rules: RewriteRules): Buffer | undefined {
  const body = parseObject(raw);
  if (body === undefined) return undefined;
  let changed = false;
  if (rules.model !== undefined && body.model !== rules.model) {
    body.model = rules.model;
    changed = true;
  }
  if (rules.includeStreamUsage && STREAMING_COMPLETIONS.test(path) && body.stream === true && !hasIncludeUsage(body.stream_options)) {
    body.stream_options = { ...(isObject(body.stream_options) ? body.stream_options : {}), include_usage: true };
    changed = true;
  }
  return changed ? Buffer.from(JSON.stringify(body), 'utf8') : undefined;
}

/** A client that set include_usage either way made its choice; it is left alone. */
function hasIncludeUsage(options: unknown): boolean {
  return isObject(options) && 'include_usage' in options;
}

function parseObject(raw: Buffer): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(raw.toString('utf8'));
    return isObject(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
