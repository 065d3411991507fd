// Per-user overrides of the limits: the active ones (`GET /admin/limits`), set or changed
// (`PUT /admin/users/{id}/limit`) and removed (`DELETE`), each with a reason for the audit
// trail.

import { idempotencyKey } from '../api.js';
import { field, formatInstant, formatNumber, h, show, table, userLink } from '../dom.js';
import { pagedList } from '../pager.js';

export default {
  route: 'overrides',
  title: 'Overrides',
  render(context, params, container) {
    const listing = h('div');
    const status = h('p', { class: 'success', role: 'status' });
    let list;
    const reload = (message) => {
      status.textContent = message;
      list.reload();
    };
    const form = overrideForm(context, params.get('userId') ?? '', reload);
    show(container,
      h('h1', { tabindex: '-1' }, 'Limit overrides'),
      h('div', { class: 'grid' },
        h('section', { class: 'panel', 'aria-labelledby': 'set-title' }, h('h2', { id: 'set-title' }, 'Set or change an override'), form.element),
        h('section', { class: 'panel', 'aria-labelledby': 'active-title' }, h('h2', { id: 'active-title' }, 'Active overrides'), status, listing)));
    list = pagedList(listing, {
      label: 'Overrides',
      fetchPage: (pageToken) => context.api.get('/admin/limits', { limit: 25, pageToken }),
      emptyText: 'No override is active: every user has their type’s limits.',
      render: (items, page) => table(`Active overrides, page ${page}`, [
        { label: 'User', cell: (item) => userLink(item.userId) },
        { label: 'Daily limit', numeric: true, cell: (item) => formatNumber(item.dailyLimit) },
        { label: 'Monthly cap', numeric: true, cell: (item) => (item.monthlyLimit === null ? 'type’s' : formatNumber(item.monthlyLimit)) },
        { label: 'Mode', cell: (item) => item.enforcement ?? 'type’s' },
        { label: 'Expires', cell: (item) => formatInstant(item.expiresAt) },
        { label: 'Reason', cell: (item) => item.reason },
        { label: 'Set by', cell: (item) => item.setBy },
        { label: 'Actions', cell: (item) => actions(context, item, form, reload) },
      ], items),
    });
  },
};

function overrideForm(context, userId, reload) {
  const user = h('input', { type: 'text', name: 'userId', value: userId, required: true, autocomplete: 'off', spellcheck: false });
  const daily = h('input', { type: 'number', name: 'dailyLimit', min: '0', step: '1', required: true, inputMode: 'numeric' });
  const monthly = h('input', { type: 'number', name: 'monthlyLimit', min: '0', step: '1', inputMode: 'numeric' });
  const mode = h('select', { name: 'enforcement' },
    [['', 'The user type’s mode'], ['enforce', 'enforce'], ['shadow', 'shadow'], ['off', 'off']]
      .map(([value, text]) => h('option', { value }, text)));
  const expires = h('input', { type: 'datetime-local', name: 'expiresAt' });
  const reason = h('input', { type: 'text', name: 'reason', required: true, maxLength: 500 });
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const element = h('form', {
    class: 'stack',
    novalidate: true,
    onsubmit: async (event) => {
      event.preventDefault();
      error.hidden = true;
      const body = { dailyLimit: Number(daily.value), reason: reason.value.trim() };
      if (monthly.value !== '') body.monthlyLimit = Number(monthly.value);
      if (mode.value) body.enforcement = mode.value;
      // The viewer's local time, sent as an instant.
      if (expires.value) body.expiresAt = new Date(expires.value).toISOString();
      const missing = [[user.value.trim(), 'a user id'], [daily.value, 'a daily limit'], [body.reason, 'a reason']]
        .filter(([value]) => !value).map(([, what]) => what);
      if (missing.length) {
        error.textContent = `Give ${missing.join(', ')}.`;
        error.hidden = false;
        return;
      }
      try {
        await context.api.put(`/admin/users/${encodeURIComponent(user.value.trim())}/limit`, body, idempotencyKey());
      } catch (failed) {
        error.textContent = `Not set: ${failed.message}`;
        error.hidden = false;
        return;
      }
      reload(`Override set for ${user.value.trim()}.`);
      element.reset();
    },
  },
  field('User id', user),
  field('Daily limit (tokens)', daily),
  field('Monthly cap (tokens, optional)', monthly),
  field('Mode', mode),
  field('Expires (optional; at most OVERRIDE_MAX_DAYS ahead)', expires),
  field('Reason', reason),
  error,
  h('button', { type: 'submit' }, 'Set override'));
  const edit = (item) => {
    user.value = item.userId;
    daily.value = item.dailyLimit;
    monthly.value = item.monthlyLimit ?? '';
    mode.value = item.enforcement ?? '';
    reason.value = '';
    reason.focus();
  };
  return { element, edit };
}

/** Change (fills the form) and Remove (asks why first). */
function actions(context, item, form, reload) {
  const reason = h('input', { type: 'text', name: 'reason', required: true, maxLength: 500 });
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const confirm = h('form', {
    class: 'inline-form',
    hidden: true,
    onsubmit: async (event) => {
      event.preventDefault();
      if (!reason.value.trim()) {
        error.textContent = 'Give a reason.';
        error.hidden = false;
        return;
      }
      try {
        await context.api.delete(`/admin/users/${encodeURIComponent(item.userId)}/limit`, { reason: reason.value.trim() }, idempotencyKey());
      } catch (failed) {
        error.textContent = `Not removed: ${failed.message}`;
        error.hidden = false;
        return;
      }
      reload(`Override of ${item.userId} removed.`);
    },
  }, field(`Why remove ${item.userId}’s override?`, reason), h('button', { type: 'submit', class: 'danger' }, 'Remove'), error);
  return h('div', {},
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: () => form.edit(item), 'aria-label': `Change ${item.userId}’s override` }, 'Change'),
      h('button', {
        type: 'button',
        class: 'danger',
        'aria-label': `Remove ${item.userId}’s override`,
        onclick: () => { confirm.hidden = false; reason.focus(); },
      }, 'Remove…')),
    confirm);
}
