// Which headers cross the proxy: hop-by-hop ones never do, nor the client's key; the upstream key may.
import type { IncomingHttpHeaders } from 'node:http';

export type HeaderMap = Record<string, string | string[]>;

/** Connection-level headers (RFC 9110 section 7.6.1), never forwarded in either direction. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/** Request headers that belong to the hop to the upstream: its own Host, and 100-continue handling. */
const REQUEST_ONLY_HERE = new Set(['host', 'expect']);

/** The client's credentials for the gate, which the upstream must not see. */
const KEY_HEADERS = new Set(['authorization', 'x-api-key']);

/** Headers minus hop-by-hop ones, including those the Connection header names. */
export function endToEnd(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): HeaderMap {
  const named = connectionTokens(headers.connection);
  const out: HeaderMap = {};
  for (const [name, value] of Object.entries(headers)) {
    const lower = name.toLowerCase();
    if (value !== undefined && !HOP_BY_HOP.has(lower) && !named.has(lower)) out[lower] = value;
  }
  return out;
}

function connectionTokens(value: string | string[] | undefined): Set<string> {
  const text = Array.isArray(value) ? value.join(',') : (value ?? '');
  return new Set(
    text
      .split(',')
      .map((token) => token.trim().toLowerCase())
      .filter(Boolean),
  );
}

/** The header the client's key came in, so the upstream key can go out the same way. */
export type KeyStyle = 'authorization' | 'x-api-key';

/** Bearer when the client sent a non-empty Bearer (the gate's first source), else x-api-key when present, else Bearer. */
export function keyStyle(headers: IncomingHttpHeaders): KeyStyle {
  if (/^\s*bearer\s+\S/i.test(headers.authorization ?? '')) return 'authorization';
  return headers['x-api-key'] === undefined ? 'authorization' : 'x-api-key';
}

/**
 * The headers to send upstream: end-to-end only, without the client's key, with the upstream key
 * when there is one, in `style` when given, else in the client's.
 */
export function upstreamRequestHeaders(headers: IncomingHttpHeaders, upstreamApiKey: string | undefined, style?: KeyStyle): HeaderMap {
  const out = endToEnd(headers);
  for (const name of [...REQUEST_ONLY_HERE, ...KEY_HEADERS]) delete out[name];
  if (upstreamApiKey !== undefined) {
    if ((style ?? keyStyle(headers)) === 'x-api-key') out['x-api-key'] = upstreamApiKey;
    else out.authorization = `Bearer ${upstreamApiKey}`;
  }
  return out;
}

/**
 * The raw path and query without `api_key` parameters. Other parameters keep their exact bytes
 * (re-serializing with URLSearchParams would re-encode them).
 */
export function withoutQueryKey(url: string): string {
  const start = url.indexOf('?');
  if (start === -1) return url;
  const kept = url
    .slice(start + 1)
    .split('&')
    .filter((pair) => queryName(pair) !== 'api_key');
  return kept.length === 0 ? url.slice(0, start) : `${url.slice(0, start)}?${kept.join('&')}`;
}

function queryName(pair: string): string {
  const name = pair.split('=', 1)[0] ?? '';
  try {
    return decodeURIComponent(name.replace(/\+/g, ' '));
  } catch {
    return name;
  }
}

/** The content codings the gate's usage tap decodes: the only ones offered to the upstream. */
const DECODED_CODINGS = new Set(['identity', 'gzip', 'x-gzip', 'deflate', 'br']);

/**
 * The client's Accept-Encoding with every coding the tap cannot decode left out (zstd, compress,
 * `*`, anything unknown), each kept entry with its own q-value. `identity` when nothing is left,
 * or when the client sent none (which would allow any coding).
 */
export function decodableAcceptEncoding(value: string | string[] | undefined): string {
  const text = Array.isArray(value) ? value.join(',') : (value ?? '');
  const kept = text
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => DECODED_CODINGS.has((entry.split(';', 1)[0] ?? '').trim().toLowerCase()));
  // Entries refused with q=0 do not make a body acceptable.
  return kept.some((entry) => !/;\s*q\s*=\s*0(\.0{0,3})?\s*$/i.test(entry)) ? kept.join(', ') : 'identity';
}
