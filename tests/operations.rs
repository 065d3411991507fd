//! The service as the ops team runs it: the real binary shut down by SIGTERM under load,
//! slow or idle clients, its Cloud Logging lines, its Prometheus metrics, and its threshold
//! events when an instance is killed while it delivers one.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/emulator.rs"]
mod emulator;
#[path = "support/webhook_receiver.rs"]
mod webhook_receiver;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use binary::{Server, client};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const PROJECT: &str = "token-limits-ops";
/// The bearer token `/metrics` asks for, as production has one.
const METRICS_TOKEN: &str = "ops-scraper";

/// A JWK endpoint serving the first test key, as Google's would.
fn serve_jwks() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let body = format!(
        r#"{{"keys":[{}]}}"#,
        include_str!("fixtures/test-key-1.jwk.json")
    );
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut request = [0; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                 Cache-Control: public, max-age=3600\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// An ID token for `uid`, signed by the first test key.
fn signed_token(uid: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": format!("https://securetoken.google.com/{PROJECT}"),
        "aud": PROJECT,
        "sub": uid,
        "iat": now - 10,
        "auth_time": now - 60,
        "exp": now + 3600,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".to_owned());
    let key = EncodingKey::from_rsa_pem(include_bytes!("fixtures/test-key-1.pem")).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// A signed-token service on the embedded store in `dir`, with `/metrics` for
/// [`METRICS_TOKEN`], and `environment` set too.
fn start(dir: &tempfile::TempDir, environment: &[(&str, &str)]) -> Server {
    let jwks = serve_jwks();
    let sqlite = dir.path().join("usage.db").display().to_string();
    let mut all = vec![
        ("SQLITE_PATH", sqlite.as_str()),
        ("FIREBASE_PROJECT_ID", PROJECT),
        ("FIREBASE_JWKS_URL", jwks.as_str()),
        ("METRICS_TOKEN", METRICS_TOKEN),
        ("RUST_LOG", "info"),
    ];
    all.extend_from_slice(environment);
    Server::start_with(&all)
}

fn post_usage(base: &str, token: &str, body: Value) -> reqwest::blocking::Response {
    client()
        .post(format!("{base}/usage"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap()
}

/// The request log lines among `lines`, as JSON.
fn request_logs(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["httpRequest"].is_object())
        .collect()
}

/// SIGTERM under load: readiness fails at once, every request the service took is answered,
/// every admitted token is stored, and the process exits 0 well inside Cloud Run's 10 s.
#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[("DAILY_LIMIT_TRIAL", "1000000000")]);
    let base = server.base.clone();
    let users: Vec<String> = (0..4).map(|i| format!("user-{i}")).collect();
    let tokens: Vec<String> = users.iter().map(|uid| signed_token(uid)).collect();

    // A request whose body is still arriving when SIGTERM comes: in flight for certain.
    let address = base.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&address).unwrap();
    let body = r#"{"tokens": 7}"#;
    write!(
        slow,
        "POST /usage HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        tokens[0],
        body.len(),
        &body[..5]
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(BTreeMap::<String, (u64, i64)>::new()));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (base, stop, answered) = (base.clone(), stop.clone(), answered.clone());
            let (uid, token) = (users[worker % 4].clone(), tokens[worker % 4].clone());
            std::thread::spawn(move || {
                // A new connection per request: after the shutdown begins, a request either
                // was taken and is answered, or finds no listener.
                let client = reqwest::blocking::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let sent = client
                        .post(format!("{base}/usage"))
                        .bearer_auth(&token)
                        .json(&json!({"tokens": 1}))
                        .send();
                    let Ok(response) = sent else { break };
                    assert_eq!(response.status(), 200, "a request in flight failed");
                    let mut answered = answered.lock().unwrap();
                    let entry = answered.entry(uid.clone()).or_default();
                    entry.0 += 1;
                    entry.1 += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    server.send_sigterm();
    std::thread::sleep(Duration::from_millis(200));
    write!(slow, "{}", &body[5..]).unwrap();
    let mut reply = String::new();
    slow.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.join().unwrap();
    }
    let (status, took, logs) = server.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{logs:#?}");
    assert!(took < Duration::from_secs(9), "exit took {took:?}");
    let said = |message: &str| logs.iter().any(|line| line.contains(message));
    assert!(
        said("SIGTERM received") && said("every request finished"),
        "{logs:#?}"
    );

    // Everything the service answered reached its client: no request it took was cut off.
    let served = request_logs(&logs)
        .iter()
        .filter(|entry| entry["httpRequest"]["requestUrl"] == "/usage")
        .count();
    let received: u64 = answered
        .lock()
        .unwrap()
        .values()
        .map(|(count, _)| count)
        .sum();
    assert_eq!(served as u64, received + 1, "the slow request counts too");
    assert!(received > 0);

    // Every admitted token is in the store.
    let server = start(&dir, &[]);
    for (uid, token) in users.iter().zip(&tokens) {
        let today: Value = client()
            .get(format!("{}/usage/today", server.base))
            .bearer_auth(token)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let admitted = answered
            .lock()
            .unwrap()
            .get(uid)
            .map_or(0, |(_, tokens)| *tokens);
        let slow_tokens = if uid == &users[0] { 7 } else { 0 };
        assert_eq!(today["tokensUsed"], admitted + slow_tokens, "{uid}");
    }
    server.stop();
}

/// SIGTERM with a usage event stream open: the stream ends at once, so that the drain does not
/// wait out its grace period for it, and the process exits 0.
#[test]
fn sigterm_ends_open_event_streams_within_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[("SHUTDOWN_GRACE_SECS", "60")]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "GET /usage/stream HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\r\n",
        signed_token("streaming-user")
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0; 1024];
    while !String::from_utf8_lossy(&received).contains("event: usage") {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "the stream closed before its first event");
        received.extend_from_slice(&buffer[..read]);
    }

    server.send_sigterm();
    let rest = read_until_closed(&mut stream, Duration::from_secs(20));
    assert!(rest.is_some(), "the stream was still open after SIGTERM");
    let (status, took, logs) = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{logs:#?}");
    assert!(
        logs.iter()
            .any(|line| line.contains("every request finished")),
        "the drain waited out its grace period: {took:?} {logs:#?}"
    );
}

/// Opens a connection and sends half a request head.
fn half_a_request(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(stream, "POST /usage HTTP/1.1\r\nHost: {address}\r\n").unwrap();
    stream
}

/// True when the service closed the connection.
fn closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let mut buffer = [0; 1024];
    match stream.read(&mut buffer) {
        Ok(0) => true,
        Ok(_) => true,
        Err(error) => !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Clients that never finish their request head are cut off after the header read timeout,
/// while other clients keep being answered.
#[test]
fn slow_clients_are_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[("HEADER_READ_TIMEOUT_SECS", "1")]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..300).map(|_| half_a_request(&address)).collect();
    for _ in 0..10 {
        let response = client()
            .get(format!("{}/healthz", server.base))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    while !slow.iter_mut().all(closed) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "slow connections still open after {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "cut off too early"
    );
    assert_eq!(
        client()
            .get(format!("{}/healthz", server.base))
            .send()
            .unwrap()
            .status(),
        200
    );
    server.stop();
}

/// A kept-alive connection left idle is closed after the same timeout: idle clients cannot
/// hold file descriptors either.
#[test]
fn idle_kept_alive_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[("HEADER_READ_TIMEOUT_SECS", "1")]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut idle = TcpStream::connect(&address).unwrap();
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut reply = [0; 1024];
    let read = idle.read(&mut reply).unwrap();
    assert!(String::from_utf8_lossy(&reply[..read]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    while !closed(&mut idle) {
        assert!(
            answered.elapsed() < Duration::from_secs(3),
            "an idle connection is still open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        answered.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    server.stop();
}

/// Reads what the service sends until it closes the connection; `None` when it is still open
/// after `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0; 1024];
    while started.elapsed() < within {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(received),
            Ok(read) => received.extend_from_slice(&buffer[..read]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(received),
        }
    }
    None
}

/// Only HTTP/1.1 is served: a client that connects and sends nothing, or speaks HTTP/2 with
/// prior knowledge and then waits, is cut off after the header read timeout like any slow
/// client, and never gets an HTTP/2 answer.
#[test]
fn silent_and_http2_connections_are_cut_off() {
    const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    /// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[("HEADER_READ_TIMEOUT_SECS", "1")]);
    let address = server.base.trim_start_matches("http://").to_owned();
    let openings = [
        ("nothing", Vec::new()),
        ("half the HTTP/2 preface", HTTP2_PREFACE[..16].to_vec()),
        (
            "the HTTP/2 preface and its settings",
            [HTTP2_PREFACE, EMPTY_SETTINGS].concat(),
        ),
    ];
    let mut connections: Vec<(&str, TcpStream)> = openings
        .iter()
        .map(|(sent, bytes)| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream.write_all(bytes).unwrap();
            (*sent, stream)
        })
        .collect();
    for (sent, stream) in &mut connections {
        let received = read_until_closed(stream, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("a connection that sent {sent} is still open"));
        assert!(
            received.is_empty() || received.starts_with(b"HTTP/1.1 "),
            "a connection that sent {sent} was answered {received:?}"
        );
    }
    server.stop();
}

/// No more connections are open at once than configured: the next client waits until one
/// closes, then is served.
#[test]
fn connections_beyond_the_cap_wait_for_a_free_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir,
        &[("MAX_CONNECTIONS", "4"), ("HEADER_READ_TIMEOUT_SECS", "2")],
    );
    let address = server.base.trim_start_matches("http://").to_owned();
    let _occupying: Vec<TcpStream> = (0..4).map(|_| half_a_request(&address)).collect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let response = client()
        .get(format!("{}/healthz", server.base))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "served at once, beyond the cap: {:?}",
        started.elapsed()
    );
    server.stop();
}

/// Each JSON line uses Cloud Logging's field names, and each request leaves one request log
/// with the trace it came with; no query string and no token are logged.
#[test]
fn logs_carry_cloud_loggings_fields_and_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]);
    let token = signed_token("alice");
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let response = client()
        .get(format!("{}/usage/history?months=2&secret=xyz", server.base))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .header("user-agent", "ops-test/1.0")
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    client()
        .get(format!("{}/usage/today", server.base))
        .bearer_auth(&token)
        .header(
            "x-cloud-trace-context",
            "105445aa7843bc8bf206b12000100000/255;o=1",
        )
        .send()
        .unwrap();
    let logs = server.stop();

    let entries = request_logs(&logs);
    let history = entries
        .iter()
        .find(|entry| entry["httpRequest"]["requestUrl"] == "/usage/history")
        .expect("no request log for /usage/history");
    assert_eq!(history["severity"], "INFO");
    assert_eq!(history["message"], "request");
    assert!(chrono::DateTime::parse_from_rfc3339(history["time"].as_str().unwrap()).is_ok());
    assert_eq!(
        history["logging.googleapis.com/trace"],
        format!("projects/{PROJECT}/traces/{trace}")
    );
    assert_eq!(history["logging.googleapis.com/spanId"], "b7ad6b7169203331");
    let request = &history["httpRequest"];
    assert_eq!(request["requestMethod"], "GET");
    assert_eq!(request["status"], 200);
    assert_eq!(request["userAgent"], "ops-test/1.0");
    assert_eq!(request["remoteIp"], "203.0.113.9");
    let latency = request["latency"].as_str().unwrap();
    assert!(
        latency.ends_with('s') && latency.trim_end_matches('s').parse::<f64>().is_ok(),
        "{latency}"
    );
    let today = entries
        .iter()
        .find(|entry| entry["httpRequest"]["requestUrl"] == "/usage/today")
        .expect("no request log for /usage/today");
    assert_eq!(
        today["logging.googleapis.com/trace"],
        format!("projects/{PROJECT}/traces/105445aa7843bc8bf206b12000100000")
    );
    assert_eq!(today["logging.googleapis.com/spanId"], "00000000000000ff");

    let payload = token.split('.').nth(1).unwrap();
    for line in &logs {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            entry["severity"].is_string() && entry["time"].is_string(),
            "{line}"
        );
        assert!(
            !line.contains("secret=xyz") && !line.contains(payload),
            "{line}"
        );
    }
}

/// The value of the series `name` whose labels include all of `labels`.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(label, value)| series_labels.contains(&format!("{label}=\"{value}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
}

/// Alerts read the decision and token series of every user type: a fresh instance serves
/// them at zero, before any request.
#[test]
fn every_user_types_series_start_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[]);
    let text = client()
        .get(format!("{}/metrics", server.base))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .unwrap()
        .text()
        .unwrap();
    server.stop();
    for user_type in ["trial", "subscribed"] {
        for outcome in ["admitted", "denied", "replayed", "key_reused"] {
            let labels = [("outcome", outcome), ("user_type", user_type)];
            let value = series(&text, "token_limits_decisions_total", &labels);
            assert_eq!(value, Some(0.0), "{labels:?}:\n{text}");
        }
        for decision in ["admitted", "denied"] {
            let labels = [("decision", decision), ("user_type", user_type)];
            let value = series(&text, "token_limits_tokens_total", &labels);
            assert_eq!(value, Some(0.0), "{labels:?}:\n{text}");
        }
    }
}

/// Every metric the README lists is served, and traffic moves the counters it should.
#[test]
fn metrics_count_what_the_service_did() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[("DAILY_LIMIT_TRIAL", "1000")]);
    let alice = signed_token("alice");
    let base = server.base.clone();
    for _ in 0..3 {
        assert_eq!(
            post_usage(&base, &alice, json!({"tokens": 100})).status(),
            200
        );
    }
    assert_eq!(
        post_usage(&base, &alice, json!({"tokens": 900})).status(),
        429
    );
    let keyed = |tokens: i64| {
        client()
            .post(format!("{base}/usage"))
            .bearer_auth(&alice)
            .header("Idempotency-Key", "k-1")
            .json(&json!({ "tokens": tokens }))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(keyed(50), 200);
    assert_eq!(keyed(50), 200);
    assert_eq!(keyed(51), 422);
    assert_eq!(
        client()
            .get(format!("{base}/nowhere"))
            .send()
            .unwrap()
            .status(),
        404
    );

    let response = client()
        .get(format!("{base}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().unwrap();
    server.stop();

    for name in [
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "http_requests_in_flight",
        "token_limits_decisions_total",
        "token_limits_tokens_total",
        "token_limits_admitted_tokens_by_hour_total",
        "token_limits_record_errors_total",
        "token_limits_active_users_today",
        "token_limits_tokens_today",
        "token_limits_store_operations_total",
        "token_limits_store_operation_duration_seconds_bucket",
        "token_limits_store_retries_total",
        "token_limits_store_lost_commit_answers_total",
        "token_limits_store_unknown_outcomes_total",
        "token_limits_firestore_rpcs_total",
        "token_limits_firestore_document_reads_total",
        "token_limits_firestore_document_writes_total",
        "token_limits_signing_key_fetches_total",
        "token_limits_stale_signing_key_uses_total",
        "token_limits_user_directory_lookups_total",
    ] {
        assert!(
            series(&text, name, &[]).is_some(),
            "{name} is not served:\n{text}"
        );
    }
    let value = |name: &str, labels: &[(&str, &str)]| {
        series(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}:\n{text}"))
    };
    let usage = [("route", "/usage"), ("method", "POST")];
    assert_eq!(
        value(
            "http_requests_total",
            &[usage[0], usage[1], ("status", "200")]
        ),
        5.0
    );
    assert_eq!(
        value("http_requests_total", &[usage[0], ("status", "429")]),
        1.0
    );
    assert_eq!(
        value("http_requests_total", &[usage[0], ("status", "422")]),
        1.0
    );
    assert_eq!(
        value(
            "http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(value("http_request_duration_seconds_count", &usage), 7.0);
    let trial = ("user_type", "trial");
    for (outcome, count) in [
        ("admitted", 4.0),
        ("denied", 1.0),
        ("replayed", 1.0),
        ("key_reused", 1.0),
    ] {
        assert_eq!(
            value(
                "token_limits_decisions_total",
                &[("outcome", outcome), trial]
            ),
            count,
            "{outcome}"
        );
    }
    assert_eq!(
        value(
            "token_limits_tokens_total",
            &[("decision", "admitted"), trial]
        ),
        350.0
    );
    assert_eq!(
        value(
            "token_limits_tokens_total",
            &[("decision", "denied"), trial]
        ),
        900.0
    );
    let by_hour: f64 = text
        .lines()
        .filter(|line| line.starts_with("token_limits_admitted_tokens_by_hour_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(by_hour, 350.0);
    assert_eq!(value("token_limits_active_users_today", &[trial]), 1.0);
    assert_eq!(value("token_limits_tokens_today", &[trial]), 350.0);
    assert_eq!(
        value(
            "token_limits_store_operations_total",
            &[
                ("store", "sqlite"),
                ("operation", "record"),
                ("result", "ok")
            ]
        ),
        7.0
    );
    assert!(
        value(
            "token_limits_signing_key_fetches_total",
            &[("result", "ok")]
        ) >= 1.0
    );
}

fn emulator() -> &'static emulator::Emulator {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap());
    runtime.block_on(emulator::shared())
}

/// However often `/metrics` is scraped, today's figures cost the store one query per user type
/// per interval: on Firestore, a burst of scrapes makes the calls of a single count.
#[test]
fn scrapes_count_todays_figures_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let host = emulator().host();
    let project = emulator::unique_project("scrapes");
    let server = start(
        &dir,
        &[
            ("STORE", "firestore"),
            ("FIRESTORE_EMULATOR_HOST", &host),
            ("GOOGLE_CLOUD_PROJECT", &project),
        ],
    );
    let alice = signed_token("alice");
    assert_eq!(
        post_usage(&server.base, &alice, json!({"tokens": 120})).status(),
        200
    );
    let scrape = || {
        let response = client()
            .get(format!("{}/metrics", server.base))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().unwrap()
    };
    let value = |text: &str, name: &str, labels: &[(&str, &str)]| {
        series(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}:\n{text}"))
    };
    let rpcs = "token_limits_firestore_rpcs_total";
    let summaries = [
        ("store", "firestore"),
        ("operation", "daily_summary"),
        ("result", "ok"),
    ];

    let first = scrape();
    assert_eq!(
        value(
            &first,
            "token_limits_tokens_today",
            &[("user_type", "trial")]
        ),
        120.0
    );
    for _ in 0..30 {
        scrape();
    }
    let last = scrape();
    server.stop();
    assert_eq!(
        value(&last, rpcs, &[]),
        value(&first, rpcs, &[]),
        "the scrapes after the first called Firestore"
    );
    assert_eq!(
        value(&last, "token_limits_store_operations_total", &summaries),
        1.0
    );
}

/// With `METRICS_TOKEN` set, `/metrics` is for that bearer token only.
#[test]
fn a_metrics_token_guards_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &[("METRICS_TOKEN", "s3cret-scraper")]);
    let url = format!("{}/metrics", server.base);
    assert_eq!(client().get(&url).send().unwrap().status(), 401);
    let wrong = client().get(&url).bearer_auth("guess").send().unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client()
        .get(&url)
        .bearer_auth("s3cret-scraper")
        .send()
        .unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.text().unwrap().contains("http_requests_total"));
    server.stop();
}

/// `METRICS_PUBLIC=true` says `/metrics` is meant to be open: served to anyone, no token.
#[test]
fn public_metrics_are_served_to_anyone() {
    let dir = tempfile::tempdir().unwrap();
    // An empty variable counts as unset: no token.
    let server = start(&dir, &[("METRICS_TOKEN", ""), ("METRICS_PUBLIC", "true")]);
    let response = client()
        .get(format!("{}/metrics", server.base))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .unwrap()
            .contains("token_limits_decisions_total")
    );
    server.stop();
}

/// `METRICS_ADDR` on loopback is what a scraper beside the service (Cloud Run's Prometheus
/// sidecar, which sends no token) reads: a production service starts with it and no token,
/// serves `/metrics` there and only there, and its own port answers `/metrics` with 404.
#[test]
fn metrics_on_a_loopback_address_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = emulator::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let server = start(
        &dir,
        &[
            ("METRICS_TOKEN", ""),
            ("METRICS_ADDR", metrics_addr.as_str()),
        ],
    );
    let scraped = client()
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .unwrap()
            .contains("token_limits_decisions_total")
    );
    let elsewhere = client()
        .get(format!("http://{metrics_addr}/usage/today"))
        .send()
        .unwrap();
    assert_eq!(elsewhere.status(), 404);
    let on_the_service_port = client()
        .get(format!("{}/metrics", server.base))
        .send()
        .unwrap();
    assert_eq!(on_the_service_port.status(), 404);
    server.stop();
}

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A JSON list the receiver serves at `path`.
fn receiver_list(receiver: &webhook_receiver::Receiver, path: &str) -> Vec<Value> {
    client()
        .get(receiver.url(path))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Waits until `ready` holds, for at most `patience`.
fn wait_for(what: &str, patience: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < patience,
            "{what}: not within {patience:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An instance is killed (SIGKILL) while it delivers the event its record raised: the entry
/// stays taken until its lease ends, then the next instance (on SQLite the same file restarted,
/// on Firestore another instance) delivers it, once, under the same id.
fn an_event_outlives_the_instance_delivering_it(environment: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let receiver = webhook_receiver::Receiver::start(WEBHOOK_SECRET);
    let hook = receiver.url("/hold-first");
    let mut all = vec![
        ("DAILY_LIMIT_TRIAL", "1000"),
        ("NOTIFY_THRESHOLDS", "0.8"),
        ("NOTIFY_WEBHOOK_URL", hook.as_str()),
        ("NOTIFY_WEBHOOK_SECRET", WEBHOOK_SECRET),
        // The lease: this and 10 s.
        ("NOTIFY_ATTEMPT_TIMEOUT", "5s"),
    ];
    all.extend_from_slice(environment);
    let first = start(&dir, &all);
    let uid = format!("killed-{}", std::process::id());
    assert_eq!(
        post_usage(&first.base, &signed_token(&uid), json!({"tokens": 900})).status(),
        200
    );
    let event_id = format!("{uid}_{}_daily-80", chrono::Utc::now().format("%Y-%m-%d"));
    wait_for(
        "the first delivery under way",
        Duration::from_secs(5),
        || !receiver_list(&receiver, "/held").is_empty(),
    );
    first.stop();
    assert_eq!(receiver_list(&receiver, "/held"), [json!(event_id)]);
    assert!(receiver_list(&receiver, "/received").is_empty());

    let _second = start(&dir, &all);
    // The lease (15 s), then the successor's next sweep (every 10 s).
    wait_for(
        "the delivery by the successor",
        Duration::from_secs(40),
        || !receiver_list(&receiver, "/received").is_empty(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let received = receiver_list(&receiver, "/received");
    assert_eq!(received.len(), 1, "delivered once: {received:?}");
    assert_eq!(received[0]["id"], event_id);
    assert_eq!(received[0]["type"], "usage.threshold_crossed");
}

#[test]
fn a_killed_instance_delivers_its_event_after_a_restart_on_sqlite() {
    an_event_outlives_the_instance_delivering_it(&[]);
}

#[test]
fn another_instance_delivers_a_killed_instances_event_on_firestore() {
    let host = emulator().host();
    let project = emulator::unique_project("killed");
    an_event_outlives_the_instance_delivering_it(&[
        ("STORE", "firestore"),
        ("FIRESTORE_EMULATOR_HOST", &host),
        ("GOOGLE_CLOUD_PROJECT", &project),
    ]);
}
