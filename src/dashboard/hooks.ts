// Live data: a poll that waits while the tab is hidden, and a clock for countdowns.
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';

export interface Polled<T> {
  data: T | undefined;
  error: Error | undefined;
  refresh(): void;
}

/**
 * `load` now and every `everyMs` after the last answer (one request at a time per page); a hidden
 * tab asks nothing until it is shown again. A new `key` starts over.
 */
export function usePoll<T>(load: () => Promise<T>, everyMs: number, key: string): Polled<T> {
  const [state, setState] = useState<{ data?: T; error?: Error }>({});
  const [round, setRound] = useState(0);
  const loader = useRef(load);
  loader.current = load;
  useEffect(() => {
    let live = true;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const tick = async (): Promise<void> => {
      if (document.hidden) {
        document.addEventListener('visibilitychange', tick, { once: true });
        return;
      }
      try {
        const data = await loader.current();
        if (live) setState({ data });
      } catch (error) {
        if (live) setState((last) => ({ data: last.data, error: error as Error }));
      }
      if (live) timer = setTimeout(tick, everyMs);
    };
    void tick();
    return () => {
      live = false;
      clearTimeout(timer);
      document.removeEventListener('visibilitychange', tick);
    };
  }, [key, round, everyMs]);
  const refresh = useCallback(() => setRound((value) => value + 1), []);
  return { data: state.data, error: state.error, refresh };
}

/** The time, updated every second. */
export function useNow(): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, []);
  return now;
}

/** A value kept in this tab's sessionStorage only: gone when the tab closes, never sent anywhere by itself. */
export function useTabSecret(name: string): [string | undefined, (value: string | undefined) => void] {
  const [value, setValue] = useState<string | undefined>(() => sessionStorage.getItem(name) ?? undefined);
  const set = useCallback((next: string | undefined) => {
    if (next === undefined) sessionStorage.removeItem(name);
    else sessionStorage.setItem(name, next);
    setValue(next);
  }, [name]);
  return [value, set];
}
