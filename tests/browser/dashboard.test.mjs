// The dashboard in Debian's Chromium against the real binary, its sign-in against the real
// Firebase Auth emulator, on data seeded through the binary's import and the API. Each step
// compares what the page shows with what the API answers for the same question.

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { startAuthEmulator } from './support/auth-emulator.mjs';
import { freePort } from './support/processes.mjs';
import { LAPTOP, PHONE, launch, pixelsOf, seriousViolations } from './support/browser.mjs';
import { USERS, WITH_HISTORY, seedToday, writeHistory } from './support/seed.mjs';
import { client, run, startService } from './support/service.mjs';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ARTIFACTS = join(ROOT, 'target/browser-artifacts');
// The audit trail's actions as the page names them.
const AUDIT_ACTIONS = {
  override_set: 'Override set',
  override_removed: 'Override removed',
  usage_reset: 'Day reset',
  usage_recorded: 'Usage recorded',
};
const SCREENSHOT = join(ROOT, 'docs/dashboard.png');
const PROJECT = 'demo-dashboard';
const API_KEY = 'demo-api-key';
const ADMIN = { uid: 'admin-1', email: 'admin@example.com', password: 'admin-password', claims: { admin: true } };
const MEMBER = { uid: 'member-1', email: 'member@example.com', password: 'member-password', claims: { userType: 'trial' } };
/** uPlot's bars, in the page's colours (js/charts.js). */
const PRIMARY = [0x1d, 0x4e, 0xd8];
const ACCENT = [0xb9, 0x1c, 0x1c];
const number = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });

const today = new Date().toISOString().slice(0, 10);
const work = mkdtempSync(join(tmpdir(), 'token-limits-browser-'));
let emulator;
let service;
let admin;
let browser;
let page;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  emulator = await startAuthEmulator(ROOT, join(work, 'emulator'), PROJECT);
  const settings = {
    FIREBASE_PROJECT_ID: PROJECT,
    FIREBASE_AUTH_EMULATOR_HOST: emulator.host,
    FIREBASE_WEB_API_KEY: API_KEY,
    FIREBASE_AUTH_DOMAIN: `${PROJECT}.firebaseapp.com`,
    // Streams end every few seconds, as Cloud Run's timeout ends them, so that the page's
    // resumption is exercised; heartbeats find a closed stream within a second.
    STREAM_MAX_SECS: '2',
    STREAM_HEARTBEAT_SECS: '1',
    // A webhook nobody listens at, retried for a second: the events of the users that seeding
    // takes near their limit fail at once.
    NOTIFY_WEBHOOK_URL: `http://127.0.0.1:${await freePort()}/hook`,
    NOTIFY_WEBHOOK_SECRET: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
    NOTIFY_RETRY_FOR: '1s',
  };
  const history = join(work, 'history.ndjson');
  writeHistory(history, today);
  run(ROOT, join(work, 'service'), ['import', '--input', history], settings);
  service = await startService(ROOT, join(work, 'service'), settings);
  await emulator.createUser(PROJECT, ADMIN);
  await emulator.createUser(PROJECT, MEMBER);
  admin = client(service.base, await emulator.idToken(API_KEY, ADMIN.email, ADMIN.password));
  await seedToday(admin);
  browser = await launch();
  page = browser.page;
});

after(async () => {
  await browser?.close();
  service?.stop();
  emulator?.stop();
  rmSync(work, { recursive: true, force: true });
  assert.deepEqual(browser?.problems ?? [], [], 'the page reported policy violations or script errors');
});

/** Screenshots at both widths, and axe-core at both, back at the laptop's width after. */
async function checkView(name) {
  for (const [size, viewport] of [['laptop', LAPTOP], ['phone', PHONE]]) {
    await page.setViewportSize(viewport);
    // Charts follow the width: wait for a frame after the resize before looking.
    await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
    // Nothing but a table's own region scrolls sideways.
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= viewport.width, `${name} is ${width} px wide at ${viewport.width}`);
    await page.screenshot({ path: join(ARTIFACTS, `${name}-${size}.png`), fullPage: true });
    assert.deepEqual(await seriousViolations(page), [], `${name} at ${viewport.width}x${viewport.height}`);
  }
  await page.setViewportSize(LAPTOP);
}

async function signIn({ email, password }) {
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  // The keyboard submits the form, as a person would.
  await page.getByLabel('Password').press('Enter');
}

async function signOut() {
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
}

/** The rows of the page's table, each as its cells' text. */
async function rows(caption) {
  const table = page.getByRole('table', { name: caption, exact: true, includeHidden: true });
  await table.waitFor({ state: 'attached' });
  // textContent: a table of a chart is in a closed <details>, where innerText is empty.
  return table.locator('tbody tr').evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((td) => td.textContent.trim())));
}

/** The usage event streams open on the service, from its metrics. */
async function openStreams() {
  const text = await (await fetch(`${service.base}/metrics`)).text();
  const line = text.split('\n').find((row) => row.startsWith('token_limits_streams_open '));
  return Number(line.split(' ')[1]);
}

/** Waits until `read()` gives `expected`, for up to ten seconds; the last value read. */
async function eventually(read, expected) {
  const deadline = Date.now() + 10_000;
  let value = await read();
  while (value !== expected && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    value = await read();
  }
  return value;
}

/** The figure labelled `label` among the figures `group`: its raw value and its text. */
async function figureOf(group, label) {
  const value = page.locator(`dl[data-figures="${group}"] div.figure`, { has: page.getByText(label, { exact: true }) })
    .locator('dd');
  await value.waitFor();
  return { value: Number(await value.getAttribute('data-value')), text: await value.innerText() };
}

describe('the dashboard', () => {
  it('is served with its policy and offers the sign-in form and, in a demo project, the dev-token box', async (t) => {
    const response = await page.goto(`${service.base}/dashboard`);
    assert.equal(response.status(), 200);
    const policy = response.headers()['content-security-policy'];
    assert.equal(policy, "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
      + `connect-src 'self' http://${emulator.host}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`);
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    assert.ok(await page.getByLabel('Email').isVisible());
    assert.ok(await page.getByLabel('Token').isVisible());
    // The page's weight, as the browser fetched it (the Firebase SDK included).
    const fetched = await page.evaluate(() => performance.getEntriesByType('navigation')
      .concat(performance.getEntriesByType('resource')).map((entry) => [entry.transferSize, entry.decodedBodySize]));
    const sum = (index) => fetched.reduce((total, entry) => total + entry[index], 0);
    t.diagnostic(`first load: ${fetched.length} requests, ${sum(0)} bytes transferred, ${sum(1)} bytes of content`);
    // The first Tab reaches the skip link, which is then on screen.
    await page.keyboard.press('Tab');
    const skip = page.getByRole('link', { name: 'Skip to the content' });
    assert.ok(await skip.evaluate((link) => link === document.activeElement && link.getBoundingClientRect().top >= 0));
    await checkView('sign-in');
  });

  it('refuses a signed-in user who is not an admin, in the API’s words', async () => {
    await signIn(MEMBER);
    await page.getByRole('heading', { name: 'Not an admin' }).waitFor();
    const text = await page.locator('.refusal').innerText();
    assert.match(text, /this report is for admins only \(403 forbidden\)/);
    assert.ok(await page.getByRole('navigation', { name: 'Views' }).isHidden());
    await checkView('refusal');
    await signOut();
  });

  it('signs an admin in through the form and shows the figures the API gives for today', async () => {
    await signIn(ADMIN);
    await page.getByRole('heading', { name: 'Today' }).waitFor();
    const summary = await admin.get(`/admin/reports/summary?date=${today}`);
    assert.equal(summary.activeUsers, USERS.length);
    for (const [label, expected] of [['Active users', summary.activeUsers], ['Tokens used', summary.totalTokens]]) {
      const shown = await figureOf(today, label);
      assert.equal(shown.value, expected, label);
      assert.equal(shown.text, number.format(expected), label);
    }
    const average = await figureOf(today, 'Average per active user');
    assert.equal(average.value, summary.averageTokensPerUser);
    const byType = await rows(`By user type, ${today}`);
    assert.deepEqual(byType.map(([type, users, tokens]) => [type, users, tokens]),
      Object.entries(summary.byUserType).map(([type, totals]) => [type, number.format(totals.activeUsers), number.format(totals.totalTokens)]));
    await checkView('summary');
  });

  it('shows any other day’s summary, and says when it is empty', async () => {
    const day = new Date(Date.now() - 3 * 86_400_000).toISOString().slice(0, 10);
    await page.getByLabel('Day').fill(day);
    await page.getByRole('button', { name: 'Show' }).click();
    await page.getByRole('heading', { name: `Summary of ${day}` }).waitFor();
    const summary = await admin.get(`/admin/reports/summary?date=${day}`);
    assert.equal(summary.activeUsers, WITH_HISTORY.length);
    assert.equal((await figureOf(day, 'Tokens used')).value, summary.totalTokens);

    await page.goto(`${service.base}/dashboard#/summary?date=2001-01-01`);
    await page.getByText('No tokens were used on 2001-01-01.').waitFor();
    assert.equal((await figureOf('2001-01-01', 'Active users')).value, 0);
  });

  it('pages through the day’s users with the API’s cursors, and filters them by type', async () => {
    await page.getByRole('link', { name: 'Users', exact: true }).click();
    const caption = `Users of ${today}, most tokens first`;
    const first = await admin.get(`/admin/usage/daily?date=${today}&limit=25`);
    const second = await admin.get(`/admin/usage/daily?date=${today}&limit=25&pageToken=${first.nextPageToken}`);
    const expected = (items) => items.map((day) => [day.userId, day.userType, number.format(day.tokensUsed), number.format(day.tokenLimit)]);
    const shown = async (page_) => (await rows(`${caption}, page ${page_}`)).map((cells) => cells.slice(0, 4));
    assert.deepEqual(await shown(1), expected(first.items));
    assert.equal(first.items.length, 25);

    await page.getByRole('button', { name: 'Next page' }).click();
    assert.deepEqual(await shown(2), expected(second.items));
    assert.equal(second.nextPageToken, null);
    assert.ok(await page.getByRole('button', { name: 'Next page' }).isDisabled());
    await page.getByRole('button', { name: 'Previous page' }).click();
    assert.deepEqual(await shown(1), expected(first.items));

    // Each row's bar says its use of the limit, and is filled as far: the user at the limit
    // fully, another in part.
    const bar = (userId) => page.getByRole('row')
      .filter({ has: page.getByRole('link', { name: userId, exact: true }) }).getByRole('img');
    assert.equal(await bar('user-01').getAttribute('aria-label'), '10,000 tokens, 100% of 10,000');
    for (const day of first.items.filter((item) => ['user-01', 'user-02'].includes(item.userId))) {
      const filled = await bar(day.userId).evaluate((track) => track.firstElementChild.getBoundingClientRect().width / track.clientWidth);
      assert.ok(Math.abs(filled - day.tokensUsed / day.tokenLimit) < 0.02, `${day.userId}'s bar is ${filled} filled`);
    }

    await page.getByLabel('User type', { exact: true }).selectOption('subscribed');
    await page.getByRole('button', { name: 'Apply' }).click();
    const subscribed = await admin.get(`/admin/usage/daily?date=${today}&userType=subscribed&limit=25`);
    assert.deepEqual((await rows(`Users of ${today} (subscribed), most tokens first, page 1`)).map((cells) => cells.slice(0, 4)),
      expected(subscribed.items));
    await checkView('users');
  });

  it('opens a user’s drill-down: today, twelve months and this month’s days with the peak, drawn', async () => {
    const userId = WITH_HISTORY[1].userId;
    await page.getByRole('link', { name: 'Users', exact: true }).click();
    await page.getByLabel('User id').fill(userId);
    await page.getByRole('button', { name: 'Open user' }).click();
    await page.getByRole('heading', { name: `User ${userId}` }).waitFor();
    const report = await admin.get(`/admin/users/${userId}/usage?months=12`);
    assert.equal((await figureOf('today', 'Tokens used')).value, report.today.tokensUsed);
    assert.equal((await figureOf('today', 'Daily limit')).value, report.today.tokenLimit);
    assert.equal(report.history.length, 12);
    const thisMonth = report.history[0];
    await page.locator(`[data-peak="${thisMonth.peakUsageDate}"]`).waitFor();
    await page.waitForFunction(() => document.querySelectorAll('figure.chart canvas').length === 2);
    const [months, days] = await pixelsOf(page, PRIMARY);
    assert.ok(months > 500, `the months' bars are drawn (${months} pixels)`);
    assert.ok(days > 200, `the days' bars are drawn (${days} pixels)`);
    const [, peak] = await pixelsOf(page, ACCENT);
    assert.ok(peak > 20, `the peak day is marked (${peak} pixels)`);
    // The months' chart read as a table gives the API's totals.
    const table = await rows('Tokens per month, the last 12 months: Tokens');
    assert.deepEqual(table.map(([, tokens]) => tokens).reverse(),
      report.history.map((month) => number.format(month.totalMonthlyTokens)));
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    await checkView('user');
  });

  it('moves the drill-down live as the user’s usage is recorded, and closes its stream when left', async () => {
    const { userId, userType } = WITH_HISTORY[1];
    const day = today.slice(8, 10);
    const daysTable = `Tokens per day, ${today.slice(0, 7)}: Tokens`;
    await page.locator('.live-status[data-live="live"]').waitFor();
    // Between a stream's end and its resumption none is open for a moment.
    assert.equal(await eventually(openStreams, 1), 1);
    // The stream ends every two seconds: the page resumes it from the last event's id.
    const resumed = await page.waitForRequest((request) => request.url().includes(`/usage/stream?userId=${userId}`)
      && request.headers()['last-event-id'] !== undefined);
    assert.match(resumed.headers().authorization, /^Bearer ./);

    const before = (await figureOf('today', 'Tokens used')).value;
    const [, daysBefore] = await pixelsOf(page, PRIMARY);
    // The reader is on the days' table: an update keeps it there.
    const tableToggle = page.locator('figure.chart').nth(1).locator('summary');
    await tableToggle.focus();
    await page.evaluate(() => { window.sameDocument = true; });

    await admin.post('/usage', { tokens: 1500, userId, userType });
    const after = before + 1500;
    await page.locator(`dl[data-figures="today"] dd[data-value="${after}"]`).waitFor();
    assert.equal((await figureOf('today', 'Tokens used')).text, number.format(after));
    assert.equal(await page.locator('[data-announce]').textContent(), `${userId} has used ${number.format(after)} tokens today.`);
    const report = await admin.get(`/admin/users/${userId}/usage?months=1`);
    assert.equal(report.history[0].dailyUsage[day], after);
    // Today is the month's peak: its bar grew, and the chart's scale with it.
    assert.equal(report.history[0].peakUsageDate, day);
    assert.equal(await page.locator('[data-peak]').getAttribute('data-peak'), day);
    assert.equal(await page.locator('[data-peak]').innerText(), `Peak: day ${day}, ${number.format(after)} tokens.`);
    const todayRow = (await rows(daysTable)).find(([label]) => label === day);
    assert.deepEqual(todayRow.slice(1), ['–', number.format(after)]);
    await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
    // The peak stays the chart's tallest bar, so the other days' bars shrink.
    const [, daysAfter] = await pixelsOf(page, PRIMARY);
    assert.ok(daysAfter < daysBefore, `the days were drawn to the new scale (${daysBefore} -> ${daysAfter} pixels)`);
    assert.ok(await page.evaluate(() => window.sameDocument), 'the page was not reloaded');
    assert.ok(await tableToggle.evaluate((element) => element === document.activeElement), 'focus stayed');
    await checkView('user-live');

    const streamsAfterLeaving = [];
    const watchStreams = (request) => {
      if (request.url().includes('/usage/stream')) streamsAfterLeaving.push(request.url());
    };
    await page.getByRole('link', { name: 'Users', exact: true }).click();
    await page.getByRole('heading', { name: `Users by tokens used, ${today}` }).waitFor();
    page.on('request', watchStreams);
    assert.equal(await eventually(openStreams, 0), 0, 'the stream closed when the view was left');
    // Longer than a stream lasts and its resumption waits: a watch left running would be back.
    await new Promise((resolve) => setTimeout(resolve, 4000));
    page.off('request', watchStreams);
    assert.deepEqual(streamsAfterLeaving, [], 'the page opened no stream after the view was left');
    assert.equal(await openStreams(), 0);
  });

  it('shows the month’s totals by user type, its days and its top users as the API does', async () => {
    await page.getByRole('link', { name: 'Month', exact: true }).click();
    const label = today.slice(0, 7);
    const [year, month] = label.split('-').map(Number);
    const report = await admin.get(`/admin/reports/month?year=${year}&month=${month}`);
    assert.ok(report.activeUsers > 0, 'the seeded month has usage');
    for (const [name, expected] of [['Active users', report.activeUsers], ['Tokens used', report.totalTokens]]) {
      const shown = await figureOf(label, name);
      assert.equal(shown.value, expected, name);
      assert.equal(shown.text, number.format(expected), name);
    }
    assert.equal((await figureOf(label, 'Average per active user')).value, report.averageTokensPerUser);
    assert.deepEqual((await rows(`By user type, ${label}`)).map(([type, users, tokens]) => [type, users, tokens]),
      Object.entries(report.byUserType).map(([type, totals]) => [type, number.format(totals.activeUsers), number.format(totals.totalTokens)]));
    // The days' chart read as a table gives the API's tokens per day, across all users.
    assert.deepEqual(await rows(`Tokens per day of ${label}, all users: Tokens`),
      report.days.map((day) => [day.date.slice(8), number.format(day.totalTokens)]));
    const answer = await admin.get(`/admin/usage/monthly?year=${year}&month=${month}&limit=25`);
    const shown = await rows(`Top users of ${label}, page 1`);
    assert.deepEqual(shown.map(([user, , total]) => [user, total]),
      answer.items.map((item) => [item.userId, number.format(item.totalMonthlyTokens)]));
    const [perDay] = await pixelsOf(page, PRIMARY);
    assert.ok(perDay > 200, `the days' bars are drawn (${perDay} pixels)`);
    await checkView('month');

    // Filtered by a type: the type's row says so, and the totals stay the whole month's.
    await page.getByLabel('User type', { exact: true }).selectOption('subscribed');
    await page.getByRole('button', { name: 'Apply' }).click();
    await page.getByRole('table', { name: `Top users of ${label} (subscribed), page 1`, exact: true }).waitFor();
    const byType = await rows(`By user type, ${label}`);
    assert.deepEqual(byType.map(([type]) => type), ['trial', 'subscribed (filtered below)']);
    assert.equal((await figureOf(label, 'Tokens used')).value, report.totalTokens);
  });

  it('sets and removes overrides with a reason, and shows each change in the audit trail', async () => {
    await page.getByRole('link', { name: 'Overrides' }).click();
    const listed = await rows('Active overrides, page 1');
    const active = await admin.get('/admin/limits');
    assert.deepEqual(listed.map(([user, daily]) => [user, daily]),
      active.items.map((item) => [item.userId, number.format(item.dailyLimit)]));

    await page.getByLabel('User id').fill('user-07');
    await page.getByLabel('Daily limit (tokens)').fill('20000');
    await page.getByLabel('Reason', { exact: true }).fill('pilot customer');
    await page.getByRole('button', { name: 'Set override' }).click();
    await page.getByText('Override set for user-07.').waitFor();
    const set = await admin.get('/admin/users/user-07/limit');
    assert.equal(set.dailyLimit, 20_000);
    assert.equal(set.reason, 'pilot customer');
    assert.equal(set.setBy, ADMIN.uid);

    await page.getByRole('button', { name: 'Remove user-04’s override' }).click();
    await page.getByLabel('Why remove user-04’s override?').fill('resolved');
    await page.getByRole('button', { name: 'Remove', exact: true }).click();
    await page.getByText('Override of user-04 removed.').waitFor();
    assert.equal((await admin.call('GET', '/admin/users/user-04/limit')).status, 404);
    await checkView('overrides');

    await page.getByRole('link', { name: 'Audit trail' }).click();
    const trail = await admin.get('/admin/audit?limit=25');
    const shown = await rows('Changes, newest first, page 1');
    assert.deepEqual(shown.map(([, actor, action, user, , reason]) => [actor, action, user, reason]),
      trail.items.map((entry) => [entry.actor, AUDIT_ACTIONS[entry.action], entry.userId ?? '–', entry.reason ?? '–']));
    assert.deepEqual(shown[0].slice(1, 4), [ADMIN.uid, 'Override removed', 'user-04']);
    await checkView('audit');
  });

  it('charts a proposed limit against the past days', async () => {
    const from = new Date(Date.now() - 29 * 86_400_000).toISOString().slice(0, 10);
    await page.getByRole('link', { name: 'What-if' }).click();
    await page.getByLabel('Daily limit to try').fill('3000');
    await page.getByRole('button', { name: 'Try it' }).click();
    const report = await admin.get(`/admin/reports/what-if?userType=trial&dailyLimit=3000&from=${from}&to=${today}`);
    assert.ok(report.totals.usersOverLimit > 0);
    assert.equal((await figureOf('totals', 'User-days over the limit')).value, report.totals.usersOverLimit);
    assert.equal((await figureOf('totals', 'Tokens above the limit')).value, report.totals.tokensOverLimit);
    const [overLimit] = await pixelsOf(page, ACCENT);
    assert.ok(overLimit > 200, `the users over the limit are drawn (${overLimit} pixels)`);
    await checkView('what-if');

    // A range the API refuses is shown in the API's own words.
    const tooLong = `userType=trial&dailyLimit=3000&from=2001-01-01&to=${today}`;
    const refused = await admin.call('GET', `/admin/reports/what-if?${tooLong}`);
    assert.equal(refused.status, 400);
    await page.goto(`${service.base}/dashboard#/what-if?type=trial&limit=3000&from=2001-01-01&to=${today}`);
    const alert = page.getByRole('alert').filter({ hasText: 'Could not load this' });
    assert.equal(await alert.innerText(),
      `Could not load this: ${refused.body.error.message} (400 ${refused.body.error.code})`);
  });

  it('charts this instance’s tokens by hour and its error rate, saying whose counts they are', async () => {
    await page.getByRole('link', { name: 'Activity' }).click();
    await page.getByRole('heading', { name: 'Activity' }).waitFor();
    await page.locator('[data-scope="instance"]').waitFor();
    const activity = await admin.get('/admin/reports/activity');
    assert.match(await page.locator('[data-scope]').innerText(), /One instance’s counts/);
    const hours = await rows(`Tokens by hour of day (${activity.timeZone}): Tokens`);
    assert.equal(hours.length, 24);
    const shownTotal = hours.reduce((sum, [, tokens]) => sum + Number(tokens.replace(/,/g, '')), 0);
    // Counted since the instance started: the seeded usage, and what the tests recorded since.
    assert.ok(shownTotal > 0);
    assert.ok(shownTotal <= activity.tokensByHour.reduce((sum, entry) => sum + entry.tokens, 0));
    const requests = await figureOf('requests', 'Requests answered');
    assert.ok(requests.value > 0 && requests.value <= activity.requests.total);
    const [byHour] = await pixelsOf(page, PRIMARY);
    assert.ok(byHour > 50, `the hours' bars are drawn (${byHour} pixels)`);
    await checkView('activity');
  });

  it('lists the failed notifications and sends one again, audited', async () => {
    let failed = await admin.get('/admin/notifications?status=failed');
    const deadline = Date.now() + 15_000;
    while (failed.items.length === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      failed = await admin.get('/admin/notifications?status=failed');
    }
    assert.ok(failed.items.length > 0, 'the seeded user at the limit raised events, and they failed');
    await page.getByRole('link', { name: 'Notifications' }).click();
    const shown = await rows('failed events, page 1');
    assert.deepEqual(shown.map(([eventId, type, user]) => [eventId, type, user]),
      failed.items.map((item) => [item.eventId, item.type, item.userId]));
    await checkView('notifications');

    const { eventId } = failed.items[0];
    await page.getByRole('button', { name: `Send again: ${eventId}` }).click();
    await page.getByLabel(`Why send ${eventId} again? (optional)`).fill('receiver fixed');
    await page.getByRole('button', { name: 'Send', exact: true }).click();
    await page.getByText(`${eventId} is queued to be sent again.`).waitFor();
    const [entry] = (await admin.get('/admin/audit?limit=1')).items;
    assert.deepEqual([entry.action, entry.actor, entry.reason, entry.before.eventId],
      ['notification_redelivered', ADMIN.uid, 'receiver fixed', eventId]);
  });

  it('refreshes a refused ID token once and retries, then asks to sign in again', async () => {
    let refusals = 1;
    await page.route('**/admin/reports/summary**', (route) => (refusals-- > 0
      ? route.fulfill({ status: 401, contentType: 'application/json', body: JSON.stringify({ error: { code: 'unauthenticated', message: 'a valid Firebase ID token is required' } }) })
      : route.continue()));
    const refreshed = page.waitForRequest((request) => request.url().includes('/securetoken.googleapis.com/'));
    await page.getByRole('link', { name: 'Summary' }).click();
    await refreshed;
    await page.getByRole('heading', { name: 'Today' }).waitFor();
    assert.equal((await figureOf(today, 'Active users')).value, USERS.length);

    refusals = Infinity;
    await page.goto(`${service.base}/dashboard#/summary?date=${today}`);
    await page.getByText('Your sign-in has expired. Sign in again.').waitFor();
    await page.unroute('**/admin/reports/summary**');
    await checkView('expired');
  });

  it('takes a pasted dev token in a demo project, and sends an expired one back to the box', async () => {
    const token = run(ROOT, join(work, 'service'), ['dev-token', '--uid', 'dev-admin', '--admin'], { FIREBASE_PROJECT_ID: PROJECT }).trim();
    await page.getByLabel('Token').fill(token);
    await page.getByRole('button', { name: 'Use this token' }).click();
    await page.getByRole('heading', { name: 'Today' }).waitFor();
    assert.match(await page.locator('#account-name').innerText(), /dev-admin \(dev token\)/);
    await signOut();

    const expired = unsignedToken({ sub: 'dev-admin', admin: true, exp: Math.floor(Date.now() / 1000) - 3600 });
    await page.getByLabel('Token').fill(expired);
    await page.getByRole('button', { name: 'Use this token' }).click();
    await page.getByText('Your sign-in has expired. Sign in again.').waitFor();
  });
});

describe('outside a demo project', () => {
  let other;

  before(async () => {
    other = await startService(ROOT, join(work, 'production-like'), {
      FIREBASE_PROJECT_ID: 'dashboard-browser',
      FIREBASE_AUTH_EMULATOR_HOST: emulator.host,
      FIREBASE_WEB_API_KEY: API_KEY,
    });
  });

  after(() => other?.stop());

  it('offers the sign-in form without the dev-token box', async () => {
    await page.goto(`${other.base}/dashboard`);
    await page.getByRole('heading', { name: 'Sign in' }).waitFor();
    assert.ok(await page.getByLabel('Email').isVisible());
    assert.ok(await page.getByLabel('Token').isHidden());
  });
});

/** An unsigned token of the project, as the Auth emulator makes them, with these claims. */
function unsignedToken(claims) {
  const now = Math.floor(Date.now() / 1000);
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const payload = {
    iss: `https://securetoken.google.com/${PROJECT}`, aud: PROJECT, user_id: claims.sub,
    iat: now - 7200, auth_time: now - 7200, firebase: { sign_in_provider: 'custom', identities: {} }, ...claims,
  };
  return `${encode({ alg: 'none', typ: 'JWT' })}.${encode(payload)}.`;
}
