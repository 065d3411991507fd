// Pages of a listing, moved through with the API's cursors: `nextPageToken` goes forward, and
// the tokens already seen go back, so a page is always the API's own page, never re-cut here.

import { empty, failure, h, loading, show } from './dom.js';

/**
 * Shows `fetchPage(pageToken)`'s pages in `container` with Previous and Next buttons.
 * `render(items, pageNumber)` makes a page's node; `emptyText` says what an empty first page
 * means. Returns { reload() }.
 */
export function pagedList(container, { label, fetchPage, render, emptyText }) {
  const results = h('div', { class: 'page' });
  const previous = h('button', { type: 'button', class: 'secondary', onclick: () => go(index - 1) }, 'Previous page');
  const next = h('button', { type: 'button', class: 'secondary', onclick: () => go(index + 1) }, 'Next page');
  const position = h('span', { 'aria-live': 'polite' });
  const controls = h('nav', { class: 'pager', 'aria-label': `${label} pages` }, previous, position, next);
  show(container, results, controls);

  // tokens[i] is the pageToken of page i + 1; page 1 has none.
  let tokens = [null];
  let index = 0;
  let request = 0;

  async function go(target) {
    const mine = ++request;
    const focused = document.activeElement;
    previous.disabled = true;
    next.disabled = true;
    show(results, loading());
    let page;
    try {
      page = await fetchPage(tokens[target]);
    } catch (error) {
      if (mine === request) {
        show(results, failure(error));
        previous.disabled = index === 0;
        next.disabled = tokens.length <= index + 1;
      }
      return;
    }
    // A later request has been made meanwhile: its answer is the one to show.
    if (mine !== request) return;
    index = target;
    tokens = tokens.slice(0, index + 1);
    if (page.nextPageToken) tokens.push(page.nextPageToken);
    const none = page.items.length === 0 && index === 0;
    show(results, none ? empty(emptyText) : render(page.items, index + 1));
    previous.disabled = index === 0;
    next.disabled = !page.nextPageToken;
    controls.hidden = none;
    position.textContent = `Page ${index + 1}`;
    // Keep the keyboard where it was, unless its button has just been switched off.
    if (focused?.disabled) (previous.disabled ? next : previous).focus();
  }

  go(0);
  return { reload: () => { tokens = [null]; return go(0); } };
}
