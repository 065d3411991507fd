// The real Firebase Auth emulator, from the install in tests/auth-emulator (as the Rust tests
// start it: tests/support/auth_emulator.rs), and its REST API for making users.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { freePort, start, waitUntilAnswering } from './processes.mjs';

/** Start-up is about 7 s of CPU, much longer on a busy machine. */
const READY_TIMEOUT_MS = 120_000;

/**
 * Starts an emulator whose default project is `project`: the one that the client SDK's calls,
 * which name no project, go to, and so the `aud` of the tokens it issues.
 */
export async function startAuthEmulator(root, dir, project) {
  const cli = join(root, 'tests/auth-emulator/node_modules/firebase-tools/lib/bin/firebase.js');
  if (!existsSync(cli)) {
    throw new Error(`the Firebase Auth emulator is not installed (${cli} is missing): run `
      + '`npm ci --no-audit --no-fund --ignore-scripts` in tests/auth-emulator');
  }
  mkdirSync(dir, { recursive: true });
  const [port, hubPort] = [await freePort(), await freePort()];
  const config = join(dir, 'firebase.json');
  // The hub takes a port of its own; the UI and the logging emulator stay off, so no fixed
  // port is used.
  writeFileSync(config, JSON.stringify({
    emulators: {
      singleProjectMode: false,
      ui: { enabled: false },
      hub: { host: '127.0.0.1', port: hubPort },
      auth: { host: '127.0.0.1', port },
    },
  }));
  const log = join(dir, 'emulator.log');
  const process_ = start('node', [cli, 'emulators:start', '--only', 'auth', '--project', project,
    '--config', config, '--non-interactive'], {
    cwd: dir,
    log,
    env: {
      PATH: process.env.PATH,
      HOME: dir,
      TMPDIR: dir,
      XDG_CONFIG_HOME: dir,
      NO_UPDATE_NOTIFIER: '1',
      START_LOGGING_EMULATOR: 'false',
    },
  });
  const host = `127.0.0.1:${port}`;
  await waitUntilAnswering(`http://${host}/`, {
    timeoutMs: READY_TIMEOUT_MS,
    gone: process_.exited,
    describe: () => readFileSync(log, 'utf8'),
  });
  return new AuthEmulator(host, process_);
}

class AuthEmulator {
  constructor(host, process_) {
    this.host = host;
    this.process = process_;
  }

  stop() {
    this.process.stop();
  }

  async #call(project, method, body) {
    const url = `http://${this.host}/identitytoolkit.googleapis.com/v1/projects/${project}/${method}`;
    const response = await fetch(url, {
      method: 'POST',
      headers: { Authorization: 'Bearer owner', 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(`${method} failed: ${JSON.stringify(answer)}`);
    return answer;
  }

  /** Creates a user of `project` with an email, a password and these custom claims. */
  async createUser(project, { uid, email, password, claims = {} }) {
    await this.#call(project, 'accounts', { localId: uid, email, password });
    await this.#call(project, 'accounts:update', { localId: uid, customAttributes: JSON.stringify(claims) });
  }

  /** An ID token of the user, signed in as the page would (email and password). */
  async idToken(apiKey, email, password) {
    const url = `http://${this.host}/identitytoolkit.googleapis.com/v1/accounts:signInWithPassword?key=${apiKey}`;
    const response = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ email, password, returnSecureToken: true }),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(`signing ${email} in failed: ${JSON.stringify(answer)}`);
    return answer.idToken;
  }
}
