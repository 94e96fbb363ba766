// The form that takes a key or the admin token: a password field, so that nothing echoes it on screen.
import { useState } from 'preact/hooks';

export function SignIn({ label, action, hint, error, onSubmit }: { label: string; action: string; hint: string; error?: string; onSubmit(secret: string): void }) {
  const [value, setValue] = useState('');
  return (
    <form
      class="sign-in"
      onSubmit={(event) => {
        event.preventDefault();
        if (value.trim() !== '') onSubmit(value.trim());
      }}
    >
      <label for="secret">{label}</label>
      <p id="secret-hint" class="hint">{hint}</p>
      <input id="secret" type="password" autocomplete="off" spellcheck={false} required aria-describedby={error ? 'secret-hint secret-error' : 'secret-hint'} value={value} onInput={(event) => setValue(event.currentTarget.value)} />
      {error && <p id="secret-error" class="error" role="alert">{error}</p>}
      <button type="submit">{action}</button>
    </form>
  );
}
