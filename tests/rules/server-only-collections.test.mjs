// Every collection but the two usage collections is the service's alone: no client, not even an
// admin, reads or writes it: the idempotency records, the per-user limit overrides and the
// audit trail (admins change overrides through the service's API, which audits them).

import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import { assertFails, assertSucceeds } from '@firebase/rules-unit-testing';
import {
  Timestamp, collection, deleteDoc, doc, getDoc, getDocs, query, setDoc, where,
} from 'firebase/firestore';
import { ADMIN, ADMIN_CLAIMS, ALICE, DATE, day, dayId, useTestEnvironment } from './environment.mjs';

const IDEMPOTENCY_KEYS = 'idempotency_keys';
// `{userId}_k{hex of the key}`; the key here is "message-42".
const ALICE_KEY_ID = `${ALICE}_k${Buffer.from('message-42').toString('hex')}`;

const environment = useTestEnvironment();
const { asUser, asAdmin, asAnonymous } = environment;

function idempotencyRecord(userId) {
  return {
    userId,
    key: 'message-42',
    fingerprint: `tokens=500;userId=${userId}`,
    response: day(userId),
    createdAt: Timestamp.fromDate(new Date('2024-01-15T14:30:00Z')),
    expiresAt: Timestamp.fromDate(new Date('2024-01-16T14:30:00Z')),
  };
}

const { seed } = environment;

describe('idempotency records', () => {
  beforeEach(async () => {
    await seed(IDEMPOTENCY_KEYS, ALICE_KEY_ID, idempotencyRecord(ALICE));
  });

  test('the service, with server credentials, reads a record', async () => {
    await environment.asService(async (firestore) => {
      const record = doc(firestore, IDEMPOTENCY_KEYS, ALICE_KEY_ID);
      const snapshot = await assertSucceeds(getDoc(record));
      assert.equal(snapshot.data().userId, ALICE);
    });
  });

  test('the user the record belongs to cannot read it', async () => {
    await assertFails(getDoc(doc(asUser(ALICE), IDEMPOTENCY_KEYS, ALICE_KEY_ID)));
  });

  test('the user the record belongs to cannot list their records', async () => {
    const records = collection(asUser(ALICE), IDEMPOTENCY_KEYS);
    await assertFails(getDocs(query(records, where('userId', '==', ALICE))));
  });

  test('the user the record belongs to cannot write or delete it', async () => {
    const record = doc(asUser(ALICE), IDEMPOTENCY_KEYS, ALICE_KEY_ID);
    await assertFails(setDoc(record, idempotencyRecord(ALICE)));
    await assertFails(deleteDoc(record));
  });

  test('an admin cannot read, list or write records', async () => {
    const db = asAdmin();
    await assertFails(getDoc(doc(db, IDEMPOTENCY_KEYS, ALICE_KEY_ID)));
    await assertFails(getDocs(collection(db, IDEMPOTENCY_KEYS)));
    await assertFails(setDoc(doc(db, IDEMPOTENCY_KEYS, ALICE_KEY_ID), idempotencyRecord(ALICE)));
  });

  test('an unauthenticated client cannot read a record', async () => {
    await assertFails(getDoc(doc(asAnonymous(), IDEMPOTENCY_KEYS, ALICE_KEY_ID)));
  });
});

const OVERRIDES = 'token_limit_overrides';
const AUDIT = 'token_limit_audit';
const AUDIT_ID = '001768903200000-0123456789ab';
const OUTBOX = 'notification_outbox';
const EVENT_ID = 'alice_2024-01-15_daily-0.8';

function limitOverride(userId) {
  return {
    userId,
    dailyLimit: 1000000,
    expiresAt: Timestamp.fromDate(new Date('2030-01-01T00:00:00Z')),
    reason: 'support ticket 7',
    setBy: ADMIN,
    setAt: Timestamp.fromDate(new Date('2024-01-15T14:30:00Z')),
  };
}

function auditEntry(userId) {
  return {
    at: Timestamp.fromDate(new Date('2024-01-15T14:30:00Z')),
    actor: ADMIN,
    action: 'override_set',
    userId,
    after: JSON.stringify({ dailyLimit: 1000000 }),
    reason: 'support ticket 7',
  };
}

function outboxEntry(userId) {
  return {
    eventType: 'usage.threshold_crossed',
    userId,
    payload: JSON.stringify({ type: 'usage.threshold_crossed', data: { userId } }),
    status: 'pending',
    attempts: 0,
    createdAt: Timestamp.fromDate(new Date('2024-01-15T14:30:00Z')),
    nextAttemptAt: Timestamp.fromDate(new Date('2024-01-15T14:30:00Z')),
  };
}

for (const [name, collectionName, id, make] of [
  ['limit overrides', OVERRIDES, ALICE, limitOverride],
  ['audit entries', AUDIT, AUDIT_ID, auditEntry],
  ['notification outbox entries', OUTBOX, EVENT_ID, outboxEntry],
]) {
  describe(name, () => {
    beforeEach(async () => {
      await seed(collectionName, id, make(ALICE));
    });

    test('the service, with server credentials, reads one', async () => {
      await environment.asService(async (firestore) => {
        const snapshot = await assertSucceeds(getDoc(doc(firestore, collectionName, id)));
        assert.equal(snapshot.data().userId, ALICE);
      });
    });

    test('the user it is about cannot read, list, write or delete it', async () => {
      const db = asUser(ALICE);
      await assertFails(getDoc(doc(db, collectionName, id)));
      await assertFails(getDocs(query(collection(db, collectionName), where('userId', '==', ALICE))));
      await assertFails(setDoc(doc(db, collectionName, id), make(ALICE)));
      await assertFails(deleteDoc(doc(db, collectionName, id)));
    });

    test('an admin cannot read, list, write or delete it either', async () => {
      const db = asAdmin();
      await assertFails(getDoc(doc(db, collectionName, id)));
      await assertFails(getDocs(collection(db, collectionName)));
      await assertFails(setDoc(doc(db, collectionName, id), make(ALICE)));
      await assertFails(setDoc(doc(db, collectionName, 'new-one'), make(ALICE)));
      await assertFails(deleteDoc(doc(db, collectionName, id)));
    });

    test('an unauthenticated client cannot read it', async () => {
      await assertFails(getDoc(doc(asAnonymous(), collectionName, id)));
    });
  });
}

describe('any other path', () => {
  test('a collection the rules do not name is closed to users and admins', async () => {
    await seed('users', ALICE, { userId: ALICE });
    await assertFails(getDoc(doc(asUser(ALICE), 'users', ALICE)));
    await assertFails(getDoc(doc(asAdmin(), 'users', ALICE)));
    await assertFails(setDoc(doc(asAdmin(), 'users', ALICE), { userId: ALICE }));
  });

  test("a subcollection under a user's own day is closed to them", async () => {
    const eventPath = [dayId(ALICE), 'events', 'first'];
    await seed('daily_token_usage', dayId(ALICE), day(ALICE));
    await environment.asService((firestore) => setDoc(
      doc(firestore, 'daily_token_usage', ...eventPath), { userId: ALICE, date: DATE }));
    await assertFails(getDoc(doc(asUser(ALICE), 'daily_token_usage', ...eventPath)));
    await assertFails(setDoc(doc(asUser(ALICE), 'daily_token_usage', ...eventPath),
      { userId: ALICE, date: DATE }));
  });
});
