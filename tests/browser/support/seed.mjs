// The data the dashboard is shown: past days and months imported the way an operator backfills
// them (`token-limits import`), then today's usage, overrides and their audit entries written
// through the API, as clients write them.

import { writeFileSync } from 'node:fs';

/** Today's users: enough for more than one page of 25. */
export const USERS = Array.from({ length: 30 }, (_, index) => {
  const number = index + 1;
  const userType = number % 5 === 0 || number % 3 === 0 ? 'subscribed' : 'trial';
  return { userId: `user-${String(number).padStart(2, '0')}`, userType, tokens: tokensOf(number, userType) };
});

/** Users with a past: a year of months and the last weeks' days. */
export const WITH_HISTORY = USERS.slice(0, 6);

function tokensOf(number, userType) {
  // Spread over the limit's range: some low, some near the limit (10,000 trial, 100,000
  // subscribed), and one trial user at it.
  if (number === 1) return 10_000;
  const limit = userType === 'trial' ? 10_000 : 100_000;
  return Math.round(limit * (((number * 37) % 97) / 100)) + number;
}

/** A day's tokens in the past, varied but fixed by user and day. */
function pastTokens(userIndex, date) {
  const day = Number(date.slice(8, 10));
  const month = Number(date.slice(5, 7));
  return 500 + ((userIndex * 7919 + day * 613 + month * 97) % 6000);
}

const dayAfter = (date) => {
  const next = new Date(`${date}T00:00:00Z`);
  next.setUTCDate(next.getUTCDate() + 1);
  return next.toISOString().slice(0, 10);
};

/**
 * Writes the NDJSON of the history: for each user with a past, every day of the last eleven
 * months and of this month before today, as day documents (the last 40 days only, as cleanup
 * would leave them) and as month documents whose figures follow from their days.
 */
export function writeHistory(path, today) {
  const [year, month] = today.split('-').map(Number);
  const firstMonth = new Date(Date.UTC(year, month - 12, 1)).toISOString().slice(0, 10);
  const keepDaysFrom = new Date(Date.parse(`${today}T00:00:00Z`) - 40 * 86_400_000).toISOString().slice(0, 10);
  const lines = [];
  WITH_HISTORY.forEach(({ userId, userType }, userIndex) => {
    const months = new Map();
    for (let date = firstMonth; date < today; date = dayAfter(date)) {
      const tokens = pastTokens(userIndex, date);
      const key = date.slice(0, 7);
      if (!months.has(key)) months.set(key, {});
      months.get(key)[date.slice(8, 10)] = tokens;
      if (date >= keepDaysFrom) {
        lines.push({
          collection: 'daily_token_usage',
          id: `${userId}_${date}`,
          data: {
            userId, date, tokensUsed: tokens, tokenLimit: userType === 'trial' ? 10_000 : 100_000, userType,
            lastUpdated: `${date}T12:00:00Z`, resetAt: `${dayAfter(date)}T00:00:00Z`,
          },
        });
      }
    }
    for (const [key, dailyUsage] of months) {
      // In day order: keys such as "10" would otherwise come before "01".
      const entries = Object.entries(dailyUsage).sort(([a], [b]) => a.localeCompare(b));
      const total = entries.reduce((sum, [, tokens]) => sum + tokens, 0);
      // The earliest of the days with the most tokens.
      const [peakDate, peakTokens] = entries.reduce((best, entry) => (entry[1] > best[1] ? entry : best));
      const [y, m] = key.split('-').map(Number);
      lines.push({
        collection: 'token_usage_history',
        id: `${userId}_${key.replace('-', '_')}`,
        data: {
          userId, year: y, month: m, dailyUsage, totalMonthlyTokens: total,
          averageDailyUsage: total / entries.length, peakUsageDate: peakDate, peakUsageTokens: peakTokens,
          userType, createdAt: `${key}-01T00:00:00Z`, updatedAt: `${key}-${entries.at(-1)[0]}T12:00:00Z`,
        },
      });
    }
  });
  writeFileSync(path, lines.map((line) => JSON.stringify(line)).join('\n') + '\n');
  return lines.length;
}

/** Today's usage of every user, two overrides, and so two audit entries. */
export async function seedToday(api) {
  for (const { userId, userType, tokens } of USERS) {
    await api.post('/usage', { tokens, userId, userType });
  }
  await api.put('/admin/users/user-02/limit', { dailyLimit: 50_000, reason: 'launch week, ticket 7' });
  await api.put('/admin/users/user-04/limit', { dailyLimit: 2_000, enforcement: 'shadow', reason: 'abuse report 12' });
}
