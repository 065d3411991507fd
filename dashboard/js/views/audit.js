// The audit trail, newest first (`GET /admin/audit`), filtered by user, admin or time.

import { isDate } from '../dates.js';
import { field, formatInstant, formatNumber, h, show, table, userLink } from '../dom.js';
import { pagedList } from '../pager.js';

const ACTIONS = {
  override_set: 'Override set',
  override_removed: 'Override removed',
  usage_reset: 'Day reset',
  usage_recorded: 'Usage recorded',
  history_rebuilt: 'History rebuilt',
  days_deleted: 'Days deleted',
  months_archived: 'Months archived',
  documents_imported: 'Documents imported',
  notification_redelivered: 'Notification sent again',
};

export default {
  route: 'audit',
  title: 'Audit trail',
  render(context, params, container) {
    const userId = params.get('userId') ?? '';
    const actor = params.get('actor') ?? '';
    const since = isDate(params.get('since')) ? params.get('since') : '';
    const inputs = {
      userId: h('input', { type: 'text', name: 'userId', value: userId, autocomplete: 'off', spellcheck: false }),
      actor: h('input', { type: 'text', name: 'actor', value: actor, autocomplete: 'off', spellcheck: false }),
      since: h('input', { type: 'date', name: 'since', value: since }),
    };
    const filters = h('form', {
      class: 'filters',
      'aria-label': 'Filters',
      onsubmit: (event) => {
        event.preventDefault();
        context.navigate('audit', {
          userId: inputs.userId.value.trim(), actor: inputs.actor.value.trim(), since: inputs.since.value,
        });
      },
    }, field('User id', inputs.userId), field('Admin', inputs.actor), field('Since (UTC day)', inputs.since),
    h('button', { type: 'submit' }, 'Apply'));
    const listing = h('div');
    show(container, h('h1', { tabindex: '-1' }, 'Audit trail'), filters, listing);
    pagedList(listing, {
      label: 'Audit trail',
      fetchPage: (pageToken) => context.api.get('/admin/audit', {
        userId, actor, since: since ? `${since}T00:00:00Z` : '', limit: 25, pageToken,
      }),
      emptyText: 'No change matches.',
      render: (items, page) => table(`Changes, newest first, page ${page}`, [
        { label: 'When', cell: (entry) => h('time', { datetime: entry.at }, formatInstant(entry.at)) },
        { label: 'Admin', cell: (entry) => entry.actor },
        { label: 'Action', cell: (entry) => ACTIONS[entry.action] ?? entry.action },
        // A lifecycle command's commit may touch several users: it names no one.
        { label: 'User', cell: (entry) => (entry.userId ? userLink(entry.userId) : '–') },
        { label: 'Change', cell: (entry) => change(entry) },
        { label: 'Reason', cell: (entry) => entry.reason ?? '–' },
      ], items),
    });
  },
};

/** What changed, in a line: the daily limit (or tokens) before and after. */
function change(entry) {
  const describe = (state) => {
    if (!state) return 'none';
    if ('dailyLimit' in state) {
      const monthly = state.monthlyLimit != null ? `, monthly ${formatNumber(state.monthlyLimit)}` : '';
      return `daily ${formatNumber(state.dailyLimit)}${monthly}`;
    }
    if ('tokensUsed' in state) return `${formatNumber(state.tokensUsed)} tokens on ${state.date}`;
    if ('documents' in state) return `${formatNumber(state.documents.length)} documents`;
    return JSON.stringify(state);
  };
  return `${describe(entry.before)} → ${describe(entry.after)}`;
}
