// Charts drawn with uPlot (vendored, loaded by index.html as the global `uPlot`). Each chart is
// also described in words and can be opened as a table: a canvas alone says nothing to a
// screen reader.

import { formatNumber, h, table } from './dom.js';

/** Colours at 3:1 or more against white (WCAG 1.4.11), told apart by more than hue. */
export const COLOURS = {
  primary: '#1d4ed8',
  accent: '#b91c1c',
  line: '#6d28d9',
  muted: '#4b5563',
};

const compact = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });
const HEIGHT = 240;
const drawn = new WeakMap();

/**
 * A chart of `series` over `labels` (one value per label, `null` for none):
 * series = [{ label, values, colour, kind: 'bars' | 'line' }].
 * `summary` says in words what it shows. Returns the figure; it draws once laid out.
 */
export function chart({ title, labels, series, summary, valueLabel = 'Tokens' }) {
  const canvas = h('div', { class: 'chart-canvas', role: 'img', 'aria-label': `${title}. ${summary}` });
  const legend = h('ul', { class: 'legend', 'aria-hidden': 'true' }, series.map((one) => {
    const swatch = h('span', { class: 'swatch' });
    swatch.style.background = one.colour;
    return h('li', {}, swatch, one.label);
  }));
  const rows = labels.map((label, index) => ({ label, index }));
  const columns = [{ label: 'When', cell: (row) => row.label }].concat(series.map((one) => ({
    label: one.label,
    numeric: true,
    cell: (row) => (one.values[row.index] === null ? '–' : formatNumber(one.values[row.index])),
  })));
  const figure = h('figure', { class: 'chart' },
    h('figcaption', {}, title),
    canvas,
    legend,
    h('details', {}, h('summary', {}, 'Show as a table'), table(`${title}: ${valueLabel}`, columns, rows)));

  const observer = new ResizeObserver(([entry]) => {
    const width = Math.floor(entry.contentRect.width);
    const state = drawn.get(figure);
    if (width <= 0 || !state) return;
    if (state.plot) state.plot.setSize({ width, height: HEIGHT });
    else state.plot = draw(canvas, width, labels, state.series);
  });
  drawn.set(figure, { observer, plot: null, series, title });
  observer.observe(canvas);
  return figure;
}

/**
 * Shows new values in a chart made by `chart()`, in place: the bars, the words and the table
 * change, and nothing is rebuilt, so that focus and an open table stay as they were. `series`
 * has the chart's series in the same order, each with its (possibly new) label and values.
 */
export function updateChart(figure, { series, summary }) {
  const state = drawn.get(figure);
  if (!state) return;
  state.series = series;
  state.plot?.setData([state.plot.data[0], ...series.map((one) => one.values)]);
  figure.querySelector('.chart-canvas').setAttribute('aria-label', `${state.title}. ${summary}`);
  figure.querySelectorAll('.legend li').forEach((item, index) => {
    item.lastChild.textContent = series[index].label;
  });
  figure.querySelectorAll('thead th').forEach((cell, index) => {
    if (index > 0) cell.textContent = series[index - 1].label;
  });
  figure.querySelectorAll('tbody tr').forEach((row, rowIndex) => {
    series.forEach((one, index) => {
      const value = one.values[rowIndex];
      const text = value === null ? '–' : formatNumber(value);
      const cell = row.cells[index + 1];
      if (cell.textContent !== text) cell.textContent = text;
    });
  });
}

/** Stops and frees every chart inside `container`, before it is emptied. */
export function destroyCharts(container) {
  for (const figure of container.querySelectorAll('figure.chart')) {
    const state = drawn.get(figure);
    state?.observer.disconnect();
    state?.plot?.destroy();
    drawn.delete(figure);
  }
}

function draw(target, width, labels, series) {
  const { uPlot } = globalThis;
  const count = labels.length;
  const xs = labels.map((_, index) => index);
  const bars = uPlot.paths.bars({ size: [0.7, 48], align: 0 });
  // As many labels as fit side by side at the chart's width now (about 7 px a character),
  // always on whole indices.
  const labelWidth = Math.max(...labels.map((label) => label.length)) * 7 + 16;
  const step = (plot) => Math.max(1, Math.ceil(count / Math.max(1, Math.floor((plot.width - 60) / labelWidth))));
  return new uPlot({
    width,
    height: HEIGHT,
    legend: { show: false },
    cursor: { drag: { x: false, y: false } },
    scales: {
      x: { time: false, range: () => [-0.5, count - 0.5] },
      y: { range: (_, __, max) => [0, max > 0 ? max * 1.1 : 1] },
    },
    axes: [
      {
        stroke: COLOURS.muted,
        grid: { show: false },
        splits: (plot) => xs.filter((index) => index % step(plot) === 0),
        values: (_, splits) => splits.map((index) => labels[index] ?? ''),
      },
      {
        stroke: COLOURS.muted,
        size: 56,
        values: (_, splits) => splits.map((value) => compact.format(value)),
      },
    ],
    series: [{}].concat(series.map((one) => ({
      label: one.label,
      stroke: one.colour,
      fill: one.kind === 'line' ? undefined : one.colour,
      width: one.kind === 'line' ? 2 : 0,
      paths: one.kind === 'line' ? undefined : bars,
      points: { show: one.kind === 'line' },
    }))),
  }, [xs, ...series.map((one) => one.values)], target);
}
