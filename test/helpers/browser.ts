// A real headless Chromium for the dashboard's tests (Debian's `chromium`, driven by playwright-core), axe-core, and screenshots.
// Code in page.evaluate() runs in the browser.
/// <reference lib="dom" />
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';

/** Where the screenshots go: test/output/dashboard/ (ignored by git, kept for people to look at). */
export const SCREENSHOTS = join(import.meta.dirname, '../output/dashboard');

const CANDIDATES = ['/usr/lib/chromium/chromium', '/usr/bin/chromium', '/usr/bin/chromium-browser'];

/** CHROMIUM_PATH, else Debian's chromium; missing, the test fails saying how to get it (it never skips). */
export function chromiumPath(): string {
  const given = process.env.CHROMIUM_PATH;
  if (given) {
    if (!existsSync(given)) throw new Error(`CHROMIUM_PATH=${given} does not exist`);
    return given;
  }
  const found = CANDIDATES.find((path) => existsSync(path));
  if (!found) throw new Error('the dashboard tests need Chromium: `apt-get install chromium` (Debian, what .ci/run does), or set CHROMIUM_PATH to a Chromium or Chrome binary');
  return found;
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: chromiumPath(), headless: true });
}

export function screenshot(page: Page, name: string): Promise<Buffer> {
  mkdirSync(SCREENSHOTS, { recursive: true });
  return page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

const axeSource = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

export interface AxeViolation {
  id: string;
  impact: string | null;
  help: string;
  nodes: { target: string[] }[];
}

/**
 * axe-core's WCAG 2.x A and AA rules over the page, its serious and critical violations. It runs
 * through the DevTools protocol: the page's Content-Security-Policy refuses an injected script.
 */
export async function seriousViolations(page: Page): Promise<AxeViolation[]> {
  await page.evaluate(`${axeSource}\n;undefined`);
  const violations = await page.evaluate(async () => {
    const axe = (globalThis as unknown as { axe: { run(context: unknown, options: unknown): Promise<{ violations: AxeViolation[] }> } }).axe;
    const result = await axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] } });
    return result.violations.map(({ id, impact, help, nodes }) => ({ id, impact, help, nodes: nodes.map((node) => ({ target: node.target as string[] })) }));
  });
  return violations.filter((violation) => violation.impact === 'serious' || violation.impact === 'critical');
}

/** Presses Tab until `target` has focus, as someone without a mouse does; fails when Tab never gets there. */
export async function tabTo(page: Page, target: Locator, limit = 80): Promise<void> {
  for (let presses = 0; presses < limit; presses++) {
    if (await target.evaluate((element) => element === document.activeElement, undefined, { timeout: 2000 }).catch(() => false)) return;
    await page.keyboard.press('Tab');
  }
  throw new Error(`${target.toString()} not reached with ${limit} presses of Tab`);
}
