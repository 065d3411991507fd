// Processes the tests start: each in a process group of its own under a small shell watchdog
// that ends it once the test process is gone, so that nothing outlives the run even when the
// runner is killed. Free ports, and waiting for an address to answer.

import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/** `$1` the log file, `$2` the test process; then the command and its arguments. */
const WATCHDOG = `
log="$1"; parent="$2"; shift 2
"$@" </dev/null >>"$log" 2>&1 &
child=$!
trap 'kill -9 "$child" 2>/dev/null; exit 0' TERM
while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 1; done
kill -9 "$child" 2>/dev/null
`;

/** A port nothing listens on now. */
export async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Starts `command` with `args` and exactly the environment `env`, its output appended to
 * `log`. Returns { stop(), exited() }: `exited()` is true once the watchdog (and so the
 * command) has ended.
 */
export function start(command, args, { env, cwd, log }) {
  const out = openSync(log, 'a');
  const watchdog = spawn('sh', ['-c', WATCHDOG, 'watchdog', log, String(process.pid), command, ...args], {
    env, cwd, detached: true, stdio: ['ignore', out, out],
  });
  let ended = false;
  watchdog.on('exit', () => { ended = true; });
  const stop = () => {
    if (ended) return;
    try {
      process.kill(-watchdog.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };
  process.on('exit', stop);
  return { stop, exited: () => ended };
}

/** Waits until `url` answers 2xx, failing with `describe()` when `gone()` or at `timeoutMs`. */
export async function waitUntilAnswering(url, { timeoutMs, gone, describe }) {
  const started = Date.now();
  for (;;) {
    try {
      const response = await fetch(url);
      if (response.ok) return;
    } catch {
      // Not listening yet.
    }
    if (gone()) throw new Error(`it exited before answering ${url}:\n${describe()}`);
    if (Date.now() - started > timeoutMs) {
      throw new Error(`${url} did not answer within ${timeoutMs / 1000} s:\n${describe()}`);
    }
    await sleep(100);
  }
}
