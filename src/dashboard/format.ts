// How the page writes numbers, times and durations, in the reader's locale.
const numbers = new Intl.NumberFormat();

export const tokens = (count: number): string => numbers.format(count);

export const dateTime = (iso: string): string => new Date(iso).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });

export const date = (iso: string): string => new Date(iso).toLocaleDateString(undefined, { dateStyle: 'medium' });

/** `3 d 4 h`, `4 h 12 min`, `12 min 5 s`, `5 s`: the two largest units. */
export function duration(ms: number): string {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const units: [number, string][] = [[Math.floor(total / 86400), 'd'], [Math.floor(total / 3600) % 24, 'h'], [Math.floor(total / 60) % 60, 'min'], [total % 60, 's']];
  const first = units.findIndex(([value]) => value > 0);
  if (first < 0) return '0 s';
  return units.slice(first, first + 2).filter(([value]) => value > 0).map(([value, unit]) => `${value} ${unit}`).join(' ');
}

/** `5h · 200,000 tokens per 5 hours`, with its models when the limit is scoped. */
export function limitTitle(limit: { name: string; tokens: number; window: string; models?: string[] }): string {
  const scope = limit.models ? ` (models ${limit.models.join(', ')})` : '';
  return `${limit.name}: ${tokens(limit.tokens)} tokens per ${limit.window}${scope}`;
}
