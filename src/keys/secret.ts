// API key secrets: generation, the digest stored at rest, the display prefix and key-string checks.
import crypto, { randomBytes } from 'node:crypto';

/** Longest key accepted, in bytes (keys are ASCII); longer ones are rejected without a lookup. */
export const MAX_KEY_BYTES = 512;

/** What HTTP can carry in a header: visible ASCII, `!` to `~`. */
const VISIBLE_ASCII = /^[\x21-\x7e]+$/;

/** Why a key string cannot be a key, or undefined when it can. */
export function keyProblem(key: string): string | undefined {
  if (key.length === 0) return 'the key is empty';
  if (key.length > MAX_KEY_BYTES) return `the key is longer than ${MAX_KEY_BYTES} bytes`;
  if (!VISIBLE_ASCII.test(key)) return 'the key may only contain visible ASCII characters (! to ~), no spaces or control characters';
  return undefined;
}

// crypto.hash() (Node.js 20.12+) digests without building a Hash stream object: it runs on every request.
const sha256Hex: (key: string) => string =
  typeof crypto.hash === 'function' ? (key) => crypto.hash('sha256', key, 'hex') : (key) => crypto.createHash('sha256').update(key, 'utf8').digest('hex');

/** SHA-256 of the key, lower-case hex: the only form in which a key is stored. */
export function digestKey(key: string): string {
  return sha256Hex(key);
}

/** A new random key: `tg-` and 32 base64url characters (192 bits). */
export function generateKey(): string {
  return `tg-${randomBytes(24).toString('base64url')}`;
}

/** A new key id: `key_` and 16 hex characters. */
export function generateKeyId(): string {
  return `key_${randomBytes(8).toString('hex')}`;
}

/** The characters kept for display: at most 8, and never more than a quarter of the key. */
export function keyPrefix(key: string): string {
  return [...key].slice(0, Math.min(8, Math.floor(key.length / 4))).join('');
}

/** How a stored key is shown: its prefix, then an ellipsis. */
export function maskKey(prefix: string): string {
  return `${prefix}...`;
}
