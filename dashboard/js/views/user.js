// One user's drill-down (`GET /admin/users/{id}/usage?months=12`): today, the last 12 months,
// and this month's days with the peak marked. Today is drawn from a usage object alone, the
// shape every usage answer has, so that a live source of them can redraw it.

import { COLOURS, chart } from '../charts.js';
import { daysIn, monthLabel, monthOf, monthsUpTo } from '../dates.js';
import { empty, failure, figure, formatNumber, h, loading, meter, show } from '../dom.js';
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
  render(context, params, container, userId) {
    const today = h('section', { class: 'panel', 'aria-labelledby': 'today-title' });
    const history = h('section', { class: 'panel', 'aria-labelledby': 'history-title' });
    show(container,
      h('h1', { tabindex: '-1' }, `User ${userId}`),
      findUser(context),
      h('p', { class: 'actions' },
        h('a', { href: `#/overrides?userId=${encodeURIComponent(userId)}` }, 'Override this user’s limits'),
        h('a', { href: `#/audit?userId=${encodeURIComponent(userId)}` }, 'Changes made to this user')),
      h('div', { class: 'grid' }, today, history));
    show(today, loading());
    load(context, userId, today, history);
  },
};

async function load(context, userId, today, history) {
  let report;
  try {
    report = await context.api.get(`/admin/users/${encodeURIComponent(userId)}/usage`, { months: MONTHS });
  } catch (error) {
    show(today, failure(error));
    history.remove();
    return;
  }
  show(today, ...todayPanel(report.today, report.planSource));
  show(history, ...historyPanel(report.today.date, report.history));
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
      figure('Tokens used', usage.tokensUsed),
      figure('Daily limit', usage.tokenLimit),
      figure('Remaining', usage.remaining),
      figure('Held by reservations', usage.reservedTokens)),
    h('p', {}, `${usage.userType}${source}; limits ${usage.enforcement === 'enforce' ? 'enforced' : `in ${usage.enforcement} mode`}; ${monthly}.`),
    usage.warning === 'approaching_limit'
      ? h('p', { class: 'note' }, 'Approaching the limit: answers carry the soft-limit warning.')
      : null,
  ].filter(Boolean);
}

/** The last 12 months, and this month's days with the peak marked. */
function historyPanel(date, history) {
  const current = monthOf(date);
  const months = monthsUpTo(current, MONTHS);
  const byMonth = new Map(history.map((item) => [monthLabel(item), item]));
  const totals = months.map((month) => byMonth.get(monthLabel(month))?.totalMonthlyTokens ?? 0);
  const nodes = [
    h('h2', { id: 'history-title' }, 'History'),
    chart({
      title: `Tokens per month, the last ${MONTHS} months`,
      labels: months.map(monthLabel),
      series: [{ label: 'Tokens', values: totals, colour: COLOURS.primary }],
      summary: `${formatNumber(totals.reduce((a, b) => a + b, 0))} tokens over the ${MONTHS} months; ${formatNumber(totals.at(-1))} in ${monthLabel(current)}.`,
    }),
  ];
  const thisMonth = byMonth.get(monthLabel(current));
  if (!thisMonth) {
    nodes.push(empty(`No tokens used in ${monthLabel(current)} yet.`));
    return nodes;
  }
  const days = Array.from({ length: daysIn(current) }, (_, index) => String(index + 1).padStart(2, '0'));
  const peak = thisMonth.peakUsageDate;
  const used = (day) => thisMonth.dailyUsage[day] ?? null;
  nodes.push(chart({
    title: `Tokens per day, ${monthLabel(current)}`,
    labels: days,
    series: [
      { label: 'Tokens', values: days.map((day) => (day === peak ? null : used(day))), colour: COLOURS.primary },
      { label: `Peak day (${peak})`, values: days.map((day) => (day === peak ? used(day) : null)), colour: COLOURS.accent },
    ],
    summary: `The peak is day ${peak} with ${formatNumber(thisMonth.peakUsageTokens)} tokens; ${formatNumber(thisMonth.totalMonthlyTokens)} in the month, ${formatNumber(Math.round(thisMonth.averageDailyUsage))} a day on average.`,
  }));
  nodes.push(h('p', { dataset: { peak } },
    `Peak: day ${peak}, ${formatNumber(thisMonth.peakUsageTokens)} tokens.`));
  return nodes;
}
