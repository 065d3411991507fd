// daily_token_usage: a user reads only their own days, an admin reads all, and no client
// writes at all (the service, with server credentials, is the only writer).

import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import { assertFails, assertSucceeds } from '@firebase/rules-unit-testing';
import {
  FieldPath, Timestamp, collection, deleteDoc, deleteField, doc, getDoc, getDocs, orderBy, query,
  setDoc, updateDoc, where,
} from 'firebase/firestore';
import {
  ADMIN, ADMIN_CLAIMS, ALICE, BOB, DATE, day, dayId, useTestEnvironment,
} from './environment.mjs';

const DAYS = 'daily_token_usage';

const environment = useTestEnvironment();
const { asUser, asAdmin, asAnonymous } = environment;

const seed = (id, data) => environment.seed(DAYS, id, data);

describe('reading one day', () => {
  test('a user reads their own day', async () => {
    await seed(dayId(ALICE), day(ALICE));
    const snapshot = await assertSucceeds(getDoc(doc(asUser(ALICE), DAYS, dayId(ALICE))));
    assert.equal(snapshot.data().tokensUsed, 1250);
  });

  test('a user reads their own day before it exists and sees it missing', async () => {
    const snapshot = await assertSucceeds(getDoc(doc(asUser(ALICE), DAYS, dayId(ALICE))));
    assert.equal(snapshot.exists(), false);
  });

  test("a user cannot read another user's day", async () => {
    await seed(dayId(BOB), day(BOB));
    await assertFails(getDoc(doc(asUser(ALICE), DAYS, dayId(BOB))));
  });

  test("a user cannot probe another user's missing day", async () => {
    await assertFails(getDoc(doc(asUser(ALICE), DAYS, dayId(BOB))));
  });

  test("a uid that prefixes another uid cannot read the other's missing day", async () => {
    await assertFails(getDoc(doc(asUser(ALICE), DAYS, dayId(`${ALICE}_x`))));
  });

  test('a day whose id names the user but whose userId does not is not theirs', async () => {
    await seed(dayId(ALICE), day(BOB));
    await assertFails(getDoc(doc(asUser(ALICE), DAYS, dayId(ALICE))));
  });

  test("a day whose userId names the user but whose id is another's is not theirs", async () => {
    await seed(dayId(BOB), day(ALICE));
    await assertFails(getDoc(doc(asUser(ALICE), DAYS, dayId(BOB))));
  });

  test('a day whose id date differs from its date field is not readable', async () => {
    await seed(dayId(ALICE, '2024-01-16'), day(ALICE));
    await assertFails(getDoc(doc(asUser(ALICE), DAYS, dayId(ALICE, '2024-01-16'))));
  });

  test('an unauthenticated client cannot read a day', async () => {
    await seed(dayId(ALICE), day(ALICE));
    await assertFails(getDoc(doc(asAnonymous(), DAYS, dayId(ALICE))));
  });

  test("an admin reads any user's day", async () => {
    await seed(dayId(BOB), day(BOB));
    const snapshot = await assertSucceeds(getDoc(doc(asAdmin(), DAYS, dayId(BOB))));
    assert.equal(snapshot.data().userId, BOB);
  });

  test('an admin claim that is not the boolean true grants nothing', async () => {
    await seed(dayId(BOB), day(BOB));
    await assertFails(getDoc(doc(asUser(ALICE, { admin: 'true' }), DAYS, dayId(BOB))));
    await assertFails(getDoc(doc(asUser(ALICE, { admin: false }), DAYS, dayId(BOB))));
  });
});

describe('querying days', () => {
  beforeEach(async () => {
    await seed(dayId(ALICE), day(ALICE));
    await seed(dayId(ALICE, '2024-01-14'), day(ALICE, { date: '2024-01-14' }));
    await seed(dayId(BOB), day(BOB, { tokensUsed: 9000 }));
  });

  test('a user lists their own days by filtering on their userId', async () => {
    const days = collection(asUser(ALICE), DAYS);
    const snapshot = await assertSucceeds(getDocs(query(days, where('userId', '==', ALICE))));
    assert.deepEqual(snapshot.docs.map((d) => d.id).sort(),
      [dayId(ALICE, '2024-01-14'), dayId(ALICE)]);
  });

  test('a user cannot list all days', async () => {
    await assertFails(getDocs(collection(asUser(ALICE), DAYS)));
  });

  test("a user cannot run the admin's report query", async () => {
    const days = collection(asUser(ALICE), DAYS);
    await assertFails(getDocs(query(days, where('date', '==', DATE),
      orderBy('tokensUsed', 'desc'))));
  });

  test("a user cannot list another user's days", async () => {
    const days = collection(asUser(ALICE), DAYS);
    await assertFails(getDocs(query(days, where('userId', '==', BOB))));
  });

  test('an unauthenticated client cannot list days', async () => {
    const days = collection(asAnonymous(), DAYS);
    await assertFails(getDocs(query(days, where('userId', '==', ALICE))));
  });

  test('an admin lists all days', async () => {
    const snapshot = await assertSucceeds(getDocs(collection(asAdmin(), DAYS)));
    assert.equal(snapshot.size, 3);
  });

  test("an admin runs the schema's report query: one date by tokensUsed", async () => {
    const days = collection(asAdmin(), DAYS);
    const snapshot = await assertSucceeds(getDocs(query(days, where('date', '==', DATE),
      orderBy('tokensUsed', 'desc'))));
    assert.deepEqual(snapshot.docs.map((d) => d.data().userId), [BOB, ALICE]);
  });
});

// Each forbidden write is the service's own document with one thing wrong, so each test
// fails if the rules ever let that one thing through.
describe('no client writes a day', () => {
  const ownDay = (db, id = dayId(ALICE)) => doc(db, DAYS, id);

  const forbiddenWrites = [
    ['creating their own day, with exactly the fields the service writes', false,
      (db) => setDoc(ownDay(db), day(ALICE))],
    ['adding tokens to their own day', true,
      (db) => updateDoc(ownDay(db), { tokensUsed: 1500 })],
    ['deleting their own day', true,
      (db) => deleteDoc(ownDay(db))],
    ["writing another user's day", false,
      (db) => setDoc(ownDay(db, dayId(BOB)), day(BOB))],
    ['lowering tokensUsed', true,
      (db) => updateDoc(ownDay(db), { tokensUsed: 0 })],
    ['raising tokenLimit', true,
      (db) => updateDoc(ownDay(db), { tokenLimit: 100000 })],
    ['setting tokenLimit with a merge', false,
      (db) => setDoc(ownDay(db), { tokenLimit: 1000000 }, { merge: true })],
    ['changing userType', true,
      (db) => updateDoc(ownDay(db), { userType: 'subscribed' })],
    ['changing userId', true,
      (db) => updateDoc(ownDay(db), { userId: BOB })],
    ['changing date', true,
      (db) => updateDoc(ownDay(db), { date: '2024-01-16' })],
    ['adding an unknown field', true,
      (db) => updateDoc(ownDay(db), { bonusTokens: 5000 })],
    ['writing tokensUsed as a string', false,
      (db) => setDoc(ownDay(db), day(ALICE, { tokensUsed: '1250' }))],
    ['writing tokenLimit as a fraction', false,
      (db) => setDoc(ownDay(db), day(ALICE, { tokenLimit: 10000.5 }))],
    ['writing resetAt as a string', false,
      (db) => setDoc(ownDay(db), day(ALICE, { resetAt: '2024-01-16T00:00:00Z' }))],
    ['writing a day under an id whose date differs from the date field', false,
      (db) => setDoc(ownDay(db, dayId(ALICE, '2024-01-16')), day(ALICE))],
    ["writing their own data under another user's id", false,
      (db) => setDoc(ownDay(db, dayId(BOB)), day(ALICE))],
  ];

  for (const [what, ownDayExists, write] of forbiddenWrites) {
    test(`a user is denied ${what}`, async () => {
      if (ownDayExists) {
        await seed(dayId(ALICE), day(ALICE));
      }
      await assertFails(write(asUser(ALICE)));
    });
  }

  test('an admin cannot write a day either', async () => {
    await seed(dayId(BOB), day(BOB));
    await assertFails(updateDoc(doc(asAdmin(), DAYS, dayId(BOB)), { tokensUsed: 0 }));
    await assertFails(setDoc(doc(asAdmin(), DAYS, dayId(ALICE)), day(ALICE)));
  });

  test('an unauthenticated client cannot write a day', async () => {
    await assertFails(setDoc(doc(asAnonymous(), DAYS, dayId(ALICE)), day(ALICE)));
  });

  test('the service, with server credentials, writes a day', async () => {
    await environment.asService((firestore) =>
      assertSucceeds(setDoc(doc(firestore, DAYS, dayId(ALICE)), day(ALICE))));
  });
});

// Reservation ids as the service makes them: {yyyymmdd}-{expiresAt in Unix seconds}-{random}.
const HELD = '20240115-1705329300-9f86d081884c7d65';
const COMMITTED = '20240115-1705327500-3c59dc048e885024';
const NEW = '20240115-1705329600-a87ff679a2f3e71d';

const at = (iso) => Timestamp.fromDate(new Date(iso));

const heldEntry = () => ({
  tokens: 800,
  createdAt: at('2024-01-15T14:30:00Z'),
  expiresAt: at('2024-01-15T14:35:00Z'),
  status: 'held',
});

// A day as the service writes it while one reply streams and another has been committed.
function dayWithReservations(userId) {
  return day(userId, {
    reservations: {
      [HELD]: heldEntry(),
      [COMMITTED]: {
        tokens: 500,
        createdAt: at('2024-01-15T14:00:00Z'),
        expiresAt: at('2024-01-15T14:05:00Z'),
        status: 'committed',
        settledAt: at('2024-01-15T14:01:00Z'),
        committedTokens: 420,
      },
    },
  });
}

describe('reading a day that keeps reservations', () => {
  beforeEach(async () => {
    await seed(dayId(ALICE), dayWithReservations(ALICE));
    await seed(dayId(BOB), dayWithReservations(BOB));
  });

  test('a user reads their own day and sees its held and committed reservations', async () => {
    const snapshot = await assertSucceeds(getDoc(doc(asUser(ALICE), DAYS, dayId(ALICE))));
    assert.deepEqual(snapshot.data().reservations, dayWithReservations(ALICE).reservations);
  });

  test('a user lists their own day with its reservations by filtering on their userId',
    async () => {
      const days = collection(asUser(ALICE), DAYS);
      const snapshot = await assertSucceeds(getDocs(query(days, where('userId', '==', ALICE))));
      assert.deepEqual(snapshot.docs.map((d) => d.id), [dayId(ALICE)]);
      assert.deepEqual(snapshot.docs[0].data().reservations,
        dayWithReservations(ALICE).reservations);
    });

  test("a user cannot read another user's reservations", async () => {
    await assertFails(getDoc(doc(asUser(BOB), DAYS, dayId(ALICE))));
    await assertFails(getDocs(query(collection(asUser(BOB), DAYS),
      where('userId', '==', ALICE))));
  });

  test("an admin reads any user's reservations", async () => {
    const snapshot = await assertSucceeds(getDoc(doc(asAdmin(), DAYS, dayId(ALICE))));
    assert.deepEqual(snapshot.data().reservations, dayWithReservations(ALICE).reservations);
  });
});

// A client that could settle or drop its own holds could stream replies the limit never
// sees, so reservations are as server-only as the counter. Every write below targets Alice's
// day; each succeeds with server credentials, so a denial comes from the rules alone.
describe('no client writes reservations', () => {
  const aliceDay = (db) => doc(db, DAYS, dayId(ALICE));
  const entryField = (id, ...field) => new FieldPath('reservations', id, ...field);

  // [what, the day stored before the write (none when null), the write]
  const forbiddenWrites = [
    ['creating a day with reservations', null,
      (db) => setDoc(aliceDay(db), dayWithReservations(ALICE))],
    ['adding reservations to a day that keeps none', day(ALICE),
      (db) => updateDoc(aliceDay(db), { reservations: { [NEW]: heldEntry() } })],
    ['adding a reservation entry', dayWithReservations(ALICE),
      (db) => updateDoc(aliceDay(db), entryField(NEW), heldEntry())],
    ['adding a reservation entry with a merge', dayWithReservations(ALICE),
      (db) => setDoc(aliceDay(db), { reservations: { [NEW]: heldEntry() } }, { merge: true })],
    ['releasing a held reservation', dayWithReservations(ALICE),
      (db) => updateDoc(aliceDay(db), entryField(HELD, 'status'), 'released',
        entryField(HELD, 'settledAt'), at('2024-01-15T14:31:00Z'))],
    ['committing a held reservation', dayWithReservations(ALICE),
      (db) => updateDoc(aliceDay(db), entryField(HELD, 'status'), 'committed',
        entryField(HELD, 'settledAt'), at('2024-01-15T14:31:00Z'),
        entryField(HELD, 'committedTokens'), 1)],
    ["lowering a held reservation's tokens", dayWithReservations(ALICE),
      (db) => updateDoc(aliceDay(db), entryField(HELD, 'tokens'), 1)],
    ["extending a held reservation's expiry", dayWithReservations(ALICE),
      (db) => updateDoc(aliceDay(db), entryField(HELD, 'expiresAt'), at('2024-01-16T14:35:00Z'))],
    ["lowering a committed reservation's committedTokens", dayWithReservations(ALICE),
      (db) => updateDoc(aliceDay(db), entryField(COMMITTED, 'committedTokens'), 1)],
    ['deleting a reservation entry', dayWithReservations(ALICE),
      (db) => updateDoc(aliceDay(db), entryField(HELD), deleteField())],
    ['emptying the reservations map', dayWithReservations(ALICE),
      (db) => updateDoc(aliceDay(db), { reservations: {} })],
    ['removing the reservations field', dayWithReservations(ALICE),
      (db) => updateDoc(aliceDay(db), { reservations: deleteField() })],
    ['overwriting the day without its reservations', dayWithReservations(ALICE),
      (db) => setDoc(aliceDay(db), day(ALICE))],
    ['deleting a day that keeps reservations', dayWithReservations(ALICE),
      (db) => deleteDoc(aliceDay(db))],
  ];

  const clients = [
    ['the owner', () => asUser(ALICE)],
    ['another user', () => asUser(BOB)],
    ['an admin', () => asAdmin()],
    ['an unauthenticated client', () => asAnonymous()],
  ];

  for (const [who, client] of clients) {
    for (const [what, stored, write] of forbiddenWrites) {
      test(`${who} is denied ${what}`, async () => {
        if (stored) {
          await seed(dayId(ALICE), stored);
        }
        await assertFails(write(client()));
      });
    }
  }

  for (const [what, stored, write] of forbiddenWrites) {
    test(`the service, with server credentials, succeeds at ${what}`, async () => {
      if (stored) {
        await seed(dayId(ALICE), stored);
      }
      await environment.asService((firestore) => assertSucceeds(write(firestore)));
    });
  }
});
