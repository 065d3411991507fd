// A month: its users by total tokens, most first, paged (`GET /admin/usage/monthly`), with the
// tokens per day of the users on the page.

import { COLOURS, chart } from '../charts.js';
import { daysIn, monthLabel, monthOf } from '../dates.js';
import { field, formatDecimal, formatNumber, h, show, table, userLink, userTypeSelect } from '../dom.js';
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

    const listing = h('div');
    show(container, h('h1', { tabindex: '-1' }, `Month ${monthLabel(month)}`), filters, listing);

    pagedList(listing, {
      label: 'Month users',
      fetchPage: (pageToken) => context.api.get('/admin/usage/monthly', {
        year: month.year, month: month.month, userType: type, limit: 25, pageToken,
      }),
      emptyText: `No ${type ? `${type} ` : ''}user used tokens in ${monthLabel(month)}.`,
      render: (items, page) => h('div', {},
        perDay(month, items, page),
        table(`Top users of ${monthLabel(month)}${type ? ` (${type})` : ''}, page ${page}`, [
          { label: 'User', cell: (item) => userLink(item.userId) },
          { label: 'Type', cell: (item) => item.userType },
          { label: 'Total tokens', numeric: true, cell: (item) => formatNumber(item.totalMonthlyTokens) },
          { label: 'Average per day', numeric: true, cell: (item) => formatDecimal(item.averageDailyUsage) },
          { label: 'Peak day', numeric: true, cell: (item) => `${item.peakUsageDate} (${formatNumber(item.peakUsageTokens)})` },
        ], items)),
    });
  },
};

/** The tokens per day of the users on this page, summed. */
function perDay(month, items, page) {
  const days = Array.from({ length: daysIn(month) }, (_, index) => String(index + 1).padStart(2, '0'));
  const totals = days.map((day) => items.reduce((sum, item) => sum + (item.dailyUsage[day] ?? 0), 0));
  const busiest = totals.indexOf(Math.max(...totals));
  return chart({
    title: `Tokens per day of ${monthLabel(month)}, users on page ${page}`,
    labels: days,
    series: [{ label: 'Tokens', values: totals, colour: COLOURS.primary }],
    summary: `${formatNumber(totals.reduce((a, b) => a + b, 0))} tokens in all; the busiest day is ${days[busiest]} with ${formatNumber(totals[busiest])}.`,
  });
}
