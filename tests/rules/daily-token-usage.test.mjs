// daily_token_usage: a user reads only their own days, an admin reads all, and no client
// writes at all (the service, with server credentials, is the only writer).

import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import { assertFails, assertSucceeds } from '@firebase/rules-unit-testing';
import {
  collection, deleteDoc, doc, getDoc, getDocs, orderBy, query, setDoc, updateDoc, where,
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
