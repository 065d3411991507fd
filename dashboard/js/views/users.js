// One day's users by tokens used, most first, paged with the API's cursors and filtered by
// user type (`GET /admin/usage/daily`); each row shows its use against its limit.

import { isDate } from '../dates.js';
import { field, formatNumber, h, meter, show, table, userLink, userTypeSelect } from '../dom.js';
import { pagedList } from '../pager.js';

const PAGE_SIZES = ['10', '25', '50', '100'];

export default {
  route: 'users',
  title: 'Users',
  render(context, params, container) {
    const date = isDate(params.get('date')) ? params.get('date') : context.today();
    const type = params.get('type') ?? '';
    const size = PAGE_SIZES.includes(params.get('size')) ? params.get('size') : '25';

    const picker = h('input', { type: 'date', name: 'date', value: date, required: true });
    const types = userTypeSelect(type);
    const sizes = h('select', { name: 'size' }, PAGE_SIZES.map((value) =>
      h('option', { value, selected: value === size }, value)));
    const filters = h('form', {
      class: 'filters',
      'aria-label': 'Filters',
      onsubmit: (event) => {
        event.preventDefault();
        context.navigate('users', { date: picker.value, type: types.value, size: sizes.value });
      },
    }, field('Day', picker), field('User type', types), field('Per page', sizes),
    h('button', { type: 'submit' }, 'Apply'));

    const listing = h('div');
    show(container,
      h('h1', { tabindex: '-1' }, `Users by tokens used, ${date}`),
      filters,
      findUser(context),
      listing);

    const caption = `Users of ${date}${type ? ` (${type})` : ''}, most tokens first`;
    pagedList(listing, {
      label: 'Users',
      fetchPage: (pageToken) => context.api.get('/admin/usage/daily', {
        date, userType: type, limit: size, pageToken,
      }),
      emptyText: `No ${type ? `${type} ` : ''}user used tokens on ${date}.`,
      render: (items, page) => table(`${caption}, page ${page}`, [
        { label: 'User', cell: (day) => userLink(day.userId) },
        { label: 'Type', cell: (day) => day.userType },
        { label: 'Tokens used', numeric: true, cell: (day) => formatNumber(day.tokensUsed) },
        { label: 'Daily limit', numeric: true, cell: (day) => formatNumber(day.tokenLimit) },
        { label: 'Use of the limit', className: 'use', cell: (day) => meter(day.tokensUsed, day.tokenLimit) },
        { label: 'Remaining', numeric: true, cell: (day) => formatNumber(day.remaining) },
      ], items),
    });
  },
};

/** A form that opens any user's drill-down by uid. */
export function findUser(context) {
  const input = h('input', { type: 'text', name: 'userId', required: true, autocomplete: 'off', spellcheck: false });
  return h('form', {
    class: 'filters',
    role: 'search',
    'aria-label': 'Find a user',
    onsubmit: (event) => {
      event.preventDefault();
      const userId = input.value.trim();
      if (userId) context.navigate(`user/${encodeURIComponent(userId)}`);
    },
  }, field('User id', input), h('button', { type: 'submit', class: 'secondary' }, 'Open user'));
}
