//! The faults a review found, each pinned by the test that showed it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::auth_emulator;
use crate::cut_proxy::{CutProxy, Mode};
use crate::emulator;
use crate::firestore::{instance, instance_timed};
use crate::helpers::*;

/// A request that times out answers 503, which says that nothing was recorded: on the
/// embedded store, a transaction still waiting when the request gave up must not commit later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_never_records_a_request_it_answered_503() {
    let app = spawn_app_with(&["--request-timeout-secs=1"], |_| {}).await;
    let alice = token("alice");
    // Another process holds the write lock for longer than the request may take.
    let blocker = rusqlite::Connection::open(&app.sqlite_path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        blocker.execute_batch("COMMIT").unwrap();
    });
    let response = app.post_usage(&alice, json!({"tokens": 5})).await;
    assert_error(response, 503, "unavailable").await;
    release.await.unwrap();
    // Long after the lock is free, the refused request has still written nothing.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(app.today(&alice).await["tokensUsed"], 0);
    assert_eq!(
        app.post_usage(&alice, json!({"tokens": 5})).await.status(),
        200
    );
    assert_eq!(app.today(&alice).await["tokensUsed"], 5);
}

/// What `unavailable` says when nothing was recorded.
const NOTHING_RECORDED: &str = "the service is unavailable; retry shortly";

/// The request's one deadline runs from its arrival: a body that arrives late leaves the store
/// less time, not a budget of its own. With `REQUEST_TIMEOUT_SECS=2`, the body 1.5 s late and
/// another process holding the file's write lock until 2.3 s, the answer must not say that
/// nothing was recorded while the write lands afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_late_body_gets_an_answer_that_stays_true() {
    let app = spawn_app_with(&["--request-timeout-secs=2"], |_| {}).await;
    let alice = token("alice");
    let blocker = rusqlite::Connection::open(&app.sqlite_path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        blocker.execute_batch("COMMIT").unwrap();
    });
    let (status, body) = app
        .post_usage_slowly(&alice, json!({"tokens": 5}), Duration::from_millis(1_500))
        .await;
    release.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["message"], NOTHING_RECORDED, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.today(&alice).await["tokensUsed"], 0);
}

/// The same on Firestore, where every answer comes 450 ms late: the body arrives at 1.2 s, the
/// day is read by 1.65 s, past the last moment a write may begin (1.5 s of 2), so no commit is
/// sent and the 503 that says so is true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firestore_a_late_body_gets_an_answer_that_stays_true() {
    let (app, proxy) = behind_proxy("late-body", &["--request-timeout-secs=2"]).await;
    let bob = token("bob");
    proxy.set(Mode::DelayAnswers(Duration::from_millis(450)));
    let (status, body) = app
        .post_usage_slowly(&bob, json!({"tokens": 5}), Duration::from_millis(1_200))
        .await;
    proxy.set(Mode::Pass);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["message"], NOTHING_RECORDED, "{body}");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(app.today(&bob).await["tokensUsed"], 0);
}

/// A commit sent in time whose answer cannot arrive before the deadline (every answer 900 ms
/// late, of 2 s) is answered 503 saying that the outcome is unknown, and it did land: a plain
/// "unavailable" would have been false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firestore_a_commit_without_an_answer_by_the_deadline_is_an_unknown_outcome() {
    let (app, proxy) = behind_proxy("no-answer-in-time", &["--request-timeout-secs=2"]).await;
    let bob = token("bob");
    proxy.set(Mode::DelayAnswers(Duration::from_millis(900)));
    let response = app.post_usage(&bob, json!({"tokens": 5})).await;
    proxy.set(Mode::Pass);
    let body = assert_error(response, 503, "unavailable").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("outcome of this request is unknown"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(app.today(&bob).await["tokensUsed"], 5);
}

/// A user's report shows only what is stored, so it does not depend on Firebase Auth: with the
/// user directory unreachable, it shows the plan stored with the user's usage and says so, and
/// the failed lookups are counted. Recording for a user whose plan cannot be known still
/// refuses.
#[tokio::test]
async fn a_user_report_shows_the_stored_plan_while_the_directory_is_down() {
    let unreachable = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let app = spawn_app_with(&[], |config| {
        config.auth_emulator_for_lookups = Some(unreachable);
    })
    .await;
    let carol = token_with("carol", json!({"userType": "subscribed"}));
    assert_eq!(
        app.post_usage(&carol, json!({"tokens": 10})).await.status(),
        200
    );
    let failed_lookups = || async { metric_total(&scrape(&app).await, LOOKUP_ERRORS) };
    let failed_before = failed_lookups().await;
    let admin = admin_token("root");

    let response = app.get(&admin, "/admin/users/carol/usage").await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["planSource"], "stored", "{report}");
    assert_eq!(report["today"]["userType"], "subscribed", "{report}");
    assert_eq!(report["today"]["tokensUsed"], 10, "{report}");
    assert!(failed_lookups().await > failed_before);

    let response = app.get(&admin, "/admin/users/nobody/usage").await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["planSource"], "default", "{report}");
    assert_eq!(report["today"]["tokensUsed"], 0, "{report}");

    let response = app
        .post_usage(&admin, json!({"tokens": 1, "userId": "carol"}))
        .await;
    assert_error(response, 503, "unavailable").await;
    assert_eq!(app.today(&carol).await["tokensUsed"], 10);
}

const LOOKUP_ERRORS: &str = "token_limits_user_directory_lookups_total{result=\"error\"}";

/// A month document that another writer made unusable is a clear error naming it, on both
/// stores, and nothing is written.
#[tokio::test]
async fn a_month_that_cannot_be_continued_is_named() {
    let today = chrono::Utc::now();
    let (year, month) = (today.format("%Y"), today.format("%m"));
    let month_id = format!("mallory_{year}_{month}");

    let app = spawn_app().await;
    let connection = rusqlite::Connection::open(&app.sqlite_path).unwrap();
    connection
        .execute(
            "INSERT INTO token_usage_history VALUES (?1, 'mallory', ?2, ?3, ?4, 0, 0.0, '01', 0,
             'trial', '2024-01-01T00:00:00Z', '2024-01-01T00:00:00Z', NULL)",
            rusqlite::params![
                month_id,
                today.format("%Y").to_string().parse::<i64>().unwrap(),
                today.format("%m").to_string().parse::<i64>().unwrap(),
                format!(r#"{{"01": {}}}"#, i64::MAX - 1),
            ],
        )
        .unwrap();
    assert_corrupt(&app, &month_id).await;

    let emulator = emulator::shared().await;
    let project = emulator::unique_project("corrupt");
    let app = instance(&emulator.host(), &project, &[]).await;
    for (label, value) in [
        (
            "overflow",
            json!({ "integerValue": (i64::MAX - 1).to_string() }),
        ),
        ("fraction", json!({ "doubleValue": 1.5 })),
    ] {
        let fields = json!({
            "userId": { "stringValue": "mallory" },
            "year": { "integerValue": year.to_string() },
            "month": { "integerValue": today.format("%-m").to_string() },
            "dailyUsage": { "mapValue": { "fields": { "01": value } } },
            "totalMonthlyTokens": { "integerValue": "0" },
            "averageDailyUsage": { "doubleValue": 0.0 },
            "peakUsageDate": { "stringValue": "01" },
            "peakUsageTokens": { "integerValue": "0" },
            "userType": { "stringValue": "trial" },
            "createdAt": { "timestampValue": "2024-01-01T00:00:00Z" },
            "updatedAt": { "timestampValue": "2024-01-01T00:00:00Z" },
        });
        let response = reqwest::Client::new()
            .patch(emulator.document_url(&project, &format!("token_usage_history/{month_id}")))
            .bearer_auth("owner")
            .json(&json!({ "fields": fields }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{label}");
        assert_corrupt(&app, &month_id).await;
    }
}

async fn assert_corrupt(app: &TestApp, month_id: &str) {
    let mallory = token("mallory");
    let response = app.post_usage(&mallory, json!({"tokens": 10})).await;
    let body = assert_error(response, 500, "corrupt_document").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(month_id), "{message}");
    // Nothing was written: the day's report does not list the user.
    let date = chrono::Utc::now().date_naive();
    let report: Value = app
        .get(
            &admin_token("admin"),
            &format!("/admin/usage/daily?date={date}&limit=500"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["items"], json!([]), "{report}");
}

/// Ready means able to serve: the store answers and a signing key set is at hand.
#[tokio::test]
async fn not_ready_while_no_signing_key_can_be_fetched() {
    let jwks = JwksServer::start(&[KEY_1]).await;
    jwks.set_failing(true);
    let app = spawn_app_on(jwks, &[], |_| {}).await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_error(response, 503, "unavailable").await;
    app.jwks.set_failing(false);
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.today(&token("alice")).await["tokensUsed"], 0);
}

/// One instance on Firestore behind a proxy that can lose commits or their answers.
async fn behind_proxy(label: &str, extra: &[&str]) -> (TestApp, CutProxy) {
    let emulator = emulator::shared().await;
    let proxy = CutProxy::start(emulator.host()).await;
    let project = emulator::unique_project(label);
    let app = instance(&proxy.host, &project, extra).await;
    // Warm the connection so that the losses below hit a commit, not a connect.
    assert_eq!(
        app.post_usage(&token("alice"), json!({"tokens": 1}))
            .await
            .status(),
        200
    );
    (app, proxy)
}

async fn record_body(app: &TestApp, tokens: i64) -> (u16, Value) {
    let response = app
        .post_usage(&token("alice"), json!({ "tokens": tokens }))
        .await;
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A commit applied but whose answer was lost: sent again, it is refused, and reading the day
/// back shows it applied. The request is answered as admitted and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_answer_is_resolved_by_reading_back() {
    let (app, proxy) = behind_proxy("lost-answer", &[]).await;
    proxy.set(Mode::LoseAnswer);
    let (status, body) = record_body(&app, 100).await;
    assert_eq!(proxy.mode(), Mode::Pass, "no commit answer was lost");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tokensUsed"], 101);
    assert_eq!(app.today(&token("alice")).await["tokensUsed"], 101);
    assert_eq!(
        app.history(&token("alice")).await[0]["totalMonthlyTokens"],
        101
    );
}

/// Two instances whose clocks agree to the millisecond: one loses its commit and stays cut off
/// while the other records the same tokens for the same user, so that the day then holds
/// exactly what the lost commit would have written. The lost commit's resend is refused, and
/// the day read back looks like its own: only the write's marker tells that another instance
/// wrote it. The answer must be that the outcome is unknown, not an admission that nothing
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_is_not_taken_for_an_identical_write_by_another_instance() {
    let emulator = emulator::shared().await;
    let proxy = CutProxy::start(emulator.host()).await;
    let project = emulator::unique_project("identical-write");
    let clock = TestClock::at("2026-01-15T10:00:00.123Z");
    let cut_off = instance_timed(&proxy.host, &project, &[], clock.clone()).await;
    let direct = instance_timed(&emulator.host(), &project, &[], clock).await;
    // Warm the connection so that the loss below hits a commit, not a connect.
    let warm = cut_off
        .post_usage(&token("warm"), json!({"tokens": 1}))
        .await;
    assert_eq!(warm.status(), 200);

    proxy.set(Mode::LoseCommitThenDown);
    let lost = tokio::spawn(async move {
        let response = cut_off
            .post_usage(&token("dana"), json!({"tokens": 7}))
            .await;
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    });
    while proxy.mode() != Mode::Down {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dana = token("dana");
    assert_eq!(
        direct
            .post_usage(&dana, json!({"tokens": 7}))
            .await
            .status(),
        200
    );
    proxy.set(Mode::Pass);

    let (status, body) = lost.await.unwrap();
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("outcome of this request is unknown"),
        "{body}"
    );
    assert_eq!(direct.today(&dana).await["tokensUsed"], 7);
}

/// A commit that never reached Firestore is sent again, with the same preconditions: counted
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_is_sent_again() {
    let (app, proxy) = behind_proxy("lost-commit", &[]).await;
    proxy.set(Mode::LoseCommit);
    let (status, body) = record_body(&app, 100).await;
    assert_eq!(proxy.mode(), Mode::Pass, "no commit was lost");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tokensUsed"], 101);
    assert_eq!(app.today(&token("alice")).await["tokensUsed"], 101);
}

/// When even the read back fails, the answer is 503 and says that the request may have been
/// recorded: here it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_that_cannot_be_known_says_so() {
    let (app, proxy) = behind_proxy("unknown", &[]).await;
    proxy.set(Mode::LoseAnswerThenDown);
    let response = app
        .post_usage(&token("alice"), json!({"tokens": 100}))
        .await;
    let body = assert_error(response, 503, "unavailable").await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("may have been recorded"), "{message}");
    proxy.set(Mode::Pass);
    assert_eq!(app.today(&token("alice")).await["tokensUsed"], 101);
}

/// The chat backend acting for a subscribed user is held to that user's plan, as Firebase
/// Auth knows it, from the first request of a month on, and the admin view agrees.
#[tokio::test]
async fn a_backend_recording_for_a_user_learns_their_plan() {
    let auth = auth_emulator::shared().await;
    auth.set_claims(PROJECT, "plan-sub", json!({"userType": "subscribed"}))
        .await;
    let app = spawn_app().await;
    let backend = admin_token("chat-backend");
    for _ in 0..3 {
        let response = app
            .post_usage(&backend, json!({"tokens": 5_000, "userId": "plan-sub"}))
            .await;
        assert_eq!(response.status(), 200);
    }
    let own = token_with("plan-sub", json!({"userType": "subscribed"}));
    let today = app.today(&own).await;
    assert_eq!(
        (today["tokensUsed"].as_i64(), today["tokenLimit"].as_i64()),
        (Some(15_000), Some(100_000))
    );
    let drill: Value = app
        .get(&backend, "/admin/users/plan-sub/usage")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(drill["today"], today);
}

/// A downgrade mid-month holds the backend to the new plan: no stored type is carried on.
#[tokio::test]
async fn a_downgrade_holds_the_backend_to_the_new_plan() {
    let auth = auth_emulator::shared().await;
    auth.set_claims(PROJECT, "plan-down", json!({"userType": "subscribed"}))
        .await;
    let app = spawn_app_with(&["--user-type-cache-secs=0"], |_| {}).await;
    let backend = admin_token("chat-backend");
    let body = json!({"tokens": 20_000, "userId": "plan-down"});
    assert_eq!(app.post_usage(&backend, body).await.status(), 200);
    auth.set_claims(PROJECT, "plan-down", json!({})).await;
    let response = app
        .post_usage(&backend, json!({"tokens": 1, "userId": "plan-down"}))
        .await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["userType"].as_str(), body["tokenLimit"].as_i64()),
        (Some("trial"), Some(10_000))
    );
}

/// A plan the backend states is used, is part of what an idempotency key remembers, and is
/// for admins acting for someone else only.
#[tokio::test]
async fn a_stated_plan_is_used_and_fingerprinted() {
    let app = spawn_app().await;
    let backend = admin_token("chat-backend");
    let stated = json!({"tokens": 20_000, "userId": "plan-stated", "userType": "subscribed"});
    let response = app.post_usage_keyed(&backend, "k-1", stated.clone()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tokenLimit"], 100_000);
    let replay = app.post_usage_keyed(&backend, "k-1", stated).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let other_plan = json!({"tokens": 20_000, "userId": "plan-stated", "userType": "trial"});
    let response = app.post_usage_keyed(&backend, "k-1", other_plan).await;
    assert_error(response, 422, "idempotency_key_reused").await;

    let own = json!({"tokens": 1, "userType": "subscribed"});
    let body = assert_error(
        app.post_usage(&token("plan-self"), own).await,
        400,
        "invalid_request",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("userType")
    );
}

/// A looked-up plan is remembered for the configured time, then looked up again.
#[tokio::test]
async fn a_looked_up_plan_is_remembered_for_the_configured_time() {
    let auth = auth_emulator::shared().await;
    auth.set_claims(PROJECT, "plan-cached", json!({"userType": "subscribed"}))
        .await;
    let app = spawn_app_with(&["--user-type-cache-secs=3"], |_| {}).await;
    let backend = admin_token("chat-backend");
    let limit = |body: Value| body["tokenLimit"].as_i64().unwrap();
    let record = || app.post_usage(&backend, json!({"tokens": 1, "userId": "plan-cached"}));
    assert_eq!(limit(record().await.json().await.unwrap()), 100_000);
    auth.set_claims(PROJECT, "plan-cached", json!({"userType": "trial"}))
        .await;
    assert_eq!(limit(record().await.json().await.unwrap()), 100_000);
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    assert_eq!(limit(record().await.json().await.unwrap()), 10_000);
}

/// When the plan cannot be learned, nothing is guessed and nothing is written.
#[tokio::test]
async fn an_unreachable_directory_is_503_and_writes_nothing() {
    let closed = format!("127.0.0.1:{}", emulator::free_port());
    let app = spawn_app_with(&[], |config| {
        config.auth_emulator_for_lookups = Some(closed)
    })
    .await;
    let response = app
        .post_usage(
            &admin_token("chat-backend"),
            json!({"tokens": 5, "userId": "plan-lost"}),
        )
        .await;
    assert_error(response, 503, "unavailable").await;
    assert_eq!(app.today(&token("plan-lost")).await["tokensUsed"], 0);
}
