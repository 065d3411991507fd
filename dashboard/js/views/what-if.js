// A daily limit tried against past usage (`GET /admin/reports/what-if`): per day, the users of
// a type it would have refused and the tokens they used above it.

import { COLOURS, chart } from '../charts.js';
import { addDays, isDate } from '../dates.js';
import { failure, field, figure, formatNumber, h, loading, show, userTypeSelect } from '../dom.js';

export default {
  route: 'what-if',
  title: 'What-if',
  render(context, params, container) {
    const to = isDate(params.get('to')) ? params.get('to') : context.today();
    const from = isDate(params.get('from')) ? params.get('from') : addDays(to, -29);
    const type = params.get('type') || 'trial';
    const limit = /^\d+$/.test(params.get('limit') ?? '') ? params.get('limit') : '';

    const inputs = {
      type: userTypeSelect(type, { any: null }),
      limit: h('input', { type: 'number', name: 'dailyLimit', min: '0', step: '1', value: limit, required: true, inputMode: 'numeric' }),
      from: h('input', { type: 'date', name: 'from', value: from, required: true }),
      to: h('input', { type: 'date', name: 'to', value: to, required: true }),
    };
    const form = h('form', {
      class: 'filters',
      'aria-label': 'The limit to try',
      onsubmit: (event) => {
        event.preventDefault();
        context.navigate('what-if', {
          type: inputs.type.value, limit: inputs.limit.value, from: inputs.from.value, to: inputs.to.value,
        });
      },
    }, field('User type', inputs.type), field('Daily limit to try', inputs.limit), field('From', inputs.from),
    field('To (at most 92 days)', inputs.to), h('button', { type: 'submit' }, 'Try it'));
    const results = h('div');
    show(container, h('h1', { tabindex: '-1' }, 'What-if: a daily limit tried against past usage'), form, results);
    if (limit === '') {
      show(results, h('p', { class: 'state' }, 'Give a daily limit to see whom it would have refused.'));
      return;
    }
    load(context, { userType: type, dailyLimit: limit, from, to }, results);
  },
};

async function load(context, query, results) {
  show(results, loading());
  let report;
  try {
    report = await context.api.get('/admin/reports/what-if', query);
  } catch (error) {
    show(results, failure(error));
    return;
  }
  const labels = report.days.map((day) => day.date.slice(5));
  show(results,
    h('p', {}, `${report.userType} users, ${report.from} to ${report.to}: a daily limit of ${formatNumber(report.dailyLimit)} tokens (now ${formatNumber(report.currentDailyLimit)}).`),
    h('dl', { class: 'figures', dataset: { figures: 'totals' } },
      figure('Active user-days', report.totals.activeUsers),
      figure('User-days over the limit', report.totals.usersOverLimit),
      figure('Tokens above the limit', report.totals.tokensOverLimit)),
    chart({
      title: `Users over ${formatNumber(report.dailyLimit)} tokens a day`,
      labels,
      valueLabel: 'Users',
      series: [
        { label: 'Active users', values: report.days.map((day) => day.activeUsers), colour: COLOURS.line, kind: 'line' },
        { label: 'Over the limit', values: report.days.map((day) => day.usersOverLimit), colour: COLOURS.accent },
      ],
      summary: `${formatNumber(report.totals.usersOverLimit)} of ${formatNumber(report.totals.activeUsers)} active user-days would have been refused.`,
    }),
    chart({
      title: 'Tokens above the limit, per day',
      labels,
      series: [{ label: 'Tokens above the limit', values: report.days.map((day) => day.tokensOverLimit), colour: COLOURS.primary }],
      summary: `${formatNumber(report.totals.tokensOverLimit)} tokens in all would have been turned away.`,
    }));
}
