// Usage readings without their split by kind: for tests about the whole count (the split has tests of its own).
import type { UsageReading } from '../../src/usage/tokens.js';

export function withoutParts<T extends UsageReading | undefined>(reading: T): T {
  if (reading === undefined || !('parts' in reading)) return reading;
  const { parts: _parts, ...rest } = reading;
  return rest as T;
}
