// The key holder's view: their own limits from api/stats/usage, refreshed every few seconds, and the states a key can be in.
import { call, ApiError, type UsageView } from './api.js';
import { usePoll, useNow, useTabSecret } from './hooks.js';
import { LimitCard } from './limit-card.js';
import { SignIn } from './sign-in.js';
import { date, duration } from './format.js';

/** How often an open page asks: one small read per few seconds per tab. */
export const KEY_REFRESH_MS = 5000;

export function KeyHolder() {
  const [key, setKey] = useTabSecret('tokengate.key');
  if (key === undefined) {
    return <SignIn label="Your API key" action="Show my usage" hint="The key stays in this tab and goes only to this server, in a header." onSubmit={setKey} />;
  }
  return <KeyUsage key={key} secret={key} onSignOut={() => setKey(undefined)} />;
}

function KeyUsage({ secret, onSignOut }: { secret: string; onSignOut(): void }) {
  const usage = usePoll(() => call<UsageView>('api/stats/usage', secret), KEY_REFRESH_MS, secret);
  const now = useNow();
  const signOut = <button type="button" class="secondary" onClick={onSignOut}>Use another key</button>;
  const error = usage.error as ApiError | undefined;
  if (error?.status === 401 || error?.status === 403) {
    return (
      <section class="state unknown" aria-labelledby="state-title">
        <h2 id="state-title">This key is not known</h2>
        <p>The server has no key like the one entered ({error.message}). Check it for typos, or ask whoever gave it to you.</p>
        {signOut}
      </section>
    );
  }
  const view = usage.data;
  if (!view) {
    return (
      <section class="state" aria-busy={!error}>
        <p role="status">{error ? `Usage cannot be read right now: ${error.message} Retrying.` : 'Reading usage…'}</p>
        {signOut}
      </section>
    );
  }
  const exhausted = view.limits.filter((limit) => limit.remaining === 0);
  return (
    <section aria-labelledby="key-title">
      <div class="title-row">
        <h2 id="key-title">{view.name} <span class="muted">{view.key}</span></h2>
        {signOut}
      </div>
      {view.is_expired && (
        <p class="state expired" role="alert" data-testid="state">This key has expired: requests with it are refused. Its usage is shown below.</p>
      )}
      {!view.is_expired && exhausted.length > 0 && (
        <p class="state exhausted" role="alert" data-testid="state">
          {exhausted.map((limit) => (limit.used > 0 ? `The ${limit.name} limit is used up; tokens free up in ${duration(Date.parse(limit.window_ends_at) - now)}.` : `The ${limit.name} limit is held by requests in flight; it frees up as they finish.`)).join(' ')}
        </p>
      )}
      {error && <p class="error" role="status">Last refresh failed ({error.message}); showing usage as of {date(view.generated_at)}.</p>}
      {view.limits.map((limit, index) => <LimitCard key={limit.name} limit={limit} now={now} id={`limit-${index}`} />)}
    </section>
  );
}
