// The dashboard's usage stream client (dashboard/js/live.js) in Node, against a small server
// that plays the service's part: events cut anywhere, a stream the server ends, a refused token,
// and a watch stopped by the page.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { describe, it } from 'node:test';

import { readEvents, watchUsage } from '../../dashboard/js/live.js';

/** A body that arrives in exactly these chunks. */
function bodyOf(chunks) {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
      controller.close();
    },
  });
}

async function eventsOf(chunks) {
  const events = [];
  await readEvents(bodyOf(chunks), (event) => events.push(event));
  return events;
}

describe('the event-stream reader', () => {
  it('reads events cut at any point, with their ids and retry, and skips heartbeats', async () => {
    const text = ': keep-alive\r\nretry: 1500\r\nid: a1\r\nevent: usage\r\ndata: {"tokensUsed":1}\r\n\r\n'
      + ':\n\nevent: usage\ndata: {"tokensUsed":\ndata: 2}\nid: b2\n\n';
    const whole = await eventsOf([text]);
    assert.deepEqual(whole, [
      { type: 'usage', data: '{"tokensUsed":1}', id: 'a1', retry: 1500 },
      { type: 'usage', data: '{"tokensUsed":\n2}', id: 'b2', retry: undefined },
    ]);
    for (let cut = 1; cut < text.length; cut++) {
      assert.deepEqual(await eventsOf([text.slice(0, cut), text.slice(cut)]), whole, `cut at ${cut}`);
    }
  });

  it('drops an event left unfinished when the stream ends', async () => {
    assert.deepEqual(await eventsOf(['event: usage\ndata: {}\n']), []);
  });
});

describe('watching a user’s usage', () => {
  it('resumes an ended stream with Last-Event-ID, renews a refused token, and closes when stopped', { timeout: 10_000 }, async () => {
    const seen = [];
    let streamClosed;
    const closed = new Promise((resolve) => { streamClosed = resolve; });
    const server = createServer((request, response) => {
      seen.push({ auth: request.headers.authorization, lastEventId: request.headers['last-event-id'] });
      if (request.headers.authorization !== 'Bearer fresh') {
        if (seen.length === 1) {
          // The first stream: one event, then the server ends it, as STREAM_MAX_SECS does.
          response.writeHead(200, { 'Content-Type': 'text/event-stream' });
          response.end('retry: 10\nid: day-1\nevent: usage\ndata: {"tokensUsed":100}\n\n');
        } else {
          // The token has expired meanwhile.
          response.writeHead(401, { 'Content-Type': 'application/json' });
          response.end('{"error":{"code":"unauthenticated","message":"expired"}}');
        }
        return;
      }
      response.writeHead(200, { 'Content-Type': 'text/event-stream' });
      response.write('id: day-2\nevent: usage\ndata: {"tokensUsed":250}\n\n');
      response.socket.on('close', streamClosed);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');

    const usages = [];
    const states = [];
    const refreshes = [];
    let delivered;
    const second = new Promise((resolve) => { delivered = resolve; });
    const watch = watchUsage({
      origin: `http://127.0.0.1:${server.address().port}`,
      userId: 'user-02',
      session: () => ({
        refreshable: true,
        token: async (forceRefresh) => {
          refreshes.push(forceRefresh);
          return forceRefresh ? 'fresh' : 'stale';
        },
      }),
      onUsage: (usage) => {
        usages.push(usage.tokensUsed);
        if (usages.length === 2) delivered();
      },
      onState: (state) => states.push(state),
    });
    await second;
    assert.deepEqual(usages, [100, 250]);
    assert.deepEqual(seen, [
      { auth: 'Bearer stale', lastEventId: undefined },
      { auth: 'Bearer stale', lastEventId: 'day-1' },
      { auth: 'Bearer fresh', lastEventId: 'day-1' },
    ]);
    assert.deepEqual(refreshes, [false, false, true]);
    // A stream ended by the server is resumed without a word of it to the reader.
    assert.deepEqual(states, ['connecting', 'live', 'live']);

    // Stopping closes the open stream's connection (else this waits until the test times out).
    watch.stop();
    await closed;
    server.close();
  });
});
