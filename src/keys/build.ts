// A new key's record from validated input: the id, the secret, its digest and display prefix.
import type { KeyRecord } from '../types.js';
import { digestKey, generateKey, generateKeyId, keyPrefix } from './secret.js';
import { validateNewKey, type KeyPatch, type NewKey } from './validate.js';
import { clearedLimits, columnsFor, withFiveHours } from './limits.js';

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
    ...columnsFor(valid.limits ?? null, valid.tokenLimit)!,
    expiresAt: valid.expiresAt,
    createdAt: now,
    lastUsedAt: null,
    totalLifetimeTokens: 0,
    totalRequests: 0,
    tokenWeights: valid.tokenWeights ?? null,
  };
  return { record, key, keyHash: digestKey(key) };
}

/** The columns a key has, as a patch changes them. */
export type KeyChanges = Partial<Pick<KeyRecord, 'name' | 'tokenLimit' | 'expiresAt' | 'model' | 'tokenWeights' | 'limits'>>;

/**
 * The columns a validated patch sets; empty when it sets none. `current`, the key's `limits` column:
 * token_limit_per_5h alone on a key with limits of its own changes its `5h` limit.
 */
export function patchChanges(patch: KeyPatch, current: string | null | undefined): KeyChanges {
  const { limits, tokenLimit, ...rest } = patch;
  const changes: KeyChanges = Object.fromEntries(Object.entries(rest).filter(([field, value]) => value !== undefined && ['name', 'expiresAt', 'model', 'tokenWeights'].includes(field)));
  if (limits === null) Object.assign(changes, clearedLimits(current, tokenLimit));
  else if (limits !== undefined) Object.assign(changes, columnsFor(limits, tokenLimit));
  else if (tokenLimit !== undefined) Object.assign(changes, current ? withFiveHours(current, tokenLimit) : { tokenLimit });
  return changes;
}
