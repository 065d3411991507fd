// One user's drill-down (`GET /admin/users/{id}/usage?months=12`): today, the last 12 months,
// and this month's days with the peak marked, kept current by the user's usage stream: each
// usage object changes the figures, the bars and the peak in place.

import { COLOURS, chart, destroyCharts, updateChart } from '../charts.js';
import { daysIn, monthLabel, monthOf, monthsUpTo } from '../dates.js';
import {
  empty, failure, figure, formatNumber, h, loading, meter, setFigure, setMeter, setText, show,
} from '../dom.js';
import { findUser } from './users.js';

const MONTHS = 12;
/** Where the API learned the user's plan (`planSource`). */
const PLAN_SOURCES = {
  directory: 'as Firebase Auth says',
  stored: 'as last stored (Firebase Auth did not answer)',
  default: 'by default (Firebase Auth did not answer, nothing stored)',
};

export default {
  route: 'user',
  title: 'User',
  /** Returns what ends the view: its usage stream stops. */
  render(context, params, container, userId) {
    const today = h('section', { class: 'panel', 'aria-labelledby': 'today-title' });
    const history = h('section', { class: 'panel', 'aria-labelledby': 'history-title' });
    const status = liveStatus();
    show(container,
      h('h1', { tabindex: '-1' }, `User ${userId}`),
      findUser(context),
      h('p', { class: 'actions' },
        h('a', { href: `#/overrides?userId=${encodeURIComponent(userId)}` }, 'Override this user’s limits'),
        h('a', { href: `#/audit?userId=${encodeURIComponent(userId)}` }, 'Changes made to this user')),
      status.element,
      h('div', { class: 'grid' }, today, history));
    show(today, loading());
    const view = { context, userId, today, history, status, watch: null, left: false };
    load(view);
    return () => {
      view.left = true;
      view.watch?.stop();
    };
  },
};

async function load(view) {
  let report;
  try {
    report = await view.context.api.get(`/admin/users/${encodeURIComponent(view.userId)}/usage`, { months: MONTHS });
  } catch (error) {
    show(view.today, failure(error));
    view.history.remove();
    view.status.element.hidden = true;
    return;
  }
  if (view.left) return;
  view.report = report;
  show(view.today, ...todayPanel(report.today, report.planSource));
  view.days = historyPanel(view.history, report.today.date, report.history);
  view.watch ??= view.context.watchUsage(view.userId, {
    onUsage: (usage) => changed(view, usage),
    onState: (state, detail) => view.status.set(state, detail),
  });
}

/** A usage object from the stream: today's figures, and this month's day, total and peak. */
function changed(view, usage) {
  const { report } = view;
  const before = report.today;
  if (usage.date !== before.date) {
    // The day rolled over: the month and the history may have too.
    load(view);
    return;
  }
  report.today = usage;
  updateToday(view.today, usage, report.planSource);
  if (usage.tokensUsed !== before.tokensUsed) {
    view.status.announce(`${view.userId} has used ${formatNumber(usage.tokensUsed)} tokens today.`);
  }
  const current = monthLabel(monthOf(usage.date));
  let thisMonth = report.history.find((item) => monthLabel(item) === current);
  if (!thisMonth) {
    if (usage.tokensUsed === 0) return;
    thisMonth = { ...monthOf(usage.date), dailyUsage: {}, totalMonthlyTokens: 0 };
    report.history.unshift(thisMonth);
  }
  const day = usage.date.slice(8, 10);
  thisMonth.totalMonthlyTokens += usage.tokensUsed - (thisMonth.dailyUsage[day] ?? 0);
  thisMonth.dailyUsage[day] = usage.tokensUsed;
  Object.assign(thisMonth, monthFigures(thisMonth.dailyUsage));
  if (view.days) updateHistory(view.history, usage.date, report.history);
  else view.days = historyPanel(view.history, usage.date, report.history);
}

/** A month's derived figures as the service derives them: the earliest day with the most
 *  tokens is the peak, and the average is over the days with an entry. */
function monthFigures(dailyUsage) {
  const days = Object.keys(dailyUsage).sort();
  let peak = days[0] ?? '';
  for (const day of days) if (dailyUsage[day] > dailyUsage[peak]) peak = day;
  const total = days.reduce((sum, day) => sum + dailyUsage[day], 0);
  return {
    peakUsageDate: peak,
    peakUsageTokens: dailyUsage[peak] ?? 0,
    averageDailyUsage: days.length > 0 ? total / days.length : 0,
  };
}

/** The live indicator: visible state of the stream, and a polite announcement of each change
 *  in today's tokens (never of a heartbeat or a reconnect). */
function liveStatus() {
  const text = h('span', {}, 'Connecting to live updates…');
  const dot = h('span', { class: 'live-dot', 'aria-hidden': 'true' });
  const announcer = h('span', { class: 'visually-hidden', 'aria-live': 'polite', dataset: { announce: '' } });
  const element = h('p', { class: 'live-status', dataset: { live: 'connecting' } }, dot, text, announcer);
  const words = {
    connecting: () => 'Connecting to live updates…',
    live: () => 'Live: these figures change as the user’s usage does.',
    reconnecting: (wait) => `Live updates paused; reconnecting in ${Math.ceil(wait / 1000)} s…`,
    expired: () => 'Live updates stopped: the sign-in has expired.',
    refused: (detail) => `Live updates refused: ${detail}`,
  };
  return {
    element,
    set(state, detail) {
      element.dataset.live = state;
      setText(text, words[state](detail));
    },
    announce(message) {
      setText(announcer, message);
    },
  };
}

/** Today's figures of a usage object. */
export function todayPanel(usage, planSource) {
  const source = planSource ? `, ${PLAN_SOURCES[planSource] ?? planSource}` : '';
  const monthly = usage.monthlyLimit === null
    ? `${formatNumber(usage.monthlyTokensUsed)} this month, no monthly cap`
    : `${formatNumber(usage.monthlyTokensUsed)} of ${formatNumber(usage.monthlyLimit)} this month`;
  return [
    h('h2', { id: 'today-title' }, `Today, ${usage.date}`),
    h('p', {}, meter(usage.tokensUsed, usage.tokenLimit)),
    h('dl', { class: 'figures', dataset: { figures: 'today' } },
      TODAY_FIGURES.map(([label, field]) => figure(label, usage[field]))),
    h('p', { dataset: { plan: '' } }, `${usage.userType}${source}; limits ${usage.enforcement === 'enforce' ? 'enforced' : `in ${usage.enforcement} mode`}; ${monthly}.`),
    h('p', { class: 'note', hidden: usage.warning !== 'approaching_limit' },
      'Approaching the limit: answers carry the soft-limit warning.'),
  ];
}

/** The figures of today's panel, in order, and the usage object's field each shows. */
const TODAY_FIGURES = [
  ['Tokens used', 'tokensUsed'],
  ['Daily limit', 'tokenLimit'],
  ['Remaining', 'remaining'],
  ['Held by reservations', 'reservedTokens'],
];

/** Today's panel, made by `todayPanel`, showing a new usage object in place. */
function updateToday(panel, usage, planSource) {
  const [heading, bar, figures, plan, warning] = todayPanel(usage, planSource);
  setText(panel.querySelector('#today-title'), heading.textContent);
  setMeter(panel.querySelector('.meter'), usage.tokensUsed, usage.tokenLimit);
  const values = panel.querySelectorAll('dl[data-figures="today"] dd');
  TODAY_FIGURES.forEach(([, field], index) => setFigure(values[index], usage[field]));
  setText(panel.querySelector('[data-plan]'), plan.textContent);
  panel.querySelector('.note').hidden = warning.hidden;
  bar.remove();
  figures.remove();
}

/** What the history panel shows: the months' chart, and this month's days and peak if any
 *  tokens were used in it. */
function historyFigures(date, history) {
  const current = monthOf(date);
  const months = monthsUpTo(current, MONTHS);
  const byMonth = new Map(history.map((item) => [monthLabel(item), item]));
  const totals = months.map((month) => byMonth.get(monthLabel(month))?.totalMonthlyTokens ?? 0);
  const figures = {
    current,
    months: {
      title: `Tokens per month, the last ${MONTHS} months`,
      labels: months.map(monthLabel),
      series: [{ label: 'Tokens', values: totals, colour: COLOURS.primary }],
      summary: `${formatNumber(totals.reduce((a, b) => a + b, 0))} tokens over the ${MONTHS} months; ${formatNumber(totals.at(-1))} in ${monthLabel(current)}.`,
    },
    days: null,
  };
  const thisMonth = byMonth.get(monthLabel(current));
  if (!thisMonth) return figures;
  const days = Array.from({ length: daysIn(current) }, (_, index) => String(index + 1).padStart(2, '0'));
  const peak = thisMonth.peakUsageDate;
  const used = (day) => thisMonth.dailyUsage[day] ?? null;
  figures.days = {
    title: `Tokens per day, ${monthLabel(current)}`,
    labels: days,
    series: [
      { label: 'Tokens', values: days.map((day) => (day === peak ? null : used(day))), colour: COLOURS.primary },
      { label: `Peak day (${peak})`, values: days.map((day) => (day === peak ? used(day) : null)), colour: COLOURS.accent },
    ],
    summary: `The peak is day ${peak} with ${formatNumber(thisMonth.peakUsageTokens)} tokens; ${formatNumber(thisMonth.totalMonthlyTokens)} in the month, ${formatNumber(Math.round(thisMonth.averageDailyUsage))} a day on average.`,
  };
  figures.peak = { day: peak, text: `Peak: day ${peak}, ${formatNumber(thisMonth.peakUsageTokens)} tokens.` };
  return figures;
}

/** Draws the last 12 months, and this month's days with the peak marked, into `section`;
 *  whether the days were drawn (none are before the month's first tokens). */
function historyPanel(section, date, history) {
  const figures = historyFigures(date, history);
  const nodes = [h('h2', { id: 'history-title' }, 'History'), chart(figures.months)];
  if (figures.days) {
    nodes.push(chart(figures.days), h('p', { dataset: { peak: figures.peak.day } }, figures.peak.text));
  } else {
    nodes.push(empty(`No tokens used in ${monthLabel(figures.current)} yet.`));
  }
  destroyCharts(section);
  show(section, ...nodes);
  return Boolean(figures.days);
}

/** The history panel drawn by `historyPanel`, showing new figures in place. */
function updateHistory(section, date, history) {
  const figures = historyFigures(date, history);
  const [months, days] = section.querySelectorAll('figure.chart');
  updateChart(months, figures.months);
  updateChart(days, figures.days);
  const peak = section.querySelector('[data-peak]');
  peak.dataset.peak = figures.peak.day;
  setText(peak, figures.peak.text);
}
