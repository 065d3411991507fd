//! `GET /usage/stream`: the usage object at once and after every change, on SQLite and across
//! instances on one Firestore; resumed without repeats; capped; ended by the drain and by its
//! own time limit, never by the request deadline.

use std::time::Duration;

use serde_json::{Value, json};

use crate::firestore::instances;
use crate::helpers::*;

/// The longest any wait for an event or for the end of a stream may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// One Server-Sent Event, as the stream sent it.
#[derive(Debug, Default)]
struct SseEvent {
    event: Option<String>,
    id: Option<String>,
    data: String,
    retry: Option<u64>,
}

/// An open event stream, read one event at a time.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
    /// The `retry:` hints received so far.
    retry_hints: Vec<u64>,
}

impl EventStream {
    async fn open(app: &TestApp, token: &str, path: &str, last_event_id: Option<&str>) -> Self {
        let response = open(app, token, path, last_event_id).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
            retry_hints: Vec::new(),
        }
    }

    /// The next event with a `data` field, or `None` once the service ended the stream;
    /// panics when none comes within [`PATIENCE`].
    async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let event = parse(&block);
                    self.retry_hints.extend(event.retry);
                    if event.event.is_some() {
                        return Some(event);
                    }
                    continue;
                }
                match self.response.chunk().await.unwrap() {
                    Some(chunk) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                    None => return None,
                }
            }
        })
        .await
        .expect("no event and no end within the patience")
    }

    /// The next usage event's id and usage object.
    async fn next_usage(&mut self) -> (String, Value) {
        let event = self.next().await.expect("the stream ended early");
        assert_eq!(event.event.as_deref(), Some("usage"));
        let data = serde_json::from_str(&event.data).unwrap();
        (event.id.expect("a usage event has an id"), data)
    }

    /// Waits for usage events until one shows `tokens_used`.
    async fn usage_until(&mut self, tokens_used: i64) -> Value {
        loop {
            let (_, usage) = self.next_usage().await;
            if usage["tokensUsed"] == tokens_used {
                return usage;
            }
        }
    }
}

fn parse(block: &str) -> SseEvent {
    let mut event = SseEvent::default();
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = Some(value.to_owned()),
            "id" => event.id = Some(value.to_owned()),
            "data" => event.data.push_str(value),
            "retry" => event.retry = Some(value.parse().unwrap()),
            _ => {}
        }
    }
    event
}

async fn open(
    app: &TestApp,
    token: &str,
    path: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut request = app.client.get(app.url(path)).bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    request.send().await.unwrap()
}

async fn record(app: &TestApp, uid: &str, tokens: i64) {
    let response = app
        .post_usage(&token(uid), json!({ "tokens": tokens }))
        .await;
    assert_eq!(response.status(), 200);
}

/// An event's `data` is the very object `GET /usage/today` answers.
fn same_usage(streamed: &Value, today: &Value) {
    assert_eq!(streamed, today, "the event differs from GET /usage/today");
}

#[tokio::test]
async fn the_first_event_is_the_standing_now_then_one_per_change() {
    let app = spawn_app().await;
    record(&app, "stream-first", 120).await;
    let mut stream = EventStream::open(&app, &token("stream-first"), "/usage/stream", None).await;
    let (first_id, first) = stream.next_usage().await;
    same_usage(&first, &app.today(&token("stream-first")).await);
    assert_eq!(first["tokensUsed"], 120);
    assert_eq!(
        stream.retry_hints,
        [1000],
        "the first event carries a retry hint"
    );

    record(&app, "stream-first", 30).await;
    let (second_id, second) = stream.next_usage().await;
    assert_eq!(second["tokensUsed"], 150);
    assert_ne!(second_id, first_id);
    same_usage(&second, &app.today(&token("stream-first")).await);

    // Another user's record does not disturb this one's stream.
    record(&app, "stream-other", 5).await;
    record(&app, "stream-first", 1).await;
    let (_, third) = stream.next_usage().await;
    assert_eq!(third["tokensUsed"], 151);
}

#[tokio::test]
async fn a_reconnect_with_the_last_id_is_not_sent_the_same_state_again() {
    let app = spawn_app().await;
    record(&app, "stream-resume", 10).await;
    let mut stream = EventStream::open(&app, &token("stream-resume"), "/usage/stream", None).await;
    let (id, _) = stream.next_usage().await;
    drop(stream);

    let mut resumed =
        EventStream::open(&app, &token("stream-resume"), "/usage/stream", Some(&id)).await;
    record(&app, "stream-resume", 5).await;
    // The first event after the resume is the change, not the state the client had.
    let (_, usage) = resumed.next_usage().await;
    assert_eq!(usage["tokensUsed"], 15);

    // An id of an older state is answered with the state now, at once.
    let mut stale =
        EventStream::open(&app, &token("stream-resume"), "/usage/stream", Some(&id)).await;
    let (_, usage) = stale.next_usage().await;
    assert_eq!(usage["tokensUsed"], 15);
}

#[tokio::test]
async fn only_an_admin_may_watch_another_user() {
    let app = spawn_app().await;
    let response = open(&app, &token("mallory"), "/usage/stream?userId=alice", None).await;
    assert_error(response, 403, "forbidden").await;
    let response = open(&app, &token("mallory"), "/usage/stream?userId=a/b", None).await;
    assert_error(response, 400, "invalid_user_id").await;

    record(&app, "stream-watched", 42).await;
    let path = "/usage/stream?userId=stream-watched";
    let mut stream = EventStream::open(&app, &admin_token("stream-admin"), path, None).await;
    let (_, usage) = stream.next_usage().await;
    assert_eq!(usage["userId"], "stream-watched");
    assert_eq!(usage["tokensUsed"], 42);
}

#[tokio::test]
async fn streams_beyond_the_cap_are_refused_until_one_ends() {
    let app = spawn_app_with(&["--max-streams=1", "--stream-heartbeat-secs=1"], |_| {}).await;
    let mut held = EventStream::open(&app, &token("stream-cap"), "/usage/stream", None).await;
    held.next_usage().await;
    let refused_before = metric_total(&scrape(&app).await, "token_limits_streams_refused_total");

    let response = open(&app, &token("stream-cap-2"), "/usage/stream", None).await;
    assert_error(response, 503, "unavailable").await;
    let metrics = scrape(&app).await;
    assert_eq!(
        metric_total(&metrics, "token_limits_streams_refused_total"),
        refused_before + 1.0
    );
    assert!(metric_total(&metrics, "token_limits_streams_open") >= 1.0);

    // The place comes back once the service sees the client gone (at a heartbeat at most).
    drop(held);
    let started = std::time::Instant::now();
    loop {
        let response = open(&app, &token("stream-cap-2"), "/usage/stream", None).await;
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(started.elapsed() < PATIENCE, "the place never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_drain_ends_open_streams() {
    let app = spawn_app().await;
    let mut stream = EventStream::open(&app, &token("stream-drain"), "/usage/stream", None).await;
    stream.next_usage().await;
    app.draining.start();
    assert!(
        stream.next().await.is_none(),
        "an event came instead of the end"
    );
}

#[tokio::test]
async fn a_stream_outlives_the_request_deadline_and_ends_at_its_own_limit() {
    let app = spawn_app_with(&["--request-timeout-secs=1", "--stream-max-secs=4"], |_| {}).await;
    let mut stream = EventStream::open(&app, &token("stream-long"), "/usage/stream", None).await;
    stream.next_usage().await;
    // Past the request deadline, the stream still carries changes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    record(&app, "stream-long", 9).await;
    assert_eq!(stream.usage_until(9).await["tokensUsed"], 9);
    // Then it ends by itself, for the client to reconnect.
    while let Some(event) = stream.next().await {
        assert_eq!(event.event.as_deref(), Some("usage"));
    }
}

#[tokio::test]
async fn a_record_on_one_instance_reaches_streams_on_the_others() {
    let apps = instances(3).await;
    let uid = "stream-shared";
    record(&apps[0], uid, 100).await;
    let mut on_b = EventStream::open(&apps[1], &token(uid), "/usage/stream", None).await;
    let mut on_c = EventStream::open(&apps[2], &token(uid), "/usage/stream", None).await;
    let mut also_on_c = EventStream::open(&apps[2], &token(uid), "/usage/stream", None).await;
    for stream in [&mut on_b, &mut on_c, &mut also_on_c] {
        assert_eq!(stream.next_usage().await.1["tokensUsed"], 100);
    }

    record(&apps[0], uid, 25).await;
    for stream in [&mut on_b, &mut on_c, &mut also_on_c] {
        let usage = stream.usage_until(125).await;
        same_usage(&usage, &apps[0].today(&token(uid)).await);
    }
    // A record on the instance streaming is seen too.
    record(&apps[2], uid, 5).await;
    assert_eq!(on_c.usage_until(130).await["tokensUsed"], 130);
    assert_eq!(on_b.usage_until(130).await["tokensUsed"], 130);
}
