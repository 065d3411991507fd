// The real binary, as `cargo build` (or `cargo test`) left it: the service on a free port with
// the embedded store in a folder of its own, and its other subcommands.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { freePort, start, waitUntilAnswering } from './processes.mjs';

const READY_TIMEOUT_MS = 30_000;

export function binary(root) {
  const path = join(root, 'target/debug/token-limits');
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: build it first (cargo build, or cargo test)`);
  }
  return path;
}

/** Only what the tests set: nothing from the caller's environment changes the service. */
function environment(dir, settings) {
  return {
    PATH: process.env.PATH,
    HOME: dir,
    LOG_FORMAT: 'text',
    SQLITE_PATH: join(dir, 'usage.db'),
    ...settings,
  };
}

/** Runs a subcommand (`import`, `dev-token`) to its end; its standard output. */
export function run(root, dir, args, settings) {
  mkdirSync(dir, { recursive: true });
  return execFileSync(binary(root), args, { env: environment(dir, settings), cwd: dir, encoding: 'utf8' });
}

/** Serves on a free loopback port until stopped; `settings` are environment variables. */
export async function startService(root, dir, settings) {
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const log = join(dir, 'service.log');
  const process_ = start(binary(root), [], {
    cwd: dir,
    log,
    env: environment(dir, { HOST: '127.0.0.1', PORT: String(port), ...settings }),
  });
  const base = `http://127.0.0.1:${port}`;
  await waitUntilAnswering(`${base}/readyz`, {
    timeoutMs: READY_TIMEOUT_MS,
    gone: process_.exited,
    describe: () => readFileSync(log, 'utf8'),
  });
  return { base, log, stop: process_.stop };
}

/** A client of the service's API with one bearer token. */
export function client(base, token) {
  const call = async (method, path, body) => {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const answer = await response.json();
    return { status: response.status, body: answer };
  };
  const expect = async (method, path, body, status = 200) => {
    const answer = await call(method, path, body);
    if (answer.status !== status) {
      throw new Error(`${method} ${path}: ${answer.status} ${JSON.stringify(answer.body)}`);
    }
    return answer.body;
  };
  return {
    call,
    get: (path) => expect('GET', path),
    post: (path, body) => expect('POST', path, body),
    put: (path, body) => expect('PUT', path, body),
    delete: (path) => expect('DELETE', path),
  };
}
