// Building the page's elements, and the states every view shares: loading, empty, error.
// Nothing here writes HTML as text, so no figure from the API is ever read as markup.

/** An element: `attributes` are set as properties or attributes (`on*` as listeners,
 *  `dataset` as data- attributes); children are nodes or text. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'dataset') {
      Object.assign(element.dataset, value);
    } else if (name === 'class') {
      element.className = value;
    } else if (name in element && typeof value !== 'string') {
      element[name] = value;
    } else {
      element.setAttribute(name, value === true ? '' : value);
    }
  }
  element.append(...children.flat().filter((child) => child !== null && child !== undefined));
  return element;
}

const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });

/** A whole number as people read it: 12,345. */
export const formatNumber = (value) => integer.format(value);
/** A mean, to one decimal. */
export const formatDecimal = (value) => decimal.format(value);

/** An instant in the viewer's own zone, to the minute. */
export function formatInstant(rfc3339) {
  return new Date(rfc3339).toLocaleString('en-GB', {
    year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
  });
}

/** A figure that tests and people both read: the text formatted, the raw value kept. */
export function figure(label, value, format = formatNumber) {
  return h('div', { class: 'figure' },
    h('dt', {}, label),
    h('dd', { dataset: { value: String(value) } }, format(value)));
}

/** Replaces what `container` shows. */
export function show(container, ...nodes) {
  container.replaceChildren(...nodes);
}

export const loading = (what = 'Loading…') => h('p', { class: 'state', role: 'status' }, what);
export const empty = (text) => h('p', { class: 'state state-empty', role: 'status' }, text);

/** What went wrong, in the API's own words (`{"error": {"code", "message"}}`). */
export function failure(error) {
  const detail = error.code ? ` (${error.status} ${error.code})` : '';
  return h('p', { class: 'state state-error', role: 'alert' },
    `Could not load this: ${error.message}${detail}`);
}

/**
 * A table in a region of its own that scrolls sideways on narrow screens.
 * `columns`: [{ label, cell(row) -> node or text, numeric }].
 */
export function table(caption, columns, rows) {
  const head = h('tr', {}, columns.map((column) =>
    h('th', { scope: 'col', class: column.numeric ? 'number' : null }, column.label)));
  const body = rows.map((row) => h('tr', {}, columns.map((column) =>
    h('td', { class: column.className ?? (column.numeric ? 'number' : null) }, column.cell(row)))));
  return h('div', { class: 'table-scroll', role: 'region', 'aria-label': caption, tabindex: '0' },
    h('table', {}, h('caption', {}, caption), h('thead', {}, head), h('tbody', {}, body)));
}

/** Tokens used against a limit, as a bar and in words. */
export function meter(used, limit) {
  const element = h('span', { class: 'meter' },
    h('span', { class: 'meter-track', role: 'img' }, h('span', { class: 'meter-fill' })),
    h('span', { class: 'meter-text', 'aria-hidden': 'true' }));
  setMeter(element, used, limit);
  return element;
}

/** Sets a `meter()`'s bar and words to new figures, in place. */
export function setMeter(element, used, limit) {
  const share = limit > 0 ? used / limit : used > 0 ? 1 : 0;
  const percent = Math.round(share * 100);
  const level = share >= 1 ? 'over' : share >= 0.8 ? 'warn' : 'ok';
  const fill = element.querySelector('.meter-fill');
  fill.className = `meter-fill ${level}`;
  // Set through the CSSOM: the page's policy refuses style attributes.
  fill.style.width = `${Math.min(100, share * 100)}%`;
  const words = limit > 0 ? `${percent}% of ${formatNumber(limit)}` : 'no limit';
  element.querySelector('.meter-track').setAttribute('aria-label', `${formatNumber(used)} tokens, ${words}`);
  element.querySelector('.meter-text').textContent = `${percent}%`;
}

/** Sets a `figure()`'s value, in place; whether it changed. */
export function setFigure(value, raw, format = formatNumber) {
  if (value.dataset.value === String(raw)) return false;
  value.dataset.value = String(raw);
  value.textContent = format(raw);
  return true;
}

/** Sets an element's text, touching it only when it changed. */
export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/** A labelled form control. */
export function field(label, control) {
  control.id ||= `field-${label.toLowerCase().replace(/[^a-z0-9]+/g, '-')}-${++fieldCount}`;
  return h('div', { class: 'field' }, h('label', { for: control.id }, label), control);
}
let fieldCount = 0;

/** The user types the service knows, for filters. */
export function userTypeSelect(selected, { any = 'All types' } = {}) {
  const options = [['', any], ['trial', 'trial'], ['subscribed', 'subscribed']]
    .filter(([value]) => any !== null || value !== '');
  return h('select', { name: 'type' }, options.map(([value, text]) =>
    h('option', { value, selected: value === (selected ?? '') }, text)));
}

/** A link to one user's drill-down. */
export function userLink(userId) {
  return h('a', { href: `#/user/${encodeURIComponent(userId)}` }, userId);
}
