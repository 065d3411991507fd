// token_usage_history: a user reads only their own months, an admin reads all, and only an
// admin writes, and only well-formed monthly aggregates.

import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import { assertFails, assertSucceeds } from '@firebase/rules-unit-testing';
import {
  Timestamp, collection, deleteDoc, deleteField, doc, getDoc, getDocs, limit, orderBy, query,
  setDoc, updateDoc, where,
} from 'firebase/firestore';
import {
  ADMIN, ADMIN_CLAIMS, ALICE, BOB, month, monthId, useTestEnvironment,
} from './environment.mjs';

const MONTHS = 'token_usage_history';

const environment = useTestEnvironment();
const { asUser, asAdmin, asAnonymous } = environment;

function without(data, field) {
  const copy = { ...data };
  delete copy[field];
  return copy;
}

const seed = (id, data) => environment.seed(MONTHS, id, data);

const DAYS = Array.from({ length: 31 }, (_, i) => String(i + 1).padStart(2, '0'));

// The largest integer JavaScript sends exactly; still an int64 for the service.
const LARGE = Number.MAX_SAFE_INTEGER;

describe('reading one month', () => {
  test('a user reads their own month', async () => {
    await seed(monthId(ALICE), month(ALICE));
    const snapshot = await assertSucceeds(getDoc(doc(asUser(ALICE), MONTHS, monthId(ALICE))));
    assert.equal(snapshot.data().totalMonthlyTokens, 5900);
  });

  test('a user reads their own month before it exists and sees it missing', async () => {
    const snapshot = await assertSucceeds(getDoc(doc(asUser(ALICE), MONTHS, monthId(ALICE))));
    assert.equal(snapshot.exists(), false);
  });

  test("a user cannot read another user's month", async () => {
    await seed(monthId(BOB), month(BOB));
    await assertFails(getDoc(doc(asUser(ALICE), MONTHS, monthId(BOB))));
  });

  test("a user cannot probe another user's missing month", async () => {
    await assertFails(getDoc(doc(asUser(ALICE), MONTHS, monthId(BOB))));
  });

  test('a month whose id names the user but whose userId does not is not theirs', async () => {
    await seed(monthId(ALICE), month(BOB));
    await assertFails(getDoc(doc(asUser(ALICE), MONTHS, monthId(ALICE))));
  });

  test('an unauthenticated client cannot read a month', async () => {
    await seed(monthId(ALICE), month(ALICE));
    await assertFails(getDoc(doc(asAnonymous(), MONTHS, monthId(ALICE))));
  });

  test("an admin reads any user's month", async () => {
    await seed(monthId(BOB), month(BOB));
    const snapshot = await assertSucceeds(getDoc(doc(asAdmin(), MONTHS, monthId(BOB))));
    assert.equal(snapshot.data().userId, BOB);
  });
});

describe('querying months', () => {
  beforeEach(async () => {
    await seed(monthId(ALICE, 2023, 12), month(ALICE, { year: 2023, month: 12 }));
    await seed(monthId(ALICE), month(ALICE));
    await seed(monthId(BOB), month(BOB, { userType: 'subscribed' }));
  });

  test("a user runs the schema's history query on their own months", async () => {
    const months = collection(asUser(ALICE), MONTHS);
    const snapshot = await assertSucceeds(getDocs(query(months, where('userId', '==', ALICE),
      orderBy('year', 'desc'), orderBy('month', 'desc'), limit(3))));
    assert.deepEqual(snapshot.docs.map((d) => d.id), [monthId(ALICE), monthId(ALICE, 2023, 12)]);
  });

  test('a user cannot list all months', async () => {
    await assertFails(getDocs(collection(asUser(ALICE), MONTHS)));
  });

  test("a user cannot list another user's months", async () => {
    const months = collection(asUser(ALICE), MONTHS);
    await assertFails(getDocs(query(months, where('userId', '==', BOB))));
  });

  test('an unauthenticated client cannot list months', async () => {
    const months = collection(asAnonymous(), MONTHS);
    await assertFails(getDocs(query(months, where('userId', '==', ALICE))));
  });

  test('an admin lists all months', async () => {
    const snapshot = await assertSucceeds(getDocs(collection(asAdmin(), MONTHS)));
    assert.equal(snapshot.size, 3);
  });

  test("an admin runs the schema's query: one month by user type", async () => {
    const months = collection(asAdmin(), MONTHS);
    const snapshot = await assertSucceeds(getDocs(query(months, where('userType', '==', 'trial'),
      where('year', '==', 2024), where('month', '==', 1))));
    assert.deepEqual(snapshot.docs.map((d) => d.id), [monthId(ALICE)]);
  });
});

describe('users never write months', () => {
  test('a user cannot create their own month, even well-formed', async () => {
    await assertFails(setDoc(doc(asUser(ALICE), MONTHS, monthId(ALICE)), month(ALICE)));
  });

  test('a user cannot change their own month', async () => {
    await seed(monthId(ALICE), month(ALICE));
    await assertFails(updateDoc(doc(asUser(ALICE), MONTHS, monthId(ALICE)),
      { totalMonthlyTokens: 0 }));
  });

  test('a user cannot delete their own month', async () => {
    await seed(monthId(ALICE), month(ALICE));
    await assertFails(deleteDoc(doc(asUser(ALICE), MONTHS, monthId(ALICE))));
  });

  test("a user cannot write another user's month", async () => {
    await assertFails(setDoc(doc(asUser(ALICE), MONTHS, monthId(BOB)), month(BOB)));
  });

  test('an unauthenticated client cannot write a month', async () => {
    await assertFails(setDoc(doc(asAnonymous(), MONTHS, monthId(ALICE)), month(ALICE)));
  });

  test('an admin claim that is not the boolean true grants no writes', async () => {
    const notAdmin = asUser(ALICE, { admin: 'true' });
    await assertFails(setDoc(doc(notAdmin, MONTHS, monthId(BOB)), month(BOB)));
  });
});

describe('admins write well-formed months', () => {
  test('an admin creates a month', async () => {
    const db = asAdmin();
    await assertSucceeds(setDoc(doc(db, MONTHS, monthId(BOB)), month(BOB)));
    const snapshot = await getDoc(doc(db, MONTHS, monthId(BOB)));
    assert.equal(snapshot.data().peakUsageTokens, 2100);
  });

  test('an admin creates a month whose average is a whole number', async () => {
    // JavaScript sends 1180.0 as an integer; the rules accept any number there.
    await assertSucceeds(setDoc(doc(asAdmin(), MONTHS, monthId(BOB)),
      month(BOB, { averageDailyUsage: 1180 })));
  });

  test('an admin updates a month', async () => {
    await seed(monthId(BOB), month(BOB));
    await assertSucceeds(updateDoc(doc(asAdmin(), MONTHS, monthId(BOB)), {
      'dailyUsage.06': 100,
      totalMonthlyTokens: 6000,
      averageDailyUsage: 1000,
      updatedAt: Timestamp.fromDate(new Date('2024-01-06T12:00:00Z')),
    }));
  });

  test('an admin deletes a month', async () => {
    await seed(monthId(BOB), month(BOB));
    await assertSucceeds(deleteDoc(doc(asAdmin(), MONTHS, monthId(BOB))));
  });

  const malformedMonths = [
    ['an unknown field', month(BOB, { note: 'manual fix' })],
    ['a missing field', without(month(BOB), 'peakUsageDate')],
    ['year as a string', month(BOB, { year: '2024' })],
    ['month 13', month(BOB, { month: 13 })],
    ['a fractional token total', month(BOB, { totalMonthlyTokens: 5900.5 })],
    ['a negative token total', month(BOB, { totalMonthlyTokens: -1, peakUsageTokens: -1 })],
    ['an unknown user type', month(BOB, { userType: 'premium' })],
    ['a day 32 in dailyUsage', month(BOB, { dailyUsage: { 32: 10 } })],
    ['a peak day that is not DD', month(BOB, { peakUsageDate: '4' })],
    ['updatedAt as a string', month(BOB, { updatedAt: '2024-01-05T23:59:59Z' })],
  ];

  for (const [what, data] of malformedMonths) {
    test(`an admin is denied a month with ${what}`, async () => {
      await assertFails(setDoc(doc(asAdmin(), MONTHS, monthId(BOB)), data));
    });
  }

  // Each day must decode as a non-negative integer, or the service cannot read the month.
  const badDayValues = [
    ['a fraction', 1.5],
    ['negative', -1],
    ['a string', '5'],
    ['a boolean', true],
    ['null', null],
  ];

  for (const [what, value] of badDayValues) {
    test(`an admin is denied a month with a day's usage that is ${what}`, async () => {
      const dailyUsage = { ...month(BOB).dailyUsage, 31: value };
      await assertFails(setDoc(doc(asAdmin(), MONTHS, monthId(BOB)),
        month(BOB, { dailyUsage })));
    });

    test(`an admin is denied updating a day's usage to ${what}`, async () => {
      await seed(monthId(BOB), month(BOB));
      await assertFails(updateDoc(doc(asAdmin(), MONTHS, monthId(BOB)),
        { 'dailyUsage.02': value }));
    });
  }

  test('an admin is denied a bad usage on any day of the month', async () => {
    const db = asAdmin();
    for (const day of DAYS) {
      await assertFails(setDoc(doc(db, MONTHS, monthId(BOB)),
        month(BOB, { dailyUsage: { [day]: 1.5 } })));
    }
  });

  // Every day is checked by name, so a full month is the costliest write for the rules.
  test('an admin creates and updates a month with usage on every day', async () => {
    const db = asAdmin();
    const dailyUsage = Object.fromEntries(DAYS.map((day) => [day, 100]));
    await assertSucceeds(setDoc(doc(db, MONTHS, monthId(BOB)), month(BOB, {
      dailyUsage, totalMonthlyTokens: 3100, averageDailyUsage: 100, peakUsageDate: '01',
      peakUsageTokens: 100,
    })));
    await assertSucceeds(updateDoc(doc(db, MONTHS, monthId(BOB)), {
      'dailyUsage.31': 200,
      totalMonthlyTokens: 3200,
      averageDailyUsage: 3200 / 31,
      peakUsageDate: '31',
      peakUsageTokens: 200,
      updatedAt: Timestamp.fromDate(new Date('2024-01-31T23:59:59Z')),
    }));
  });

  test('an admin creates a month with a zero day and a large day', async () => {
    await assertSucceeds(setDoc(doc(asAdmin(), MONTHS, monthId(BOB)), month(BOB, {
      dailyUsage: { '01': 0, '31': LARGE },
      totalMonthlyTokens: LARGE,
      averageDailyUsage: LARGE / 31,
      peakUsageDate: '31',
      peakUsageTokens: LARGE,
    })));
  });

  test('an admin updates days to zero and to a large number', async () => {
    await seed(monthId(BOB), month(BOB));
    await assertSucceeds(updateDoc(doc(asAdmin(), MONTHS, monthId(BOB)), {
      'dailyUsage.01': 0,
      'dailyUsage.06': LARGE,
      totalMonthlyTokens: LARGE,
      updatedAt: Timestamp.fromDate(new Date('2024-01-06T12:00:00Z')),
    }));
  });

  test('an admin is denied a month whose id does not match its user, year and month',
    async () => {
      const db = asAdmin();
      await assertFails(setDoc(doc(db, MONTHS, monthId(BOB, 2024, 2)), month(BOB)));
      await assertFails(setDoc(doc(db, MONTHS, monthId(ALICE)), month(BOB)));
    });

  test('an admin is denied removing a required field', async () => {
    await seed(monthId(BOB), month(BOB));
    await assertFails(updateDoc(doc(asAdmin(), MONTHS, monthId(BOB)),
      { userType: deleteField() }));
  });

  test('an admin is denied rewriting createdAt', async () => {
    await seed(monthId(BOB), month(BOB));
    await assertFails(updateDoc(doc(asAdmin(), MONTHS, monthId(BOB)),
      { createdAt: Timestamp.fromDate(new Date('2023-12-01T00:00:00Z')) }));
  });
});
