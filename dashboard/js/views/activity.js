// Peak usage times and the error rate (`GET /admin/reports/activity`): admitted tokens by hour
// of day and requests by outcome, as the one instance that answered counted them since it
// started. The page says so: with several instances, each holds only its own share.

import { COLOURS, chart } from '../charts.js';
import { failure, figure, formatInstant, formatNumber, h, loading, show } from '../dom.js';

const percent = new Intl.NumberFormat('en-US', { style: 'percent', maximumFractionDigits: 2 });

export default {
  route: 'activity',
  title: 'Activity',
  render(context, params, container) {
    const results = h('div', { id: 'activity-results' }, loading());
    show(container,
      h('h1', { tabindex: '-1' }, 'Activity'),
      h('p', {}, h('button', { type: 'button', class: 'secondary', onclick: () => load(context, results) }, 'Refresh')),
      results);
    load(context, results);
  },
};

async function load(context, results) {
  let activity;
  try {
    activity = await context.api.get('/admin/reports/activity');
  } catch (error) {
    show(results, failure(error));
    return;
  }
  const { requests } = activity;
  const tokens = activity.tokensByHour.map((entry) => entry.tokens);
  const total = tokens.reduce((sum, value) => sum + value, 0);
  const peak = tokens.indexOf(Math.max(...tokens));
  const hour = (index) => `${String(index).padStart(2, '0')}:00`;
  show(results,
    h('p', { class: 'note', dataset: { scope: activity.scope } },
      `One instance’s counts: those of the instance that answered, since it started on ${formatInstant(activity.since)}. `
      + 'The service may run several instances, each counting only what it served, so these are a sample; '
      + 'the whole service’s figures are in Cloud Monitoring.'),
    h('section', { class: 'panel', 'aria-labelledby': 'errors-title' },
      h('h2', { id: 'errors-title' }, 'Error rate'),
      h('dl', { class: 'figures', dataset: { figures: 'requests' } },
        figure('Requests answered', requests.total),
        figure('Server errors (5xx)', requests.serverErrors),
        figure('Error rate', requests.errorRate, (rate) => percent.format(rate)),
        figure('Refused requests (4xx)', requests.clientErrors)),
      h('p', { class: 'hint' },
        'An error is a request the service failed (5xx). Requests refused for what was sent (4xx: not signed in, '
        + 'not allowed, invalid, over a limit) are counted apart.')),
    h('section', { class: 'panel', 'aria-labelledby': 'hours-title' },
      h('h2', { id: 'hours-title' }, 'Peak usage times'),
      chart({
        title: `Tokens by hour of day (${activity.timeZone})`,
        labels: activity.tokensByHour.map((entry) => hour(entry.hour)),
        series: [{ label: 'Tokens', values: tokens, colour: COLOURS.primary }],
        summary: total === 0
          ? 'No tokens admitted yet.'
          : `${formatNumber(total)} tokens admitted; the busiest hour is ${hour(peak)} with ${formatNumber(tokens[peak])}.`,
      })));
}
