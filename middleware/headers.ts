// The quota headers of every gated response: IETF RateLimit / RateLimit-Policy and OpenAI's x-ratelimit-*.
import type { Response } from 'express';
import { leastRemaining, policyHeader, rateLimitHeader, type LimitQuota } from '../src/quota/limits.js';

export interface Quota {
  limit: number;
  remaining: number;
  /** Seconds until the oldest counting usage leaves the window; 0 when none counts. */
  resetSeconds: number;
  windowMs: number;
}

export function setQuotaHeaders(res: Response, quota: Quota): void {
  const name = policyName(quota.windowMs);
  res.setHeader('RateLimit-Policy', `"${name}";q=${quota.limit};qu="tokens";w=${Math.round(quota.windowMs / 1000)}`);
  res.setHeader('RateLimit', `"${name}";r=${quota.remaining};t=${quota.resetSeconds}`);
  res.setHeader('x-ratelimit-limit-tokens', String(quota.limit));
  res.setHeader('x-ratelimit-remaining-tokens', String(quota.remaining));
  res.setHeader('x-ratelimit-reset-tokens', formatDuration(quota.resetSeconds));
}

/** Where each limit that applies stands, when a key has several: both RateLimit lists, and x-ratelimit-* of the one with least remaining. */
export function setLimitHeaders(res: Response, quotas: readonly LimitQuota[]): void {
  res.setHeader('RateLimit-Policy', policyHeader(quotas.map((quota) => quota.limit)));
  res.setHeader('RateLimit', rateLimitHeader(quotas));
  const least = leastRemaining(quotas)!;
  res.setHeader('x-ratelimit-limit-tokens', String(least.limit.tokens));
  res.setHeader('x-ratelimit-remaining-tokens', String(least.remaining));
  res.setHeader('x-ratelimit-reset-tokens', formatDuration(least.resetSeconds));
}

/** `tokens-5h` for the default window; the window's length in the largest whole unit otherwise. */
export function policyName(windowMs: number): string {
  const seconds = Math.round(windowMs / 1000);
  if (seconds % 3600 === 0) return `tokens-${seconds / 3600}h`;
  if (seconds % 60 === 0) return `tokens-${seconds / 60}m`;
  return `tokens-${seconds}s`;
}

/** Whole seconds as OpenAI writes them: `0s`, `42s`, `6m0s`, `4h59m12s`. */
export function formatDuration(totalSeconds: number): string {
  const h = Math.floor(totalSeconds / 3600);
  const m = Math.floor((totalSeconds % 3600) / 60);
  const s = totalSeconds % 60;
  if (h > 0) return `${h}h${m}m${s}s`;
  if (m > 0) return `${m}m${s}s`;
  return `${s}s`;
}
