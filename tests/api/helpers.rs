//! A real service on a real port, a real JWK endpoint, and real RS256 tokens.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tempfile::TempDir;
use token_limits::app::Application;
use token_limits::config::{Cli, Command, Config};
use token_limits::usage::{Clock, SystemClock};

pub const PROJECT: &str = "token-limits-test";
pub const KEY_1: TestKey = TestKey {
    kid: "test-key-1",
    private_pem: include_str!("../fixtures/test-key-1.pem"),
    jwk: include_str!("../fixtures/test-key-1.jwk.json"),
};
pub const KEY_2: TestKey = TestKey {
    kid: "test-key-2",
    private_pem: include_str!("../fixtures/test-key-2.pem"),
    jwk: include_str!("../fixtures/test-key-2.jwk.json"),
};

#[derive(Clone, Copy)]
pub struct TestKey {
    pub kid: &'static str,
    pub private_pem: &'static str,
    pub jwk: &'static str,
}

impl TestKey {
    pub fn jwk_value(&self) -> Value {
        serde_json::from_str(self.jwk).unwrap()
    }

    /// Signs `claims` with this key, naming `kid` in the header.
    pub fn sign_as(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        let key = EncodingKey::from_rsa_pem(self.private_pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(Some(self.kid), claims)
    }
}

pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Valid ID token claims for `uid`, as Firebase Auth issues them.
pub fn claims(uid: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": format!("https://securetoken.google.com/{PROJECT}"),
        "aud": PROJECT,
        "sub": uid,
        "user_id": uid,
        "iat": now - 10,
        "auth_time": now - 60,
        "exp": now + 3600,
        "firebase": {"sign_in_provider": "password", "identities": {}},
    })
}

pub fn token(uid: &str) -> String {
    KEY_1.sign(&claims(uid))
}

pub fn token_with(uid: &str, extra: Value) -> String {
    let mut claims = claims(uid);
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    KEY_1.sign(&claims)
}

pub fn admin_token(uid: &str) -> String {
    token_with(uid, json!({"admin": true}))
}

/// A local JWK endpoint that counts its fetches and can rotate keys, change its
/// `Cache-Control` max-age, fail, or answer slowly.
#[derive(Clone)]
pub struct JwksServer {
    pub url: String,
    state: Arc<JwksState>,
}

struct JwksState {
    keys: RwLock<Vec<TestKey>>,
    fetches: AtomicUsize,
    max_age_secs: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
    delay_ms: AtomicU64,
}

impl JwksServer {
    pub async fn start(keys: &[TestKey]) -> Self {
        let state = Arc::new(JwksState {
            keys: RwLock::new(keys.to_vec()),
            fetches: AtomicUsize::new(0),
            max_age_secs: AtomicU64::new(3600),
            failing: Default::default(),
            delay_ms: AtomicU64::new(0),
        });
        let served = state.clone();
        let app = Router::new().route(
            "/jwks",
            get(move || {
                let state = served.clone();
                async move {
                    state.fetches.fetch_add(1, Ordering::SeqCst);
                    let delay = state.delay_ms.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    if state.failing.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    let keys: Vec<Value> = state
                        .keys
                        .read()
                        .unwrap()
                        .iter()
                        .map(TestKey::jwk_value)
                        .collect();
                    let max_age = state.max_age_secs.load(Ordering::SeqCst);
                    (
                        [(
                            header::CACHE_CONTROL,
                            format!("public, max-age={max_age}, must-revalidate"),
                        )],
                        axum::Json(json!({"keys": keys})),
                    )
                        .into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    pub fn serve(&self, keys: &[TestKey]) {
        *self.state.keys.write().unwrap() = keys.to_vec();
    }

    pub fn set_max_age(&self, secs: u64) {
        self.state.max_age_secs.store(secs, Ordering::SeqCst);
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

/// The configuration the tests start from: loopback, port 0, a fresh SQLite file, our JWKs,
/// and `/metrics` open to the tests that scrape it.
pub fn test_config(jwks_url: &str, sqlite_path: &std::path::Path, extra: &[&str]) -> Config {
    let mut args = vec![
        "token-limits".to_owned(),
        "serve".to_owned(),
        "--host=127.0.0.1".to_owned(),
        "--port=0".to_owned(),
        format!("--sqlite-path={}", sqlite_path.display()),
        format!("--firebase-project-id={PROJECT}"),
        format!("--firebase-jwks-url={jwks_url}"),
        "--metrics-public=true".to_owned(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    match Cli::try_parse_args(args).unwrap().command {
        Some(Command::Serve(config)) => *config,
        _ => unreachable!("serve was asked for"),
    }
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub jwks: JwksServer,
    /// The embedded store's file (unused on Firestore).
    pub sqlite_path: std::path::PathBuf,
    /// What a shutdown signal sets.
    pub draining: Arc<token_limits::server::Draining>,
    _dir: TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[], |_| {}).await
}

/// Starts the service with extra flags and a last chance to adjust its configuration.
pub async fn spawn_app_with(extra: &[&str], adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(JwksServer::start(&[KEY_1]).await, extra, adjust).await
}

/// Starts the service against a JWK endpoint prepared by the test.
pub async fn spawn_app_on(
    jwks: JwksServer,
    extra: &[&str],
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    spawn_app_timed(jwks, extra, adjust, Arc::new(SystemClock)).await
}

/// A clock the test sets and moves: the service's time, not the tokens' (they are checked
/// against the real time, so that they stay valid).
pub struct TestClock(Mutex<chrono::DateTime<chrono::Utc>>);

impl TestClock {
    pub fn at(rfc3339: &str) -> Arc<Self> {
        let at = chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .to_utc();
        Arc::new(Self(Mutex::new(at)))
    }

    pub fn set(&self, rfc3339: &str) {
        *self.0.lock().unwrap() = chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .to_utc();
    }

    pub fn advance(&self, by: chrono::Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        *self.0.lock().unwrap()
    }
}

/// Starts the service reading the time from `clock`.
pub async fn spawn_app_timed(
    jwks: JwksServer,
    extra: &[&str],
    adjust: impl FnOnce(&mut Config),
    clock: Arc<dyn Clock>,
) -> TestApp {
    // The service's logs, shown with a failing test's output (`RUST_LOG` filters them).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let sqlite_path = dir.path().join("usage.db");
    let mut config = test_config(&jwks.url, &sqlite_path, extra);
    // Users acted for are looked up in the real Auth emulator; tokens are still signed.
    config.auth_emulator_for_lookups = Some(crate::auth_emulator::shared().await.host());
    adjust(&mut config);
    let app = Application::build_with_clock(config, clock).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let draining = app.draining();
    tokio::spawn(app.run_until(std::future::pending()));
    TestApp {
        base,
        client: reqwest::Client::new(),
        jwks,
        sqlite_path,
        draining,
        _dir: dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_usage(&self, token: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/usage"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_usage_keyed(&self, token: &str, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/usage"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, token: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// The caller's usage object for today.
    pub async fn today(&self, token: &str) -> Value {
        let response = self.get(token, "/usage/today").await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// `POST /usage` whose headers go at once and whose body `body_after` later, as a slow
    /// client sends it; the status and the JSON body of the answer.
    pub async fn post_usage_slowly(
        &self,
        token: &str,
        body: Value,
        body_after: Duration,
    ) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let address = self.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let body = body.to_string();
        let head = format!(
            "POST /usage HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(body_after).await;
        // The service may have answered and closed before the body: that answer counts.
        let _ = stream.write_all(body.as_bytes()).await;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap())
    }

    pub async fn history(&self, token: &str) -> Vec<Value> {
        let response = self.get(token, "/usage/history?months=24").await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        body["items"].as_array().unwrap().clone()
    }
}

/// The sum of every series of `name` in a Prometheus text (all label sets).
pub fn metric_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The service's metrics, as Prometheus scrapes them.
pub async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Asserts the contract's error shape and code, and returns the body.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response.headers()[header::CONTENT_TYPE.as_str()]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
    body
}
