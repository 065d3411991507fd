// Today's summary, or any day's: active users, tokens, the mean per user, in all and per user
// type (`GET /admin/reports/summary`).

import { isDate } from '../dates.js';
import { empty, failure, field, figure, formatDecimal, formatNumber, h, loading, show, table } from '../dom.js';

export default {
  route: 'summary',
  title: 'Summary',
  render(context, params, container) {
    const date = isDate(params.get('date')) ? params.get('date') : context.today();
    const picker = h('input', { type: 'date', name: 'date', value: date, required: true });
    const form = h('form', {
      class: 'filters',
      onsubmit: (event) => {
        event.preventDefault();
        if (isDate(picker.value)) context.navigate('summary', { date: picker.value });
      },
    }, field('Day', picker), h('button', { type: 'submit' }, 'Show'));
    const results = h('div', { id: 'summary-results' }, loading());
    show(container,
      h('h1', { tabindex: '-1' }, date === context.today() ? 'Today' : `Summary of ${date}`),
      form,
      results);
    load(context, date, results);
  },
};

async function load(context, date, results) {
  let summary;
  try {
    summary = await context.api.get('/admin/reports/summary', { date });
  } catch (error) {
    show(results, failure(error));
    return;
  }
  const types = Object.entries(summary.byUserType);
  show(results,
    h('dl', { class: 'figures', dataset: { figures: summary.date } },
      figure('Active users', summary.activeUsers),
      figure('Tokens used', summary.totalTokens),
      figure('Average per active user', summary.averageTokensPerUser, formatDecimal)),
    summary.activeUsers === 0
      ? empty(`No tokens were used on ${summary.date}.`)
      : table(`By user type, ${summary.date}`, [
        { label: 'User type', cell: ([type]) => type },
        { label: 'Active users', numeric: true, cell: ([, totals]) => formatNumber(totals.activeUsers) },
        { label: 'Tokens used', numeric: true, cell: ([, totals]) => formatNumber(totals.totalTokens) },
        { label: 'Average per user', numeric: true, cell: ([, totals]) => formatDecimal(totals.averageTokensPerUser) },
      ], types),
    h('p', {}, h('a', { href: `#/users?date=${summary.date}` }, `The users of ${summary.date}, by tokens used`)));
}
