// The dashboard in a real headless Chromium against `tokengate serve`: the key holder's view and its states, the admin flow by keyboard, axe, size.
// Code in page.evaluate() runs in the browser.
/// <reference lib="dom" />
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { ADMIN_TOKEN, startSidecar, type Sidecar } from '../helpers/sidecar.js';
import { json, startUpstream, type Upstream } from '../helpers/upstream.js';
import { launchChromium, screenshot, seriousViolations, tabTo } from '../helpers/browser.js';

let upstream: Upstream;
let sidecar: Sidecar;
let browser: Browser;
/** Every URL any page asked for, and every console error: checked for keys and for refusals by the CSP. */
const requested: string[] = [];
const consoleErrors: string[] = [];

beforeAll(async () => {
  upstream = await startUpstream(json({ usage: { prompt_tokens: 30, completion_tokens: 10, total_tokens: 40 } }));
  [sidecar, browser] = await Promise.all([startSidecar({ UPSTREAM_URL: upstream.url }), launchChromium()]);
});
afterAll(async () => {
  await browser?.close();
  await sidecar?.stop();
  await upstream?.close();
});

type Scheme = 'light' | 'dark';

async function openDashboard(scheme: Scheme = 'light'): Promise<Page> {
  const context = await browser.newContext({ colorScheme: scheme, locale: 'en-US', viewport: { width: 1100, height: 800 } });
  onTestFinished(() => context.close());
  const page = await context.newPage();
  page.on('request', (request) => requested.push(request.url()));
  page.on('console', (message) => {
    if (message.type() === 'error') consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => consoleErrors.push(error.message));
  await page.goto(`${sidecar.url}/dashboard`);
  return page;
}

async function showUsage(page: Page, key: string): Promise<void> {
  await page.getByLabel('Your API key').fill(key);
  await page.getByRole('button', { name: 'Show my usage' }).click();
}

/** A figure of a limit's card as a number ("1,000" → 1000). */
async function figure(page: Page, limit: string, name: 'used' | 'reserved' | 'remaining' | 'limit'): Promise<number> {
  const text = await page.locator(`section[data-limit="${limit}"]`).first().getByTestId(name).textContent();
  return Number((text ?? '').replace(/[^\d]/g, ''));
}

async function gated(key: string): Promise<void> {
  const response = await fetch(`${sidecar.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }),
  });
  expect(response.status).toBe(200);
  await response.arrayBuffer();
}

async function expectAccessible(page: Page): Promise<void> {
  expect(await seriousViolations(page)).toEqual([]);
}

describe('key holder', () => {
  it('shows the gauge and figures /stats gives, and updates them after a request without a reload', async () => {
    const { key } = await sidecar.createKey({ name: 'dana', token_limit_per_5h: 1000 });
    const page = await openDashboard();
    await showUsage(page, key);
    await page.getByRole('heading', { name: /^dana/ }).waitFor();
    const before = (await sidecar.stats(key)).limits[0]!;
    expect([await figure(page, '5h', 'used'), await figure(page, '5h', 'remaining'), await figure(page, '5h', 'limit')]).toEqual([before.used, before.remaining, 1000]);

    await page.evaluate(() => ((globalThis as { loadedOnce?: boolean }).loadedOnce = true));
    await gated(key);
    const after = (await sidecar.settled(key, 1)).limits[0]!;
    expect(after.used).toBe(40);
    await expect.poll(() => figure(page, '5h', 'remaining'), { timeout: 15_000 }).toBe(after.remaining);
    expect(await figure(page, '5h', 'used')).toBe(40);
    expect(await page.evaluate(() => (globalThis as { loadedOnce?: boolean }).loadedOnce)).toBe(true);
    const gauge = page.getByRole('meter', { name: '5h limit' });
    expect(await gauge.getAttribute('aria-valuenow')).toBe('40');
    expect(await gauge.getAttribute('aria-valuetext')).toBe('40 used, 0 reserved, 960 of 1,000 remaining');
    await expect.poll(() => page.getByTestId('countdown').textContent()).toMatch(/^Usage starts leaving the window in 4 h 5\d min/);
    expect(await page.getByRole('img', { name: /Usage over the last 5h in 5 min steps: 40 tokens/ }).count()).toBe(1);
    await screenshot(page, 'key-light');
    await expectAccessible(page);

    // The key lives in this tab's sessionStorage only, and went out only in headers.
    const stored = await page.evaluate(() => ({ session: sessionStorage.getItem('tokengate.key'), local: localStorage.length, cookies: document.cookie }));
    expect(stored).toEqual({ session: key, local: 0, cookies: '' });
    expect(requested.filter((url) => url.includes(key))).toEqual([]);

    const dark = await openDashboard('dark');
    await showUsage(dark, key);
    await dark.getByTestId('remaining').waitFor();
    expect(await figure(dark, '5h', 'remaining')).toBe(960);
    await screenshot(dark, 'key-dark');
    await expectAccessible(dark);
  });

  it('shows every limit of a plan key', async () => {
    const { key } = await sidecar.createKey({ name: 'plan', token_limit_per_5h: undefined, limits: [{ window: '5h', tokens: 500 }, { window: '7d', tokens: 5000 }] });
    await gated(key);
    await sidecar.settled(key, 1);
    const page = await openDashboard();
    await showUsage(page, key);
    await page.getByRole('meter', { name: '7d limit' }).waitFor();
    const stats = await sidecar.stats(key);
    for (const limit of stats.limits) expect(await figure(page, limit.name, 'remaining')).toBe(limit.remaining);
    expect(stats.limits.map((limit) => limit.remaining)).toEqual([460, 4960]);
  });

  for (const scheme of ['light', 'dark'] as const) {
    it(`gives an unknown, an expired and an exhausted key their own states (${scheme})`, async () => {
      const page = await openDashboard(scheme);
      await showUsage(page, `tg-${'x'.repeat(40)}`);
      await page.getByRole('heading', { name: 'This key is not known' }).waitFor();
      await screenshot(page, `unknown-${scheme}`);
      await expectAccessible(page);

      const expired = await sidecar.createKey({ name: `late-${scheme}` });
      expect((await sidecar.admin('PATCH', `/admin/keys/${expired.id}`, { expiry_date: '2020-01-01' })).status).toBe(200);
      await page.getByRole('button', { name: 'Use another key' }).click();
      await showUsage(page, expired.key);
      await expect.poll(() => page.getByTestId('state').textContent()).toMatch(/^This key has expired/);
      expect(await figure(page, '5h', 'remaining')).toBe(1_000_000);
      await screenshot(page, `expired-${scheme}`);
      await expectAccessible(page);

      const spent = await sidecar.createKey({ name: `spent-${scheme}`, token_limit_per_5h: 40 });
      await gated(spent.key);
      await sidecar.settled(spent.key, 1);
      await page.getByRole('button', { name: 'Use another key' }).click();
      await showUsage(page, spent.key);
      await expect.poll(() => page.getByTestId('state').textContent()).toMatch(/^The 5h limit is used up; tokens free up in 4 h 5\d min\.$/);
      expect(await figure(page, '5h', 'remaining')).toBe(0);
      await screenshot(page, `exhausted-${scheme}`);
      await expectAccessible(page);
    });
  }
});

interface AdminKey {
  id: string;
  name: string;
  token_limit_per_5h: number;
  expiry_date: string;
}

async function adminKeys(): Promise<AdminKey[]> {
  return ((await (await sidecar.admin('GET', '/admin/keys')).json()) as { keys: AdminKey[] }).keys;
}

describe('admin', () => {
  it('lists, searches, sorts, creates (plaintext once), updates, revokes and deletes a key with the keyboard only', async () => {
    await sidecar.createKey({ name: 'erin' });
    const page = await openDashboard();
    const keyboard = page.keyboard;

    await tabTo(page, page.getByRole('button', { name: 'Admin' }));
    await keyboard.press('Enter');
    await tabTo(page, page.getByLabel('Admin token'));
    await keyboard.type(ADMIN_TOKEN);
    await keyboard.press('Enter');
    await page.getByRole('row', { name: /erin/ }).waitFor();
    const listed = await adminKeys();
    expect(await page.locator('tbody tr[data-key-id]').count()).toBe(listed.length);

    await tabTo(page, page.getByLabel('Search keys'));
    await keyboard.type('erin');
    await expect.poll(() => page.locator('tbody tr[data-key-id]').count()).toBe(listed.filter((key) => key.name.includes('erin')).length);
    await keyboard.press('Control+A');
    await keyboard.press('Backspace');
    await tabTo(page, page.getByRole('button', { name: 'Name' }));
    await keyboard.press('Enter');
    expect(await page.getByRole('columnheader', { name: 'Name' }).getAttribute('aria-sort')).toBe('descending');
    const names = await page.locator('tbody tr[data-key-id] th').allTextContents();
    expect(names).toEqual([...names].sort((a, b) => b.localeCompare(a)));

    // Create: the plaintext is shown once, works, and is gone after Done.
    await tabTo(page, page.locator('#new-name'));
    await keyboard.type('carol');
    await keyboard.press('Tab');
    await keyboard.press('Control+A');
    await keyboard.type('5000');
    await tabTo(page, page.getByRole('button', { name: 'Create key' }));
    await keyboard.press('Enter');
    const shown = page.getByTestId('new-key');
    await shown.waitFor();
    const plaintext = await shown.inputValue();
    const carol = (await adminKeys()).find((key) => key.name === 'carol')!;
    expect(carol.token_limit_per_5h).toBe(5000);
    expect((await sidecar.stats(plaintext)).name).toBe('carol');
    await tabTo(page, page.getByRole('button', { name: 'Done' }));
    await keyboard.press('Enter');
    await expect.poll(() => shown.count()).toBe(0);
    const everything = await page.evaluate(() => document.documentElement.outerHTML + Array.from(document.querySelectorAll('input'), (input) => input.value).join(' '));
    expect(everything).not.toContain(plaintext);

    // Update its limit.
    await tabTo(page, page.getByRole('button', { name: 'Manage carol' }));
    await keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Key carol' }).waitFor();
    await tabTo(page, page.locator('#edit-tokens'));
    await keyboard.press('Control+A');
    await keyboard.type('7000');
    await keyboard.press('Enter');
    await expect.poll(async () => (await adminKeys()).find((key) => key.id === carol.id)?.token_limit_per_5h).toBe(7000);
    await expect.poll(() => page.getByRole('status').filter({ hasText: 'Saved carol.' }).count()).toBe(1);
    await page.getByRole('meter', { name: '5h limit' }).waitFor();
    await screenshot(page, 'admin-light');
    await expectAccessible(page);

    // Revoke: it expires now.
    await tabTo(page, page.getByRole('button', { name: 'Revoke' }));
    await keyboard.press('Enter');
    await expect.poll(async () => Date.parse((await adminKeys()).find((key) => key.id === carol.id)!.expiry_date)).toBeLessThanOrEqual(Date.now());
    expect((await sidecar.stats(plaintext)).is_expired).toBe(true);

    // Delete, after a confirmation.
    await tabTo(page, page.getByRole('button', { name: 'Delete', exact: true }));
    await keyboard.press('Enter');
    await tabTo(page, page.getByRole('button', { name: 'Yes, delete' }));
    await keyboard.press('Enter');
    await expect.poll(async () => (await sidecar.admin('GET', `/admin/keys/${carol.id}`)).status).toBe(404);
    await expect.poll(() => page.getByRole('row', { name: /carol/ }).count()).toBe(0);

    expect(requested.filter((url) => url.includes(ADMIN_TOKEN) || url.includes(plaintext))).toEqual([]);
  });

  it('refuses a wrong admin token and looks the same in the dark', async () => {
    const page = await openDashboard('dark');
    await page.getByRole('button', { name: 'Admin' }).click();
    await page.getByLabel('Admin token').fill('not-the-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.getByRole('alert').textContent()).toBe('The admin token was refused.');
    await page.getByLabel('Admin token').fill(ADMIN_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('button', { name: 'Manage erin' }).first().click();
    await page.getByRole('meter', { name: '5h limit' }).waitFor();
    await screenshot(page, 'admin-dark');
    await expectAccessible(page);
  });
});

describe('the page itself', () => {
  it('transfers under 100 kB gzipped, from this server only, under a strict Content-Security-Policy', async () => {
    const context = await browser.newContext();
    onTestFinished(() => context.close());
    const page = await context.newPage();
    const loaded: { url: string; status: number | undefined; bytes: number; encoding: string | undefined }[] = [];
    page.on('requestfinished', async (request) => {
      const response = await request.response();
      const sizes = await request.sizes();
      loaded.push({ url: request.url(), status: response?.status(), bytes: sizes.responseBodySize + sizes.responseHeadersSize, encoding: response?.headers()['content-encoding'] });
    });
    const response = await page.goto(`${sidecar.url}/dashboard`);
    await page.getByLabel('Your API key').waitFor();
    await page.waitForLoadState('networkidle');
    expect(response!.url()).toBe(`${sidecar.url}/dashboard/`);
    expect(response!.headers()['content-security-policy']).toBe("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
    // The redirect to /dashboard/, the page, its script and its stylesheet: nothing else, nothing from elsewhere.
    expect(loaded.map((file) => `${new URL(file.url).origin} ${file.status}`).sort()).toEqual([`${sidecar.url} 200`, `${sidecar.url} 200`, `${sidecar.url} 200`, `${sidecar.url} 308`]);
    expect(loaded.filter((file) => file.status === 200).map((file) => file.encoding)).toEqual(['gzip', 'gzip', 'gzip']);
    const total = loaded.reduce((sum, file) => sum + file.bytes, 0);
    expect(total).toBeGreaterThan(10_000);
    expect(total).toBeLessThan(100_000);
  });

  it('ran every page without a script error or a refusal by its Content-Security-Policy', () => {
    expect(consoleErrors.filter((text) => !/status of 401/.test(text))).toEqual([]);
  });
});
