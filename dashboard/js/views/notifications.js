// Threshold events in the outbox (`GET /admin/notifications`), failed ones first: each can be
// sent again (`POST /admin/notifications/{id}/redeliver`), with a reason for the audit trail.

import { idempotencyKey } from '../api.js';
import { field, formatInstant, h, show, table, userLink } from '../dom.js';
import { pagedList } from '../pager.js';

const STATUSES = [
  ['failed', 'Failed'],
  ['pending', 'Pending'],
  ['delivered', 'Delivered'],
];

const EMPTY = {
  failed: 'No event has failed: every one was delivered or is still being retried.',
  pending: 'No event is waiting for delivery.',
  delivered: 'No delivered event is kept (they are kept 30 days).',
};

export default {
  route: 'notifications',
  title: 'Notifications',
  render(context, params, container) {
    const chosen = STATUSES.some(([value]) => value === params.get('status')) ? params.get('status') : 'failed';
    const status = h('select', {
      name: 'status',
      onchange: () => context.navigate('notifications', { status: status.value }),
    }, STATUSES.map(([value, text]) => h('option', { value, selected: value === chosen }, text)));
    const listing = h('div');
    const message = h('p', { class: 'success', role: 'status' });
    let list;
    const reload = (text) => {
      message.textContent = text;
      list.reload();
    };
    show(container,
      h('h1', { tabindex: '-1' }, 'Threshold notifications'),
      h('section', { class: 'panel', 'aria-labelledby': 'events-title' },
        h('h2', { id: 'events-title' }, 'Events'),
        h('form', { class: 'filters', onsubmit: (event) => event.preventDefault() }, field('Status', status)),
        message,
        listing));
    list = pagedList(listing, {
      label: 'Events',
      fetchPage: (pageToken) => context.api.get('/admin/notifications', { status: chosen, limit: 25, pageToken }),
      emptyText: EMPTY[chosen],
      render: (items, page) => table(`${chosen} events, page ${page}`, [
        { label: 'Event', cell: (item) => h('code', {}, item.eventId) },
        { label: 'Type', cell: (item) => item.type },
        { label: 'User', cell: (item) => userLink(item.userId) },
        { label: 'Raised', cell: (item) => formatInstant(item.createdAt) },
        { label: 'Attempts', numeric: true, cell: (item) => String(item.attempts) },
        { label: 'Delivered to', cell: (item) => item.deliveredTo.join(', ') || '–' },
        { label: 'Last error', cell: (item) => item.lastError ?? '–' },
        { label: 'Actions', cell: (item) => (item.status === 'pending' ? '–' : sendAgain(context, item, reload)) },
      ], items),
    });
  },
};

/** Send again: asks for an optional reason, then queues the event. */
function sendAgain(context, item, reload) {
  const reason = h('input', { type: 'text', name: 'reason', maxLength: 500 });
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const confirm = h('form', {
    class: 'inline-form',
    hidden: true,
    onsubmit: async (event) => {
      event.preventDefault();
      const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
      let answer;
      try {
        answer = await context.api.post(`/admin/notifications/${encodeURIComponent(item.eventId)}/redeliver`, body, idempotencyKey());
      } catch (failed) {
        error.textContent = `Not sent: ${failed.message}`;
        error.hidden = false;
        return;
      }
      reload(answer.queued ? `${item.eventId} is queued to be sent again.` : `${item.eventId} was already on its way.`);
    },
  }, field(`Why send ${item.eventId} again? (optional)`, reason), h('button', { type: 'submit' }, 'Send'), error);
  return h('div', {},
    h('button', {
      type: 'button',
      class: 'secondary',
      'aria-label': `Send again: ${item.eventId}`,
      onclick: () => { confirm.hidden = false; reason.focus(); },
    }, 'Send again…'),
    confirm);
}
