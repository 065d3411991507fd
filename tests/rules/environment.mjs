// Shared set-up for the rules tests: one test environment per file, loaded with the
// repository's firestore.rules, on the emulator that run-with-emulator.mjs started.

import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, beforeEach } from 'node:test';
import { initializeTestEnvironment } from '@firebase/rules-unit-testing';
import { Timestamp, doc, setDoc, setLogLevel } from 'firebase/firestore';

export const PROJECT_ID = 'demo-rules-test';

// The SDK warns on every denied request; the denial tests make hundreds on purpose, and a
// failing assertSucceeds still reports the denial in full.
setLogLevel('error');

const RULES_PATH = resolve(dirname(fileURLToPath(import.meta.url)), '../../firestore.rules');

// Registers the calling test file's hooks: one test environment for the file, emptied before
// every test. Each call of asUser/asAdmin/asAnonymous is a fresh context; asService and seed
// work with the rules disabled, as the service's server credentials do.
export function useTestEnvironment() {
  let testEnv;
  before(async () => {
    testEnv = await startTestEnvironment();
  });
  beforeEach(async () => {
    await testEnv.clearFirestore();
  });
  after(async () => {
    await testEnv?.cleanup();
  });
  const asUser = (uid, claims) => testEnv.authenticatedContext(uid, claims).firestore();
  const asService = (work) =>
    testEnv.withSecurityRulesDisabled((context) => work(context.firestore()));
  return {
    asUser,
    asAdmin: () => asUser(ADMIN, ADMIN_CLAIMS),
    asAnonymous: () => testEnv.unauthenticatedContext().firestore(),
    asService,
    seed: (collectionName, id, data) =>
      asService((firestore) => setDoc(doc(firestore, collectionName, id), data)),
  };
}

async function startTestEnvironment() {
  const emulatorHost = process.env.FIRESTORE_EMULATOR_HOST;
  if (!emulatorHost) {
    throw new Error('FIRESTORE_EMULATOR_HOST is not set: run these tests with `npm test`');
  }
  const [host, port] = emulatorHost.split(':');
  return initializeTestEnvironment({
    projectId: PROJECT_ID,
    firestore: { rules: readFileSync(RULES_PATH, 'utf8'), host, port: Number(port) },
  });
}

export const ALICE = 'alice';
export const BOB = 'bob';
export const ADMIN = 'dashboard';
export const ADMIN_CLAIMS = { admin: true };

export const DATE = '2024-01-15';

// A day document exactly as the service writes it.
export function day(userId, overrides = {}) {
  return {
    userId,
    date: DATE,
    tokensUsed: 1250,
    tokenLimit: 10000,
    userType: 'trial',
    lastUpdated: Timestamp.fromDate(new Date('2024-01-15T14:30:00Z')),
    resetAt: Timestamp.fromDate(new Date('2024-01-16T00:00:00Z')),
    ...overrides,
  };
}

export const dayId = (userId, date = DATE) => `${userId}_${date}`;

// A monthly aggregate exactly as the service writes it.
export function month(userId, overrides = {}) {
  return {
    userId,
    year: 2024,
    month: 1,
    dailyUsage: { '01': 850, '02': 1200, '03': 0, '04': 2100, '05': 1750 },
    totalMonthlyTokens: 5900,
    averageDailyUsage: 1180.5,
    peakUsageDate: '04',
    peakUsageTokens: 2100,
    userType: 'trial',
    createdAt: Timestamp.fromDate(new Date('2024-01-01T00:00:00Z')),
    updatedAt: Timestamp.fromDate(new Date('2024-01-05T23:59:59Z')),
    ...overrides,
  };
}

export const monthId = (userId, year = 2024, monthNumber = 1) =>
  `${userId}_${year}_${String(monthNumber).padStart(2, '0')}`;
