// A month: its totals, in all and by user type, and its tokens per day across all users
// (`GET /admin/reports/month`), above its users by total tokens, most first, paged
// (`GET /admin/usage/monthly`).

import { COLOURS, chart } from '../charts.js';
import { monthLabel, monthOf } from '../dates.js';
import {
  empty, failure, field, figure, formatDecimal, formatNumber, h, loading, show, table, userLink, userTypeSelect,
} from '../dom.js';
import { pagedList } from '../pager.js';

export default {
  route: 'month',
  title: 'Month',
  render(context, params, container) {
    const chosen = /^\d{4}-\d{2}$/.test(params.get('month') ?? '') ? params.get('month') : context.today().slice(0, 7);
    const month = monthOf(chosen);
    const type = params.get('type') ?? '';

    const picker = h('input', { type: 'month', name: 'month', value: chosen, required: true });
    const types = userTypeSelect(type);
    const filters = h('form', {
      class: 'filters',
      'aria-label': 'Filters',
      onsubmit: (event) => {
        event.preventDefault();
        context.navigate('month', { month: picker.value, type: types.value });
      },
    }, field('Month', picker), field('User type', types), h('button', { type: 'submit' }, 'Apply'));

    const totals = h('div', { id: 'month-totals' }, loading());
    const listing = h('div');
    show(container, h('h1', { tabindex: '-1' }, `Month ${monthLabel(month)}`), filters, totals, listing);
    loadTotals(context, month, type, totals);

    pagedList(listing, {
      label: 'Month users',
      fetchPage: (pageToken) => context.api.get('/admin/usage/monthly', {
        year: month.year, month: month.month, userType: type, limit: 25, pageToken,
      }),
      emptyText: `No ${type ? `${type} ` : ''}user used tokens in ${monthLabel(month)}.`,
      render: (items, page) => table(`Top users of ${monthLabel(month)}${type ? ` (${type})` : ''}, page ${page}`, [
        { label: 'User', cell: (item) => userLink(item.userId) },
        { label: 'Type', cell: (item) => item.userType },
        { label: 'Total tokens', numeric: true, cell: (item) => formatNumber(item.totalMonthlyTokens) },
        { label: 'Average per day', numeric: true, cell: (item) => formatDecimal(item.averageDailyUsage) },
        { label: 'Peak day', numeric: true, cell: (item) => `${item.peakUsageDate} (${formatNumber(item.peakUsageTokens)})` },
      ], items),
    });
  },
};

async function loadTotals(context, month, type, container) {
  const label = monthLabel(month);
  let report;
  try {
    report = await context.api.get('/admin/reports/month', { year: month.year, month: month.month });
  } catch (error) {
    show(container, failure(error));
    return;
  }
  const figures = h('dl', { class: 'figures', dataset: { figures: label } },
    figure('Active users', report.activeUsers),
    figure('Tokens used', report.totalTokens),
    figure('Average per active user', report.averageTokensPerUser, formatDecimal));
  if (report.activeUsers === 0) {
    show(container, figures, empty(`No tokens were used in ${label}.`));
    return;
  }
  show(container,
    figures,
    table(`By user type, ${label}`, [
      { label: 'User type', cell: ([name]) => (name === type ? h('strong', {}, `${name} (filtered below)`) : name) },
      { label: 'Active users', numeric: true, cell: ([, totals]) => formatNumber(totals.activeUsers) },
      { label: 'Tokens used', numeric: true, cell: ([, totals]) => formatNumber(totals.totalTokens) },
      { label: 'Average per user', numeric: true, cell: ([, totals]) => formatDecimal(totals.averageTokensPerUser) },
    ], Object.entries(report.byUserType)),
    h('p', {}, type ? `The top users below are ${type} users only.` : 'The top users below are of every type.'),
    perDay(label, report.days));
}

/** The tokens of each day of the month, across all users. */
function perDay(label, days) {
  const labels = days.map((day) => day.date.slice(8));
  const values = days.map((day) => day.totalTokens);
  const busiest = values.indexOf(Math.max(...values));
  return chart({
    title: `Tokens per day of ${label}, all users`,
    labels,
    series: [{ label: 'Tokens', values, colour: COLOURS.primary }],
    summary: `${formatNumber(values.reduce((a, b) => a + b, 0))} tokens in all; the busiest day is ${labels[busiest]} with ${formatNumber(values[busiest])}.`,
  });
}
