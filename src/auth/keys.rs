//! Google's token signing keys, cached by `kid`.
//!
//! Requests with a fresh cache only take a short read lock. Fetches are single-flight and
//! rate-limited, so neither a burst of requests nor tokens with made-up `kid`s can hammer the
//! key endpoint, and a failed refresh keeps the keys we already have, for a bounded time past
//! their max-age.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use headers::{CacheControl, HeaderMapExt};
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;
use serde_json::Value;

use super::error::AuthError;
use crate::metrics::{KEY_FETCHES, STALE_KEY_USES};

/// With nothing cached, a failed fetch fails requests fast for this long instead of making
/// each of them wait on an endpoint that is down.
const EMPTY_RETRY: Duration = Duration::from_secs(1);
/// A larger `max-age` is capped, so that a bogus header cannot pin a key set for ever.
const MAX_FRESHNESS: Duration = Duration::from_secs(24 * 60 * 60);
/// While every refresh fails, keys are still used this long past their max-age: an outage of
/// the key endpoint, or of the way to it, does not refuse every user at once, and a key Google
/// has since rotated out is not trusted for ever.
pub(crate) const STALE_KEY_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

pub(crate) struct KeyStore {
    client: reqwest::Client,
    url: String,
    refetch_cooldown: Duration,
    stale_grace: Duration,
    cache: RwLock<Cache>,
    /// Held only by callers that fetch, never by requests served from the cache.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// `None` until the first successful fetch.
    fresh_until: Option<Instant>,
    /// Successful or not: the cooldowns count from here.
    last_attempt: Option<Instant>,
    /// The last attempt failed, so keys past their max-age are being served stale.
    refresh_failing: bool,
}

/// Where the cached key set stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// Within its max-age.
    Fresh,
    /// Past its max-age, within the grace: used until a refresh succeeds.
    Stale,
    /// Nothing cached, or past the grace: not used.
    Expired,
}

impl Cache {
    fn freshness(&self, now: Instant, grace: Duration) -> Freshness {
        let Some(fresh_until) = self.fresh_until.filter(|_| !self.keys.is_empty()) else {
            return Freshness::Expired;
        };
        if now < fresh_until {
            Freshness::Fresh
        } else if fresh_until.checked_add(grace).is_some_and(|end| now < end) {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// The key named `kid`, from a set at `freshness` that is not expired.
    fn usable(&self, kid: &str, freshness: Freshness) -> Option<Usable> {
        self.keys.get(kid).map(|key| Usable {
            key: Arc::clone(key),
            stale: freshness == Freshness::Stale && self.refresh_failing,
        })
    }
}

/// A cached key that may be used now.
struct Usable {
    key: Arc<DecodingKey>,
    /// Past its max-age, and the last refresh failed.
    stale: bool,
}

impl Usable {
    /// The key, its use counted when it is stale.
    fn serve(self) -> Arc<DecodingKey> {
        if self.stale {
            metrics::counter!(STALE_KEY_USES).increment(1);
        }
        self.key
    }
}

enum Lookup {
    Hit(Usable),
    /// A fetch is due; `meanwhile` is the cached key for the kid, usable until it ends.
    Fetch {
        meanwhile: Option<Usable>,
    },
    Miss(AuthError),
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("the key set holds no usable RS256 key")]
    NoUsableKey,
}

/// Parsed key by key, so that one key of an unknown type cannot void the whole set.
#[derive(Deserialize)]
struct KeySet {
    keys: Vec<Value>,
}

impl KeyStore {
    /// `client` carries the fetch timeout; `stale_grace` is how long past their max-age keys
    /// are used while refreshing fails.
    pub(crate) fn new(
        client: reqwest::Client,
        url: String,
        refetch_cooldown: Duration,
        stale_grace: Duration,
    ) -> Self {
        Self {
            client,
            url,
            refetch_cooldown,
            stale_grace,
            cache: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The key named `kid`, fetching the key set when the cache is stale or lacks the kid.
    pub(crate) async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, AuthError> {
        let meanwhile = match self.lookup(kid, Instant::now()) {
            Lookup::Hit(usable) => return Ok(usable.serve()),
            Lookup::Miss(err) => return Err(err),
            Lookup::Fetch { meanwhile } => meanwhile,
        };
        let _fetching = match meanwhile {
            // Another task is already refreshing; the cached key stays usable meanwhile.
            Some(usable) => match self.fetching.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(usable.serve()),
            },
            None => self.fetching.lock().await,
        };
        // Another task may have refreshed while this one waited for the lock.
        match self.lookup(kid, Instant::now()) {
            Lookup::Hit(usable) => return Ok(usable.serve()),
            Lookup::Miss(err) => return Err(err),
            Lookup::Fetch { .. } => {}
        }
        self.refresh_locked().await;
        let cache = self.read();
        let freshness = cache.freshness(Instant::now(), self.stale_grace);
        if freshness == Freshness::Expired {
            return Err(AuthError::KeysUnavailable);
        }
        cache
            .usable(kid, freshness)
            .map(Usable::serve)
            .ok_or(AuthError::Invalid("unknown_kid"))
    }

    /// Fetches the key set unless a fresh one is cached (a request may have fetched it first).
    pub(crate) async fn refresh(&self) -> Result<(), AuthError> {
        let _fetching = self.fetching.lock().await;
        let fresh = self
            .read()
            .fresh_until
            .is_some_and(|until| Instant::now() < until);
        if fresh || self.refresh_locked().await {
            Ok(())
        } else {
            Err(AuthError::KeysUnavailable)
        }
    }

    /// Whether a key set is at hand that may be used.
    pub(crate) fn has_keys(&self) -> bool {
        self.read().freshness(Instant::now(), self.stale_grace) != Freshness::Expired
    }

    fn lookup(&self, kid: &str, now: Instant) -> Lookup {
        let cache = self.read();
        let since_attempt = cache
            .last_attempt
            .map(|at| now.saturating_duration_since(at));
        let freshness = cache.freshness(now, self.stale_grace);
        if freshness == Freshness::Expired {
            return match since_attempt {
                Some(elapsed) if elapsed < EMPTY_RETRY => Lookup::Miss(AuthError::KeysUnavailable),
                _ => Lookup::Fetch { meanwhile: None },
            };
        }
        let may_fetch = since_attempt.is_none_or(|elapsed| elapsed >= self.refetch_cooldown);
        match cache.usable(kid, freshness) {
            Some(usable) if freshness == Freshness::Fresh || !may_fetch => Lookup::Hit(usable),
            Some(usable) => Lookup::Fetch {
                meanwhile: Some(usable),
            },
            None if may_fetch => Lookup::Fetch { meanwhile: None },
            None => Lookup::Miss(AuthError::Invalid("unknown_kid")),
        }
    }

    /// One fetch attempt, recorded; a failure keeps the cached keys until they are past the
    /// grace, and then drops them. The caller holds `fetching`.
    async fn refresh_locked(&self) -> bool {
        let fetched = self.fetch().await;
        let now = Instant::now();
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        cache.last_attempt = Some(now);
        cache.refresh_failing = fetched.is_err();
        let result = if fetched.is_ok() { "ok" } else { "error" };
        metrics::counter!(KEY_FETCHES, "result" => result).increment(1);
        match fetched {
            Ok((keys, max_age)) => {
                let count = keys.len();
                cache.keys = keys;
                cache.fresh_until = now.checked_add(max_age.min(MAX_FRESHNESS));
                drop(cache);
                tracing::debug!(keys = count, ?max_age, "fetched the token signing keys");
                true
            }
            Err(err) => {
                let freshness = cache.freshness(now, self.stale_grace);
                let dropped = if freshness == Freshness::Expired {
                    std::mem::take(&mut cache.keys).len()
                } else {
                    0
                };
                let past_max_age = cache
                    .fresh_until
                    .map(|until| now.saturating_duration_since(until));
                let kept = cache.keys.len();
                drop(cache);
                tracing::warn!(
                    error = %err,
                    url = %self.url,
                    kept_keys = kept,
                    "could not fetch the token signing keys"
                );
                if freshness == Freshness::Stale {
                    tracing::warn!(
                        ?past_max_age,
                        grace = ?self.stale_grace,
                        "serving token signing keys past their max-age until a refresh succeeds"
                    );
                } else if dropped > 0 {
                    tracing::warn!(
                        keys = dropped,
                        grace = ?self.stale_grace,
                        "dropped the token signing keys, past their max-age by more than the \
                         grace: signed tokens are refused until a refresh succeeds"
                    );
                }
                false
            }
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, Arc<DecodingKey>>, Duration), FetchError> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?;
        // Without max-age the set is stale at once; the refetch cooldown still spaces fetches.
        let max_age = response
            .headers()
            .typed_get::<CacheControl>()
            .and_then(|cache_control| cache_control.max_age())
            .unwrap_or_default();
        let set: KeySet = response.json().await?;
        let keys = usable_keys(set.keys);
        if keys.is_empty() {
            return Err(FetchError::NoUsableKey);
        }
        Ok((keys, max_age))
    }

    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        // The cache is only ever replaced field by field, so a poisoned lock still holds
        // consistent data.
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn usable_keys(raw: Vec<Value>) -> HashMap<String, Arc<DecodingKey>> {
    raw.into_iter()
        .filter_map(|value| {
            let kid = value.get("kid").and_then(Value::as_str).map(str::to_owned);
            match (kid, decoding_key(value)) {
                (Some(kid), Ok(key)) => Some((kid, Arc::new(key))),
                (kid, Err(why)) => {
                    tracing::warn!(kid = kid.as_deref(), why, "skipping a signing key");
                    None
                }
                (None, Ok(_)) => {
                    tracing::warn!("skipping a signing key without a kid");
                    None
                }
            }
        })
        .collect()
}

fn decoding_key(value: Value) -> Result<DecodingKey, &'static str> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "not a JWK this service can read")?;
    if !matches!(jwk.algorithm, AlgorithmParameters::RSA(_)) {
        return Err("not an RSA key");
    }
    if jwk
        .common
        .key_algorithm
        .is_some_and(|alg| alg != KeyAlgorithm::RS256)
    {
        return Err("not an RS256 key");
    }
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|key_use| *key_use != PublicKeyUse::Signature)
    {
        return Err("not a signing key");
    }
    DecodingKey::from_jwk(&jwk).map_err(|_| "invalid RSA parameters")
}

/// A real HTTP JWK endpoint for the tests, whose answers the test can change.
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::State;
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::{IntoResponse, Response};

    pub(crate) const KEY_1_JWK: &str = include_str!("../../tests/fixtures/test-key-1.jwk.json");
    pub(crate) const KEY_2_JWK: &str = include_str!("../../tests/fixtures/test-key-2.jwk.json");
    pub(crate) const KEY_1_PEM: &str = include_str!("../../tests/fixtures/test-key-1.pem");
    pub(crate) const KEY_2_PEM: &str = include_str!("../../tests/fixtures/test-key-2.pem");

    pub(crate) struct JwkServer {
        pub(crate) url: String,
        shared: Arc<Shared>,
    }

    struct Shared {
        fetches: AtomicUsize,
        status: AtomicU16,
        delay_ms: AtomicU64,
        body: Mutex<String>,
        cache_control: Mutex<Option<String>>,
    }

    impl JwkServer {
        /// Serves `jwks` with `Cache-Control: public, max-age=3600`.
        pub(crate) async fn start(jwks: &[&str]) -> Self {
            let shared = Arc::new(Shared {
                fetches: AtomicUsize::new(0),
                status: AtomicU16::new(200),
                delay_ms: AtomicU64::new(0),
                body: Mutex::new(key_set(jwks)),
                cache_control: Mutex::new(Some("public, max-age=3600".to_owned())),
            });
            let app = axum::Router::new()
                .route("/keys", axum::routing::get(serve_keys))
                .with_state(Arc::clone(&shared));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/keys", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            Self { url, shared }
        }

        pub(crate) fn fetches(&self) -> usize {
            self.shared.fetches.load(Ordering::SeqCst)
        }

        pub(crate) fn serve(&self, jwks: &[&str]) {
            *self.shared.body.lock().unwrap() = key_set(jwks);
        }

        pub(crate) fn serve_body(&self, body: &str) {
            *self.shared.body.lock().unwrap() = body.to_owned();
        }

        pub(crate) fn set_cache_control(&self, value: Option<&str>) {
            *self.shared.cache_control.lock().unwrap() = value.map(str::to_owned);
        }

        pub(crate) fn set_status(&self, status: u16) {
            self.shared.status.store(status, Ordering::SeqCst);
        }

        pub(crate) fn set_delay(&self, delay: Duration) {
            let millis = u64::try_from(delay.as_millis()).unwrap();
            self.shared.delay_ms.store(millis, Ordering::SeqCst);
        }
    }

    fn key_set(jwks: &[&str]) -> String {
        format!("{{\"keys\":[{}]}}", jwks.join(","))
    }

    async fn serve_keys(State(shared): State<Arc<Shared>>) -> Response {
        shared.fetches.fetch_add(1, Ordering::SeqCst);
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let status = StatusCode::from_u16(shared.status.load(Ordering::SeqCst)).unwrap();
        let body = shared.body.lock().unwrap().clone();
        let mut response = (status, body).into_response();
        if let Some(value) = shared.cache_control.lock().unwrap().as_deref() {
            let value = HeaderValue::from_str(value).unwrap();
            response.headers_mut().insert(header::CACHE_CONTROL, value);
        }
        response
    }

    /// A URL on which nothing listens.
    pub(crate) async fn closed_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}/keys", listener.local_addr().unwrap())
    }

    /// A URL that accepts connections and never answers.
    pub(crate) async fn silent_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/keys", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        url
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{JwkServer, KEY_1_JWK, KEY_2_JWK, closed_url, silent_url};
    use super::*;

    /// Long enough that the immediate follow-up lookups of a test fall within it.
    const COOLDOWN: Duration = Duration::from_millis(500);

    fn store(url: &str, cooldown: Duration) -> KeyStore {
        store_with_grace(url, cooldown, STALE_KEY_GRACE)
    }

    fn store_with_grace(url: &str, cooldown: Duration, stale_grace: Duration) -> KeyStore {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        KeyStore::new(client, url.to_owned(), cooldown, stale_grace)
    }

    fn reason(result: Result<Arc<DecodingKey>, AuthError>) -> String {
        match result {
            Ok(_) => "ok".to_owned(),
            Err(AuthError::Invalid(reason)) => reason.to_owned(),
            Err(AuthError::KeysUnavailable) => "keys_unavailable".to_owned(),
        }
    }

    #[tokio::test]
    async fn keys_are_fetched_once_for_many_lookups() {
        let server = JwkServer::start(&[KEY_1_JWK, KEY_2_JWK]).await;
        let store = store(&server.url, Duration::from_secs(60));
        for _ in 0..50 {
            store.key("test-key-1").await.unwrap();
            store.key("test-key-2").await.unwrap();
        }
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_lookups_on_an_empty_cache_share_one_fetch() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        server.set_delay(Duration::from_millis(200));
        let store = Arc::new(store(&server.url, Duration::from_secs(60)));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let store = Arc::clone(&store);
            tasks.spawn(async move { store.key("test-key-1").await.map(|_| ()) });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_only_after_the_cooldown() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        let store = store(&server.url, COOLDOWN);
        store.key("test-key-1").await.unwrap();
        // Google rotates in a new key, but the last fetch was too recent to fetch again.
        server.serve(&[KEY_1_JWK, KEY_2_JWK]);
        assert_eq!(reason(store.key("test-key-2").await), "unknown_kid");
        assert_eq!(server.fetches(), 1);

        tokio::time::sleep(COOLDOWN).await;
        store.key("test-key-2").await.unwrap();
        assert_eq!(server.fetches(), 2);
        // A made-up kid right after a fetch costs no further fetch.
        assert_eq!(reason(store.key("made-up").await), "unknown_kid");
        assert_eq!(server.fetches(), 2);
        store.key("test-key-1").await.unwrap();
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn an_expired_max_age_triggers_a_refetch() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        server.set_cache_control(Some("public, max-age=1, must-revalidate"));
        let store = store(&server.url, COOLDOWN);
        store.key("test-key-1").await.unwrap();
        server.serve(&[KEY_2_JWK]);
        store.key("test-key-1").await.unwrap();
        assert_eq!(server.fetches(), 1);

        tokio::time::sleep(Duration::from_millis(1100)).await;
        store.key("test-key-2").await.unwrap();
        assert_eq!(server.fetches(), 2);
        // The rotated-out key is gone with the old set.
        assert_eq!(reason(store.key("test-key-1").await), "unknown_kid");
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn without_max_age_keys_are_refetched_no_sooner_than_the_cooldown() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        server.set_cache_control(None);
        let store = store(&server.url, COOLDOWN);
        for _ in 0..10 {
            store.key("test-key-1").await.unwrap();
        }
        assert_eq!(server.fetches(), 1);
        tokio::time::sleep(COOLDOWN).await;
        store.key("test-key-1").await.unwrap();
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn no_keys_is_keys_unavailable_and_retried_at_most_once_a_second() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        server.set_status(503);
        let store = store(&server.url, Duration::from_millis(100));
        assert_eq!(reason(store.key("test-key-1").await), "keys_unavailable");
        assert_eq!(reason(store.key("test-key-1").await), "keys_unavailable");
        assert_eq!(server.fetches(), 1);

        server.set_status(200);
        tokio::time::sleep(EMPTY_RETRY).await;
        store.key("test-key-1").await.unwrap();
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn an_endpoint_that_is_down_with_nothing_cached_is_keys_unavailable() {
        let store = store(&closed_url().await, Duration::from_millis(100));
        assert_eq!(reason(store.key("test-key-1").await), "keys_unavailable");
        assert!(matches!(
            store.refresh().await,
            Err(AuthError::KeysUnavailable)
        ));
    }

    #[tokio::test]
    async fn a_fetch_that_hangs_times_out() {
        let store = store(&silent_url().await, Duration::from_millis(100));
        let started = Instant::now();
        assert_eq!(reason(store.key("test-key-1").await), "keys_unavailable");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn stale_keys_are_used_when_a_refetch_fails() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        server.set_cache_control(Some("max-age=1"));
        let store = store(&server.url, COOLDOWN);
        store.key("test-key-1").await.unwrap();

        server.set_status(500);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        store.key("test-key-1").await.unwrap();
        assert_eq!(server.fetches(), 2);
        // The failed attempt counts for the cooldown: no fetch per request meanwhile.
        store.key("test-key-1").await.unwrap();
        assert_eq!(server.fetches(), 2);

        server.set_status(200);
        server.serve_body("not json");
        tokio::time::sleep(COOLDOWN).await;
        store.key("test-key-1").await.unwrap();
        assert_eq!(server.fetches(), 3);
    }

    /// Stale key uses counted so far, by every test of this process.
    fn stale_key_uses() -> f64 {
        let text = crate::metrics::registry().unwrap().render();
        text.lines()
            .find_map(|line| line.strip_prefix(STALE_KEY_USES)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn stale_keys_are_used_for_the_grace_only_and_each_use_is_counted() {
        let grace = Duration::from_secs(2);
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        server.set_cache_control(Some("max-age=1"));
        let store = store_with_grace(&server.url, Duration::from_millis(100), grace);
        let before = stale_key_uses();
        store.key("test-key-1").await.unwrap();
        let fetched = Instant::now();

        server.set_status(500);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for _ in 0..3 {
            store.key("test-key-1").await.unwrap();
        }
        // Other tests serve stale keys too: the count grows by at least this test's uses.
        assert!(stale_key_uses() >= before + 3.0, "{}", stale_key_uses());
        assert!(store.has_keys());

        // Past the max-age by more than the grace: dropped, and a signed token is refused.
        let past_grace = fetched + Duration::from_secs(1) + grace + Duration::from_millis(100);
        tokio::time::sleep_until(past_grace.into()).await;
        assert_eq!(reason(store.key("test-key-1").await), "keys_unavailable");
        assert!(!store.has_keys());
        assert_eq!(reason(store.key("test-key-1").await), "keys_unavailable");

        server.set_status(200);
        tokio::time::sleep(EMPTY_RETRY).await;
        store.key("test-key-1").await.unwrap();
        assert!(store.has_keys());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn during_a_refresh_other_lookups_use_the_stale_key_without_waiting() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        server.set_cache_control(Some("max-age=1"));
        // A timeout longer than the slow answer below, so the refresh really takes that long.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let store = Arc::new(KeyStore::new(
            client,
            server.url.clone(),
            COOLDOWN,
            STALE_KEY_GRACE,
        ));
        store.key("test-key-1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;

        server.set_delay(Duration::from_secs(2));
        let refreshing = tokio::spawn({
            let store = Arc::clone(&store);
            async move { store.key("test-key-1").await.map(|_| ()) }
        });
        while server.fetches() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        store.key("test-key-1").await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        refreshing.await.unwrap().unwrap();
        assert_eq!(server.fetches(), 2);
    }

    /// Key 1's JWK, with its kid replaced (or removed) and some fields overridden.
    fn key_1_with(kid: Option<&str>, fields: &[(&str, &str)]) -> Value {
        let mut key: serde_json::Map<String, Value> = serde_json::from_str(KEY_1_JWK).unwrap();
        key.remove("kid");
        if let Some(kid) = kid {
            key.insert("kid".into(), kid.into());
        }
        for (field, value) in fields {
            key.insert((*field).into(), (*value).into());
        }
        Value::Object(key)
    }

    #[tokio::test]
    async fn keys_that_are_not_rs256_signing_keys_are_skipped() {
        let server = JwkServer::start(&[]).await;
        let set = serde_json::json!({"keys": [
            key_1_with(Some("ps256"), &[("alg", "PS256")]),
            key_1_with(Some("encryption"), &[("use", "enc")]),
            key_1_with(Some("bad-modulus"), &[("n", "%%% not base64 %%%")]),
            key_1_with(None, &[]),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "AKP", "kid": "unknown-type"},
            serde_json::from_str::<Value>(KEY_2_JWK).unwrap(),
        ]});
        server.serve_body(&set.to_string());
        let store = store(&server.url, Duration::from_secs(60));
        store.key("test-key-2").await.unwrap();
        let skipped = [
            "ps256",
            "encryption",
            "bad-modulus",
            "hmac",
            "ec",
            "unknown-type",
        ];
        for kid in skipped.into_iter().chain(["test-key-1"]) {
            assert_eq!(reason(store.key(kid).await), "unknown_kid", "{kid}");
        }
        assert_eq!(server.fetches(), 1);
    }

    #[tokio::test]
    async fn a_set_without_a_usable_key_is_a_failed_fetch() {
        let server = JwkServer::start(&[KEY_1_JWK]).await;
        server.set_cache_control(Some("max-age=0"));
        let store = store(&server.url, Duration::from_millis(100));
        store.key("test-key-1").await.unwrap();
        server.serve(&[]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.key("test-key-1").await.unwrap();
        assert_eq!(server.fetches(), 2);
    }
}
