// Debian's Chromium, driven by playwright-core, and what the tests ask of a page: its
// accessibility (axe-core), its charts' pixels, its screenshots, and the policy violations and
// script errors it reports.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { chromium } from 'playwright-core';

export const CHROMIUM = '/usr/bin/chromium';
export const LAPTOP = { width: 1366, height: 768 };
export const PHONE = { width: 390, height: 844 };

const AXE_SOURCE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/** A headless Chromium with a profile of its own; `problems` collects what the page reports. */
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'token-limits-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: LAPTOP,
    locale: 'en-US',
    timezoneId: 'UTC',
    args: [
      '--no-sandbox',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
    ],
  });
  const page = context.pages()[0] ?? await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`script error: ${error.message}`));
  page.on('console', (message) => {
    // The policy's refusals are logged by Chromium itself; an API's 401 or 403 is not one.
    if (message.text().includes('Content Security Policy')) problems.push(`policy: ${message.text()}`);
  });
  return {
    context,
    page,
    problems,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** axe-core's serious and critical violations on the page as it is now. */
export async function seriousViolations(page) {
  // Evaluated by the browser's debugger protocol, which the page's policy does not govern;
  // the policy itself is left as it is served.
  await page.evaluate(AXE_SOURCE);
  const results = await page.evaluate(() => globalThis.axe.run(document, {
    runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa', 'best-practice'] },
  }));
  return results.violations
    .filter((violation) => ['serious', 'critical'].includes(violation.impact))
    .map((violation) => `${violation.id} (${violation.impact}): ${violation.help}; ${violation.nodes
      .slice(0, 3).map((node) => node.target.join(' ')).join(' | ')}`);
}

/** How many pixels of each chart canvas have `rgb` (give or take antialiasing). */
export async function pixelsOf(page, rgb) {
  return page.$$eval('figure.chart canvas', (canvases, [r, g, b]) => canvases.map((canvas) => {
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    let count = 0;
    for (let i = 0; i < data.length; i += 4) {
      const close = Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 24;
      if (close && data[i + 3] > 200) count++;
    }
    return count;
  }), rgb);
}
