// A user's usage as it changes: `GET /usage/stream` (Server-Sent Events) read through fetch,
// since EventSource cannot send the Authorization header the API needs. The stream ends by
// design (STREAM_MAX_SECS, an instance draining) and networks drop: each time it resumes with
// `Last-Event-ID` after the `retry` the server asked for, with a token renewed if it expired.

/** The wait before resuming when the server has named none. */
const DEFAULT_RETRY_MS = 1000;
/** The longest wait between two tries, however often they fail. */
const MAX_RETRY_MS = 30_000;

/**
 * Watches `userId`'s usage until `stop()`. `session()` is the current session
 * ({ token(forceRefresh), refreshable }, or null). Told: `onUsage(usage)` for each usage object;
 * `onState(state, detail)` with 'connecting', 'live', 'reconnecting' (detail: ms until the
 * next try), 'expired' (the sign-in could not be renewed) or 'refused' (detail: the API's
 * error message); the last two stop the watch. `origin` is the service's, when not the page's.
 */
export function watchUsage({ session, userId, onUsage, onState, origin = '' }) {
  const abort = new AbortController();
  let lastEventId = null;
  let retryMs = DEFAULT_RETRY_MS;
  let failures = 0;

  async function connect(forceRefresh) {
    const current = session();
    if (!current) return { end: 'expired' };
    let token;
    try {
      // The SDK hands out a fresh token when the last one expired or is about to.
      token = await current.token(forceRefresh);
    } catch {
      return { end: 'expired' };
    }
    const headers = { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' };
    if (lastEventId !== null) headers['Last-Event-ID'] = lastEventId;
    const response = await fetch(`${origin}/usage/stream?${new URLSearchParams({ userId })}`, {
      headers, cache: 'no-store', signal: abort.signal,
    });
    if (response.status === 401 && !forceRefresh && current.refreshable) {
      await response.body?.cancel();
      return connect(true);
    }
    if (response.status === 401) return { end: 'expired' };
    if (response.status === 400 || response.status === 403) {
      return { end: 'refused', detail: await messageOf(response) };
    }
    if (!response.ok) {
      await response.body?.cancel();
      return { again: true, failed: true };
    }
    onState('live');
    failures = 0;
    await readEvents(response.body, (event) => {
      if (event.id !== undefined) lastEventId = event.id;
      if (event.retry !== undefined) retryMs = event.retry;
      if (event.type === 'usage') onUsage(JSON.parse(event.data));
    });
    return { again: true, failed: false };
  }

  async function run() {
    onState('connecting');
    while (!abort.signal.aborted) {
      let outcome;
      try {
        outcome = await connect(false);
      } catch {
        if (abort.signal.aborted) return;
        // The network dropped, or the stream broke off mid-way: resume as after an end.
        outcome = { again: true, failed: true };
      }
      if (outcome.end) {
        onState(outcome.end, outcome.detail);
        return;
      }
      // A stream the server ended is resumed quietly: it ends so by design. Tries that keep
      // failing wait longer each time, up to a bound.
      if (outcome.failed) failures += 1;
      const wait = Math.min(MAX_RETRY_MS, retryMs * 2 ** Math.min(failures, 5));
      if (outcome.failed) onState('reconnecting', wait);
      await sleep(wait, abort.signal);
    }
  }

  run();
  return {
    stop: () => abort.abort(),
  };
}

/** The events of an SSE body, as the HTML standard's event-stream parsing reads them. */
export async function readEvents(body, dispatch) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  // A chunk that ended with \r: a \n opening the next one belongs to the same line break.
  let afterCarriageReturn = false;
  let event = { data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const text = afterCarriageReturn && value.startsWith('\n') ? value.slice(1) : value;
    afterCarriageReturn = text.endsWith('\r');
    buffer += text;
    const lines = buffer.split(/\r\n|\r|\n/);
    // The last piece is a line not yet whole.
    buffer = lines.pop();
    for (const line of lines) {
      if (line === '') {
        if (event.data.length > 0) {
          dispatch({ type: event.type ?? 'message', data: event.data.join('\n'), id: event.id, retry: event.retry });
        } else if (event.id !== undefined || event.retry !== undefined) {
          dispatch({ type: null, id: event.id, retry: event.retry });
        }
        event = { data: [] };
        continue;
      }
      // A comment: the heartbeat that keeps proxies from closing an idle stream.
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const name = colon < 0 ? line : line.slice(0, colon);
      const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (name === 'data') event.data.push(text);
      else if (name === 'event') event.type = text;
      else if (name === 'id' && !text.includes('\0')) event.id = text;
      else if (name === 'retry' && /^\d+$/.test(text)) event.retry = Number(text);
    }
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

async function messageOf(response) {
  try {
    return (await response.json()).error?.message ?? `${response.status}`;
  } catch {
    return `the service answered ${response.status}`;
  }
}
