// The dashboard page: the key holder's view, or the admin's with the admin token.
import { render } from 'preact';
import { useState } from 'preact/hooks';
import { Admin } from './admin-view.js';
import { KeyHolder } from './key-view.js';

type Mode = 'key' | 'admin';

function App() {
  const [mode, setMode] = useState<Mode>(() => (sessionStorage.getItem('tokengate.mode') === 'admin' ? 'admin' : 'key'));
  const choose = (next: Mode): void => {
    sessionStorage.setItem('tokengate.mode', next);
    setMode(next);
  };
  return (
    <>
      <header>
        <h1>tokengate usage</h1>
        <nav aria-label="View">
          <button type="button" aria-pressed={mode === 'key'} onClick={() => choose('key')}>My key</button>
          <button type="button" aria-pressed={mode === 'admin'} onClick={() => choose('admin')}>Admin</button>
        </nav>
      </header>
      <main>{mode === 'key' ? <KeyHolder /> : <Admin />}</main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
