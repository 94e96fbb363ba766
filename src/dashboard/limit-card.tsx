// One limit: a gauge of used / reserved / remaining, the figures, when usage starts to leave the window, the chart.
import type { LimitStats, LimitUsage } from './api.js';
import { UsageChart } from './chart.js';
import { dateTime, duration, limitTitle, tokens } from './format.js';

const share = (part: number, whole: number): string => `${Math.min(100, (100 * part) / Math.max(1, whole))}%`;

export function Gauge({ limit }: { limit: LimitStats }) {
  const text = `${tokens(limit.used)} used, ${tokens(limit.reserved)} reserved, ${tokens(limit.remaining)} of ${tokens(limit.tokens)} remaining`;
  return (
    <div class="gauge" role="meter" aria-label={`${limit.name} limit`} aria-valuemin={0} aria-valuemax={limit.tokens} aria-valuenow={Math.min(limit.tokens, limit.used + limit.reserved)} aria-valuetext={text}>
      <span class="used" style={{ width: share(limit.used, limit.tokens) }} />
      <span class="reserved" style={{ width: share(limit.reserved, limit.tokens) }} />
    </div>
  );
}

/** When the oldest usage leaves the window, freeing tokens; nothing to say when nothing is used. */
export function countdown(limit: LimitStats, now: number): string {
  if (limit.used === 0) return limit.reserved > 0 ? 'Nothing is used yet; requests in flight hold the reserved tokens.' : 'Nothing is used in this window.';
  const ends = Date.parse(limit.window_ends_at);
  if (ends <= now) return 'Usage is leaving the window now.';
  return `Usage starts leaving the window in ${duration(ends - now)} (${dateTime(limit.window_ends_at)}).`;
}

export function LimitCard({ limit, now, id }: { limit: LimitStats | LimitUsage; now: number; id: string }) {
  return (
    <section class="limit" aria-labelledby={id} data-limit={limit.name}>
      <h3 id={id}>{limitTitle(limit)}</h3>
      <Gauge limit={limit} />
      <dl class="figures">
        <div><dt>Used</dt><dd data-testid="used">{tokens(limit.used)}</dd></div>
        <div><dt>Reserved</dt><dd data-testid="reserved">{tokens(limit.reserved)}</dd></div>
        <div><dt>Remaining</dt><dd data-testid="remaining">{tokens(limit.remaining)}</dd></div>
        <div><dt>Limit</dt><dd data-testid="limit">{tokens(limit.tokens)}</dd></div>
      </dl>
      <p class="countdown" data-testid="countdown">{countdown(limit, now)}</p>
      {'points' in limit && <UsageChart limit={limit} />}
    </section>
  );
}
