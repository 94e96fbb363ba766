// The admin's view: every key with its usage against each limit, sortable and searchable; create, update, revoke, delete.
import { useEffect, useRef, useState } from 'preact/hooks';
import { call, type AdminKey, type ApiError, type UsageView } from './api.js';
import { usePoll, useNow, useTabSecret } from './hooks.js';
import { LimitCard } from './limit-card.js';
import { SignIn } from './sign-in.js';
import { date, dateTime, tokens } from './format.js';

export const ADMIN_REFRESH_MS = 10000;

type Column = 'name' | 'usage' | 'expiry' | 'last_used';
type Announce = (message: string) => void;

/** The largest share of a limit in use: the key's nearest limit. */
const usageShare = (key: AdminKey): number => Math.max(0, ...key.limits.map((limit) => (limit.used + limit.reserved) / limit.tokens));

const SORTS: Record<Column, (a: AdminKey, b: AdminKey) => number> = {
  name: (a, b) => a.name.localeCompare(b.name),
  usage: (a, b) => usageShare(a) - usageShare(b),
  expiry: (a, b) => Date.parse(a.expiry_date) - Date.parse(b.expiry_date),
  last_used: (a, b) => (a.last_used ? Date.parse(a.last_used) : 0) - (b.last_used ? Date.parse(b.last_used) : 0),
};

export function Admin() {
  const [token, setToken] = useTabSecret('tokengate.admin');
  const [refused, setRefused] = useState<string>();
  if (token === undefined) {
    return <SignIn label="Admin token" action="Sign in" hint="The ADMIN_TOKEN the sidecar was started with. It stays in this tab." error={refused} onSubmit={(value) => { setRefused(undefined); setToken(value); }} />;
  }
  const signOut = (reason?: string): void => {
    setRefused(reason);
    setToken(undefined);
  };
  return <AdminKeys key={token} token={token} onSignOut={signOut} />;
}

function AdminKeys({ token, onSignOut }: { token: string; onSignOut(reason?: string): void }) {
  const list = usePoll(() => call<{ keys: AdminKey[] }>('api/admin/keys?usage=1', token), ADMIN_REFRESH_MS, token);
  const [query, setQuery] = useState('');
  const [sort, setSort] = useState<{ column: Column; ascending: boolean }>({ column: 'name', ascending: true });
  const [selected, setSelected] = useState<string>();
  const [message, setMessage] = useState('');
  const error = list.error as ApiError | undefined;
  const refused = error?.status === 401;
  useEffect(() => {
    if (refused) onSignOut('The admin token was refused.');
  }, [refused]);
  if (refused) return null;
  if (error?.status === 404 && !list.data) {
    return <p class="state" role="alert">The admin API is off on this server: start it with ADMIN_TOKEN set.</p>;
  }
  const announce: Announce = (text) => {
    setMessage(text);
    list.refresh();
  };
  const needle = query.trim().toLowerCase();
  const shown = (list.data?.keys ?? [])
    .filter((key) => needle === '' || [key.name, key.id, key.key, key.model ?? ''].some((field) => field.toLowerCase().includes(needle)))
    .sort((a, b) => (sort.ascending ? 1 : -1) * SORTS[sort.column](a, b));
  const current = list.data?.keys.find((key) => key.id === selected);
  const header = (column: Column, label: string) => (
    <th scope="col" aria-sort={sort.column === column ? (sort.ascending ? 'ascending' : 'descending') : 'none'}>
      <button type="button" class="sort" onClick={() => setSort({ column, ascending: sort.column === column ? !sort.ascending : true })}>{label}</button>
    </th>
  );
  return (
    <>
      <div class="title-row">
        <h2>Keys</h2>
        <button type="button" class="secondary" onClick={() => onSignOut()}>Sign out</button>
      </div>
      <p class="live" role="status" aria-live="polite">{message}</p>
      {error && <p class="error" role="status">Last refresh failed: {error.message}</p>}
      <label for="search">Search keys</label>
      <input id="search" type="search" value={query} onInput={(event) => setQuery(event.currentTarget.value)} />
      <div class="table-box">
        <table class="keys">
          <caption class="hidden">Keys, sorted by {sort.column.replace('_', ' ')}</caption>
          <thead>
            <tr>{header('name', 'Name')}<th scope="col">Key</th>{header('usage', 'Usage')}{header('expiry', 'Expires')}{header('last_used', 'Last used')}<th scope="col">Actions</th></tr>
          </thead>
          <tbody>
            {shown.map((key) => (
              <tr key={key.id} data-key-id={key.id}>
                <th scope="row">{key.name}</th>
                <td><code>{key.key}</code></td>
                <td>{key.limits.map((limit) => <div key={limit.name}>{limit.name}: {tokens(limit.used + limit.reserved)} / {tokens(limit.tokens)}</div>)}</td>
                <td>{Date.parse(key.expiry_date) <= Date.now() ? `expired ${date(key.expiry_date)}` : date(key.expiry_date)}</td>
                <td>{key.last_used ? dateTime(key.last_used) : 'never'}</td>
                <td><button type="button" aria-label={`Manage ${key.name}`} aria-expanded={selected === key.id} onClick={() => setSelected(selected === key.id ? undefined : key.id)}>Manage</button></td>
              </tr>
            ))}
          </tbody>
        </table>
        {list.data && shown.length === 0 && <p>{needle ? 'No key matches the search.' : 'No keys yet.'}</p>}
      </div>
      {current && <KeyPanel key={current.id} token={token} record={current} announce={announce} onClose={() => setSelected(undefined)} />}
      <CreateKey token={token} announce={announce} />
    </>
  );
}

const plusDays = (days: number): string => new Date(Date.now() + days * 86400000).toISOString().slice(0, 10);

function CreateKey({ token, announce }: { token: string; announce: Announce }) {
  const [fields, setFields] = useState({ name: '', tokens: '200000', expiry: plusDays(30), model: '' });
  const [created, setCreated] = useState<{ name: string; key: string }>();
  const [error, setError] = useState<string>();
  const shownOnce = useRef<HTMLDivElement>(null);
  const field = (name: keyof typeof fields) => ({ value: fields[name], onInput: (event: Event) => setFields({ ...fields, [name]: (event.currentTarget as HTMLInputElement).value }) });
  const submit = async (event: Event): Promise<void> => {
    event.preventDefault();
    setError(undefined);
    try {
      const body = { name: fields.name, token_limit_per_5h: Number(fields.tokens), expiry_date: fields.expiry, model: fields.model || null };
      const made = await call<AdminKey & { key: string }>('api/admin/keys', token, 'POST', body);
      setCreated({ name: made.name, key: made.key });
      setFields({ ...fields, name: '', model: '' });
      announce(`Created key ${made.name}.`);
      requestAnimationFrame(() => shownOnce.current?.focus());
    } catch (failure) {
      setError((failure as Error).message);
    }
  };
  return (
    <section class="panel" aria-labelledby="create-title">
      <h2 id="create-title">Create a key</h2>
      {created && (
        <div class="once" ref={shownOnce} tabIndex={-1} role="alert" aria-labelledby="once-title">
          <p id="once-title">Copy the key for {created.name} now: it is shown only this once.</p>
          <input readOnly aria-label={`New key for ${created.name}`} data-testid="new-key" value={created.key} onFocus={(event) => event.currentTarget.select()} />
          <button type="button" onClick={() => void navigator.clipboard?.writeText(created.key)}>Copy</button>
          <button type="button" class="secondary" onClick={() => setCreated(undefined)}>Done</button>
        </div>
      )}
      <form onSubmit={submit}>
        <label for="new-name">Name</label>
        <input id="new-name" required {...field('name')} />
        <label for="new-tokens">Tokens per 5 hours</label>
        <input id="new-tokens" type="number" min={1} step={1} required {...field('tokens')} />
        <label for="new-expiry">Expires on</label>
        <input id="new-expiry" type="date" required {...field('expiry')} />
        <label for="new-model">Model (optional)</label>
        <input id="new-model" {...field('model')} />
        {error && <p class="error" role="alert">{error}</p>}
        <button type="submit">Create key</button>
      </form>
    </section>
  );
}

function KeyPanel({ token, record, announce, onClose }: { token: string; record: AdminKey; announce: Announce; onClose(): void }) {
  const path = `api/admin/keys/${encodeURIComponent(record.id)}`;
  const usage = usePoll(() => call<UsageView>(`${path}/usage`, token), ADMIN_REFRESH_MS, record.id);
  const now = useNow();
  const [name, setName] = useState(record.name);
  const [limit, setLimit] = useState(record.token_limit_per_5h === null ? '' : String(record.token_limit_per_5h));
  const [expiry, setExpiry] = useState(record.expiry_date.slice(0, 10));
  const [confirming, setConfirming] = useState(false);
  const [error, setError] = useState<string>();
  const act = async (work: () => Promise<unknown>, done: string): Promise<void> => {
    setError(undefined);
    try {
      await work();
      announce(done);
      usage.refresh();
    } catch (failure) {
      setError((failure as Error).message);
    }
  };
  const save = (event: Event): void => {
    event.preventDefault();
    const patch: Record<string, unknown> = {};
    if (name !== record.name) patch.name = name;
    if (limit !== '' && Number(limit) !== record.token_limit_per_5h) patch.token_limit_per_5h = Number(limit);
    if (expiry !== record.expiry_date.slice(0, 10)) patch.expiry_date = expiry;
    if (Object.keys(patch).length === 0) return setError('Nothing changed.');
    void act(() => call(path, token, 'PATCH', patch), `Saved ${name}.`);
  };
  const revoke = (): Promise<void> => act(() => call(path, token, 'PATCH', { expiry_date: new Date().toISOString() }), `Revoked ${record.name}: it is expired from now on.`);
  const remove = (): Promise<void> => act(async () => {
    await call(path, token, 'DELETE');
    onClose();
  }, `Deleted ${record.name}.`);
  return (
    <section class="panel" aria-labelledby="panel-title">
      <div class="title-row">
        <h2 id="panel-title">Key {record.name}</h2>
        <button type="button" class="secondary" onClick={onClose}>Close</button>
      </div>
      <p class="muted">id {record.id} · {tokens(record.total_lifetime_tokens)} tokens in {tokens(record.total_requests)} requests since {date(record.created_at)}</p>
      {usage.data?.limits.map((seen, index) => <LimitCard key={seen.name} limit={seen} now={now} id={`panel-limit-${index}`} />)}
      <form onSubmit={save}>
        <h3>Update</h3>
        <label for="edit-name">Name</label>
        <input id="edit-name" required value={name} onInput={(event) => setName(event.currentTarget.value)} />
        <label for="edit-tokens">Tokens per 5 hours</label>
        <input id="edit-tokens" type="number" min={1} step={1} value={limit} onInput={(event) => setLimit(event.currentTarget.value)} />
        <label for="edit-expiry">Expires on</label>
        <input id="edit-expiry" type="date" value={expiry} onInput={(event) => setExpiry(event.currentTarget.value)} />
        {error && <p class="error" role="alert">{error}</p>}
        <button type="submit">Save changes</button>
      </form>
      <div class="danger">
        <button type="button" onClick={() => void revoke()}>Revoke</button>
        {confirming ? (
          <>
            <span>Delete {record.name} and its usage for good?</span>
            <button type="button" class="destructive" onClick={() => void remove()}>Yes, delete</button>
            <button type="button" class="secondary" onClick={() => setConfirming(false)}>Cancel</button>
          </>
        ) : (
          <button type="button" class="destructive" onClick={() => setConfirming(true)}>Delete</button>
        )}
      </div>
    </section>
  );
}
