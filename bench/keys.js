// @ts-check
// The keys the benchmark's load is spread over (plaintexts known to both sides).
export const KEY_COUNT = 100;

export function benchKeys() {
  return Array.from({ length: KEY_COUNT }, (_, i) => `tg-bench-${String(i).padStart(4, '0')}-load-key`);
}
