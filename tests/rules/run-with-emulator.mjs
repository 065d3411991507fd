// Runs the rules tests against a Firestore emulator of their own: starts the emulator's JVM on
// a free port with the repository's firestore.rules, checks that the rules compiled, runs every
// *.test.mjs with `node --test`, and stops the JVM whatever happens. A missing emulator or Java
// is a failure, never a skip.
//
// The emulator jar is found through the Google Cloud CLI (its SDK root); set
// FIRESTORE_EMULATOR_JAR to use another one.

import { execFileSync, spawn } from 'node:child_process';
import {
  closeSync, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PROJECT_ID } from './environment.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const RULES_PATH = resolve(HERE, '../../firestore.rules');
const EMULATOR_MAIN_CLASS = 'com.google.cloud.datastore.emulator.firestore.CloudFirestore';
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 5_000;

function fail(message) {
  console.error(`rules tests: ${message}`);
  process.exit(1);
}

function emulatorJar() {
  if (process.env.FIRESTORE_EMULATOR_JAR) {
    return process.env.FIRESTORE_EMULATOR_JAR;
  }
  let sdkRoot;
  try {
    sdkRoot = execFileSync('gcloud', ['info', '--format=value(installation.sdk_root)'], {
      encoding: 'utf8',
    }).trim();
  } catch (error) {
    fail(`cannot ask the Google Cloud CLI where its SDK is (${error.message}); install it and ` +
      `its cloud-firestore-emulator component, or set FIRESTORE_EMULATOR_JAR`);
  }
  return join(sdkRoot, 'platform', 'cloud-firestore-emulator', 'cloud-firestore-emulator.jar');
}

function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

const sleep = (ms) => new Promise((wake) => setTimeout(wake, ms));

function tail(path) {
  return readFileSync(path, 'utf8').split('\n').slice(-40).join('\n');
}

// Resolves once the emulator answers `GET /` with 200; rejects if the JVM exits first or the
// emulator is not up in time.
async function waitUntilReady(emulator, baseUrl, logPath) {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (emulator.exitCode !== null || emulator.signalCode !== null) {
      throw new Error(`the emulator exited before it was ready:\n${tail(logPath)}`);
    }
    try {
      const response = await fetch(`${baseUrl}/`);
      if (response.status === 200) {
        return;
      }
    } catch {
      // Not listening yet.
    }
    await sleep(200);
  }
  throw new Error(`the emulator did not answer within ${START_TIMEOUT_MS} ms:\n${tail(logPath)}`);
}

// The emulator starts even when the rules do not compile, and then refuses every request;
// its rules endpoint lists the compile issues.
async function assertRulesCompiled(baseUrl) {
  const response = await fetch(`${baseUrl}/emulator/v1/projects/${PROJECT_ID}:securityRules`);
  if (!response.ok) {
    throw new Error(`cannot read the loaded rules: HTTP ${response.status}`);
  }
  const loaded = await response.json();
  if (loaded.issues?.length) {
    const issues = loaded.issues.map((issue) => {
      const at = issue.sourcePosition ?? {};
      return `  ${at.line}:${at.column} ${issue.severity} ${issue.description}`;
    });
    throw new Error(`the emulator reports issues in firestore.rules:\n${issues.join('\n')}`);
  }
  if (!loaded.rules?.files?.[0]?.content?.includes('rules_version')) {
    throw new Error('the emulator reports no rules loaded from firestore.rules');
  }
}

function stop(emulator) {
  return new Promise((stopped) => {
    const neverStarted = emulator.pid === undefined;
    if (neverStarted || emulator.exitCode !== null || emulator.signalCode !== null) {
      stopped();
      return;
    }
    const forceKill = setTimeout(() => emulator.kill('SIGKILL'), STOP_TIMEOUT_MS);
    emulator.once('exit', () => {
      clearTimeout(forceKill);
      stopped();
    });
    emulator.kill('SIGTERM');
  });
}

let testRunner;

function runTests(emulatorHost) {
  const testFiles = readdirSync(HERE).filter((name) => name.endsWith('.test.mjs')).sort();
  if (testFiles.length === 0) {
    throw new Error(`no *.test.mjs files in ${HERE}`);
  }
  // One file at a time: every file clears the same emulator project between its tests.
  testRunner = spawn(process.execPath, ['--test', '--test-concurrency=1', ...testFiles], {
    cwd: HERE,
    stdio: 'inherit',
    env: { ...process.env, FIRESTORE_EMULATOR_HOST: emulatorHost },
  });
  return new Promise((finished) => {
    testRunner.on('exit', (code, signal) => finished(code ?? (signal ? 1 : 0)));
  });
}

async function main() {
  if (!existsSync(RULES_PATH)) {
    fail(`no rules file at ${RULES_PATH}`);
  }
  const jar = emulatorJar();
  if (!existsSync(jar)) {
    fail(`no Firestore emulator at ${jar}; install it with ` +
      '`gcloud components install cloud-firestore-emulator` (or the ' +
      'google-cloud-cli-firestore-emulator package), or set FIRESTORE_EMULATOR_JAR');
  }

  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const baseUrl = `http://${host}`;
  const logDir = mkdtempSync(join(tmpdir(), 'firestore-rules-emulator-'));
  const logPath = join(logDir, 'emulator.log');
  const log = openSync(logPath, 'w');

  // Java itself, not the SDK's wrapper script: the wrapper does not exec java, so ending it
  // would leave the JVM running.
  const emulator = spawn('java', [
    '-Xmx256m', '-Duser.language=en', '-cp', jar, EMULATOR_MAIN_CLASS,
    '--host', '127.0.0.1', '--port', String(port), '--rules', RULES_PATH,
  ], { stdio: ['ignore', log, log] });
  const spawnFailed = new Promise((_, reject) => emulator.once('error', (error) => {
    reject(new Error(`cannot start Java for the emulator: ${error.message}`));
  }));
  spawnFailed.catch(() => {}); // Reported through the race below; never unhandled.

  const stopOnSignal = (signal) => {
    testRunner?.kill(signal);
    emulator.kill('SIGKILL');
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', stopOnSignal);
  process.once('SIGTERM', stopOnSignal);
  // Last resort if this process dies in an unexpected way: never leave the JVM behind.
  process.once('exit', () => emulator.kill('SIGKILL'));

  let exitCode = 1;
  try {
    await Promise.race([waitUntilReady(emulator, baseUrl, logPath), spawnFailed]);
    await assertRulesCompiled(baseUrl);
    console.log(`rules tests: Firestore emulator on ${host} with ${RULES_PATH}`);
    exitCode = await runTests(host);
  } catch (error) {
    console.error(`rules tests: ${error.message}`);
  } finally {
    await stop(emulator);
    closeSync(log);
    rmSync(logDir, { recursive: true, force: true });
  }
  process.exit(exitCode);
}

await main();
