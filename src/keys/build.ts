// A new key's record from validated input: the id, the secret, its digest and display prefix.
import type { KeyRecord } from '../types.js';
import { digestKey, generateKey, generateKeyId, keyPrefix } from './secret.js';
import { validateNewKey, type KeyPatch, type NewKey } from './validate.js';

export interface BuiltKey {
  record: KeyRecord;
  /** The plaintext, returned once to the caller. */
  key: string;
  keyHash: string;
}

export function buildKey(input: NewKey, now: number): BuiltKey {
  const valid = validateNewKey(input);
  const key = valid.key ?? generateKey();
  const record: KeyRecord = {
    id: generateKeyId(),
    keyPrefix: keyPrefix(key),
    name: valid.name,
    model: valid.model ?? null,
    tokenLimit: valid.tokenLimit,
    expiresAt: valid.expiresAt,
    createdAt: now,
    lastUsedAt: null,
    totalLifetimeTokens: 0,
    totalRequests: 0,
    tokenWeights: valid.tokenWeights ?? null,
  };
  return { record, key, keyHash: digestKey(key) };
}

/** The fields a patch sets, after validation; empty when it sets none. */
export function patchChanges(patch: KeyPatch): KeyPatch {
  return Object.fromEntries(Object.entries(patch).filter(([field, value]) => value !== undefined && ['name', 'tokenLimit', 'expiresAt', 'model', 'tokenWeights'].includes(field)));
}
