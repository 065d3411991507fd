//! The service on Firestore (the real emulator): several instances at once never over-admit
//! or double count, contention still gets answers, and an outage is a 503 that heals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use token_limits::store::StoreKind;
use token_limits::usage::{Clock, SystemClock};
use tokio::task::JoinSet;

use crate::emulator::{self, Emulator};
use crate::helpers::*;

/// An instance of the service on Firestore at `emulator_host`, in `project`.
pub async fn instance(emulator_host: &str, project: &str, extra: &[&str]) -> TestApp {
    instance_timed(emulator_host, project, extra, Arc::new(SystemClock)).await
}

/// [`instance`], reading the time from `clock`.
pub async fn instance_timed(
    emulator_host: &str,
    project: &str,
    extra: &[&str],
    clock: Arc<dyn Clock>,
) -> TestApp {
    let (host, project) = (emulator_host.to_owned(), project.to_owned());
    let adjust = move |config: &mut token_limits::config::Config| {
        config.store.kind = StoreKind::Firestore;
        config.store.firestore_emulator_host = Some(host);
        config.store.google_cloud_project = Some(project);
    };
    spawn_app_timed(JwksServer::start(&[KEY_1]).await, extra, adjust, clock).await
}

/// One instance of the service on the shared emulator, in a project of its own.
pub async fn firestore_app() -> TestApp {
    instances(1).await.remove(0)
}

/// `count` instances of the service on the shared emulator, in one project of their own.
pub async fn instances(count: usize) -> Vec<TestApp> {
    let emulator = emulator::shared().await;
    let project = emulator::unique_project("multi");
    emulator.clear(&project).await;
    let mut apps = Vec::new();
    for _ in 0..count {
        apps.push(instance(&emulator.host(), &project, &[]).await);
    }
    apps
}

/// Sends every (instance, key, tokens) request at once; returns each status.
async fn hammer(
    apps: &[TestApp],
    uid: &str,
    requests: Vec<(usize, Option<String>, i64)>,
) -> Vec<u16> {
    let token = token(uid);
    let mut running = JoinSet::new();
    for (index, key, tokens) in requests {
        let mut request = apps[index]
            .client
            .post(apps[index].url("/usage"))
            .bearer_auth(&token)
            .json(&json!({ "tokens": tokens }));
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        running.spawn(async move { request.send().await.unwrap().status().as_u16() });
    }
    running.join_all().await
}

async fn stored_total(app: &TestApp, uid: &str) -> (i64, i64) {
    let today = app.today(&token(uid)).await;
    let history = app.history(&token(uid)).await;
    let month_total = history
        .first()
        .map_or(0, |month| month["totalMonthlyTokens"].as_i64().unwrap());
    (today["tokensUsed"].as_i64().unwrap(), month_total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_never_over_admit() {
    let apps = instances(3).await;
    let requests = (0..60).map(|i| (i % 3, None, 300)).collect();
    let statuses = hammer(&apps, "alice", requests).await;
    let admitted = statuses.iter().filter(|&&s| s == 200).count() as i64;
    let undecided = statuses.iter().filter(|&&s| s == 503).count();
    assert!(
        statuses.iter().all(|s| [200, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(admitted <= 33, "over-admitted: {admitted}");
    if undecided == 0 {
        assert_eq!(admitted, 33, "{statuses:?}");
    }
    // Every instance sees the one truth.
    for app in &apps {
        assert_eq!(
            stored_total(app, "alice").await,
            (admitted * 300, admitted * 300)
        );
    }
}

/// Each instance commits from the copies it cached last, two of them out of date when the
/// burst starts: a stale copy is refused by Firestore and read again, never counted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_with_warm_caches_never_over_admit() {
    let apps = instances(3).await;
    for app in &apps {
        let response = app
            .post_usage(&token("alice"), json!({"tokens": 100}))
            .await;
        assert_eq!(response.status(), 200);
    }
    let cached_before = metric_total(&scrape(&apps[0]).await, CACHED_COMMITS);
    let requests = (0..60).map(|i| (i % 3, None, 300)).collect();
    let statuses = hammer(&apps, "alice", requests).await;
    assert!(
        statuses.iter().all(|s| [200, 429, 503].contains(s)),
        "{statuses:?}"
    );
    let admitted = statuses.iter().filter(|&&s| s == 200).count() as i64;
    assert!(admitted <= 32, "over-admitted: {admitted}");
    if !statuses.contains(&503) {
        assert_eq!(admitted, 32, "{statuses:?}");
    }
    for app in &apps {
        let expected = 300 + admitted * 300;
        assert_eq!(stored_total(app, "alice").await, (expected, expected));
    }
    let cached_after = metric_total(&scrape(&apps[0]).await, CACHED_COMMITS);
    assert!(
        cached_after > cached_before,
        "no commit was sent from a cached copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_across_instances_count_each_key_once() {
    let apps = instances(3).await;
    // 40 messages, each sent twice at once to two different instances.
    let requests = (0..80)
        .map(|i| (i % 3, Some(format!("message-{}", i / 2)), 300))
        .collect::<Vec<_>>();
    let statuses = hammer(&apps, "alice", requests).await;
    assert!(
        statuses.iter().all(|s| [200, 429, 503].contains(s)),
        "{statuses:?}"
    );
    // Each message once more, one at a time: a counted key answers 200 (replayed), an
    // uncounted one is decided now. Either way the store must hold each 200 exactly once.
    let mut counted = 0;
    for message in 0..40 {
        let response = apps[message % 3]
            .post_usage_keyed(
                &token("alice"),
                &format!("message-{message}"),
                json!({"tokens": 300}),
            )
            .await;
        if response.status() == 200 {
            counted += 1;
        }
    }
    assert_eq!(counted, 33);
    assert_eq!(
        stored_total(&apps[0], "alice").await,
        (counted * 300, counted * 300)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn contention_still_gets_definitive_answers() {
    let apps = instances(3).await;
    let requests = (0..24).map(|i| (i % 3, None, 100)).collect();
    let statuses = hammer(&apps, "alice", requests).await;
    let definitive = statuses.iter().filter(|&&s| s == 200 || s == 429).count();
    assert!(
        definitive * 100 >= 95 * statuses.len(),
        "only {definitive} of 24 definitive: {statuses:?}"
    );
    let admitted = statuses.iter().filter(|&&s| s == 200).count() as i64;
    assert_eq!(
        stored_total(&apps[0], "alice").await,
        (admitted * 100, admitted * 100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_is_a_503_that_heals_without_a_restart() {
    let port = emulator::free_port();
    let mut emulator = Emulator::start_on(port).await;
    let project = emulator::unique_project("outage");
    let request_timeout = Duration::from_secs(6);
    let app = instance(&emulator.host(), &project, &["--request-timeout-secs=6"]).await;
    let alice = token("alice");
    assert_eq!(
        app.post_usage(&alice, json!({"tokens": 10})).await.status(),
        200
    );

    emulator.stop();
    let started = Instant::now();
    let response = app.post_usage(&alice, json!({"tokens": 10})).await;
    assert!(
        started.elapsed() < request_timeout,
        "took {:?}",
        started.elapsed()
    );
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 503, "unavailable").await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_error(ready, 503, "unavailable").await;
    let today = app.get(&alice, "/usage/today").await;
    assert_error(today, 503, "unavailable").await;

    let _emulator = Emulator::start_on(port).await;
    let healed = Instant::now();
    loop {
        let response = app.post_usage(&alice, json!({"tokens": 10})).await;
        if response.status() == 200 {
            let body: Value = response.json().await.unwrap();
            // The restarted emulator starts empty.
            assert_eq!(body["tokensUsed"], 10);
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

const CACHED_COMMITS: &str = "token_limits_firestore_cached_commits_total";

/// Firestore's calls, reads and writes are counted in `/metrics` as they happen. The registry
/// is the process's, shared with tests running beside this one: counts only grow.
#[tokio::test]
async fn firestore_operations_are_counted_in_the_metrics() {
    let app = firestore_app().await;
    let scrape = || scrape(&app);
    let names = [
        "token_limits_firestore_rpcs_total",
        "token_limits_firestore_document_reads_total",
        "token_limits_firestore_document_writes_total",
    ];
    let before = scrape().await;
    let response = app
        .post_usage(&token("metrics-user"), json!({"tokens": 5}))
        .await;
    assert_eq!(response.status(), 200);
    let after = scrape().await;
    for name in names {
        let grown = metric_total(&after, name) - metric_total(&before, name);
        assert!(grown >= 2.0, "{name} grew by {grown}");
    }
    assert!(
        after.contains(r#"token_limits_store_operations_total{store="firestore",operation="record",result="ok"}"#),
        "{after}"
    );
}
