// Calendar days as the service counts them: `YYYY-MM-DD` in its RESET_TIMEZONE, whatever the
// viewer's own zone.

/** Today's date in `timeZone`, `YYYY-MM-DD`. */
export function today(timeZone, now = new Date()) {
  const parts = new Intl.DateTimeFormat('en-CA', {
    timeZone, year: 'numeric', month: '2-digit', day: '2-digit',
  }).formatToParts(now);
  const part = (type) => parts.find((p) => p.type === type).value;
  return `${part('year')}-${part('month')}-${part('day')}`;
}

/** `date` moved by `days` (negative: earlier). */
export function addDays(date, days) {
  const moved = new Date(`${date}T00:00:00Z`);
  moved.setUTCDate(moved.getUTCDate() + days);
  return moved.toISOString().slice(0, 10);
}

/** Whether `text` is a real `YYYY-MM-DD` day. */
export function isDate(text) {
  return /^\d{4}-\d{2}-\d{2}$/.test(text ?? '') && addDays(text, 0) === text;
}

/** `{ year, month }` of a `YYYY-MM` or `YYYY-MM-DD`. */
export function monthOf(text) {
  const [year, month] = text.split('-').map(Number);
  return { year, month };
}

/** `YYYY-MM` of a year and month. */
export const monthLabel = ({ year, month }) => `${year}-${String(month).padStart(2, '0')}`;

/** The `count` months up to and including `{ year, month }`, oldest first. */
export function monthsUpTo({ year, month }, count) {
  const months = [];
  for (let back = count - 1; back >= 0; back--) {
    const index = year * 12 + (month - 1) - back;
    months.push({ year: Math.floor(index / 12), month: (index % 12) + 1 });
  }
  return months;
}

/** The number of days of a month. */
export function daysIn({ year, month }) {
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}
