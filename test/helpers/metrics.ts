// Reads a /metrics exposition with a real text-format parser and looks up one series' value.
import parsePrometheusTextFormat, { type MetricFamily } from 'parse-prometheus-text-format';

export interface Scrape {
  text: string;
  contentType: string | null;
  families: Map<string, MetricFamily>;
  /** The value of the series `name{labels}` (labels must match exactly); undefined when absent. */
  value(name: string, labels?: Record<string, string>): number | undefined;
  /** Names of every series family, histograms as their `_bucket`, `_sum` and `_count` families. */
  names(): string[];
}

/**
 * Parses exposition text. The parser folds every series of a labelled histogram into one, so a
 * histogram is read as the untyped `_bucket` / `_sum` / `_count` sample families it is made of.
 */
export function parseExposition(text: string, contentType: string | null = null): Scrape {
  const untyped = text.replace(/^# TYPE (\S+) histogram$/gm, '# TYPE $1 untyped');
  const families = new Map<string, MetricFamily>();
  for (const family of parsePrometheusTextFormat(untyped)) {
    // The series of one histogram alternate between _bucket, _sum and _count: gather them by name.
    const seen = families.get(family.name);
    if (seen) seen.metrics.push(...family.metrics);
    else if (family.metrics.length > 0) families.set(family.name, family);
  }
  const same = (a: Record<string, string> = {}, b: Record<string, string> = {}): boolean =>
    Object.keys(a).length === Object.keys(b).length && Object.entries(a).every(([k, v]) => b[k] === v);
  return {
    text,
    contentType,
    families,
    value(name, labels = {}) {
      const sample = families.get(name)?.metrics.find((m) => same(m.labels, labels));
      return sample?.value === undefined ? undefined : Number(sample.value);
    },
    names: () => [...families.keys()],
  };
}

export async function scrape(url: string): Promise<Scrape> {
  const response = await fetch(url);
  if (response.status !== 200) throw new Error(`GET ${url} answered ${response.status}`);
  return parseExposition(await response.text(), response.headers.get('content-type'));
}
