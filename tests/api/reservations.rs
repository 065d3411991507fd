//! Reservations for streamed replies: hold an estimate, then commit the actual or release it.
//! Concurrency on the embedded store and across three instances on Firestore; expiry and
//! midnight through the service's clock.

use std::sync::Arc;

use chrono::Duration;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::emulator;
use crate::firestore::instance;
use crate::helpers::*;

impl TestApp {
    pub async fn reserve(&self, token: &str, body: Value, key: Option<&str>) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/usage/reservations"))
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    pub async fn commit(&self, token: &str, id: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/usage/reservations/{id}/commit")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn release(&self, token: &str, id: &str) -> reqwest::Response {
        self.client
            .delete(self.url(&format!("/usage/reservations/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Holds `tokens` and returns the reservation's id.
    async fn held(&self, token: &str, body: Value) -> String {
        let response = self.reserve(token, body, None).await;
        assert_eq!(response.status(), 201);
        let answer: Value = response.json().await.unwrap();
        answer["id"].as_str().unwrap().to_owned()
    }
}

fn replayed(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.as_bytes())
        == Some(b"true")
}

/// Every answer that admitted something shows the day right after it: what is used plus what
/// is held never exceeds the limit there.
fn assert_within_limit(answer: &Value) {
    let usage = answer.get("usage").unwrap_or(answer);
    let used = usage["tokensUsed"].as_i64().unwrap();
    let held = usage["reservedTokens"].as_i64().unwrap();
    let limit = usage["tokenLimit"].as_i64().unwrap();
    assert!(
        used + held <= limit,
        "over the limit at an admission: {answer}"
    );
    assert_eq!(usage["remaining"], limit - used - held, "{answer}");
}

#[tokio::test]
async fn a_reservation_holds_then_commits_the_actual_once() {
    let app = spawn_app().await;
    let alice = token("alice");
    let response = app.reserve(&alice, json!({"tokens": 4000}), None).await;
    assert_eq!(response.status(), 201);
    let held: Value = response.json().await.unwrap();
    assert_eq!(held["status"], "held");
    assert_eq!(held["tokens"], 4000);
    assert_eq!(held["usage"]["reservedTokens"], 4000);
    assert_eq!(held["usage"]["tokensUsed"], 0);
    assert_eq!(held["usage"]["remaining"], 6000);
    let created =
        chrono::DateTime::parse_from_rfc3339(held["createdAt"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(held["expiresAt"].as_str().unwrap()).unwrap();
    // At least the ttl, to the next whole second.
    let ttl = (expires - created).num_milliseconds();
    assert!((600_000..601_000).contains(&ttl), "default ttl {ttl} ms");

    let today = app.today(&alice).await;
    assert_eq!(
        (today["reservedTokens"].clone(), today["remaining"].clone()),
        (json!(4000), json!(6000))
    );
    // A plain record counts the hold too.
    let over = app.post_usage(&alice, json!({"tokens": 6001})).await;
    assert_eq!(over.status(), 429);

    let id = held["id"].as_str().unwrap();
    let response = app.commit(&alice, id, json!({"tokens": 4200})).await;
    assert_eq!(response.status(), 200);
    assert!(!replayed(&response));
    let committed: Value = response.json().await.unwrap();
    assert_eq!(committed["status"], "committed");
    assert_eq!(committed["committedTokens"], 4200);
    assert_eq!(committed["overage"], 200);
    assert_eq!(committed["usage"]["tokensUsed"], 4200);
    assert_eq!(committed["usage"]["reservedTokens"], 0);

    let again = app.commit(&alice, id, json!({"tokens": 4200})).await;
    assert_eq!(again.status(), 200);
    assert!(replayed(&again));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, committed, "a replay answers as the commit did");
    assert_error(
        app.commit(&alice, id, json!({"tokens": 10})).await,
        409,
        "reservation_committed",
    )
    .await;
    assert_error(app.release(&alice, id).await, 409, "reservation_committed").await;

    assert_eq!(app.today(&alice).await["tokensUsed"], 4200);
    assert_eq!(app.history(&alice).await[0]["totalMonthlyTokens"], 4200);
}

#[tokio::test]
async fn a_release_records_nothing_and_frees_the_hold() {
    let app = spawn_app().await;
    let alice = token("alice");
    let id = app.held(&alice, json!({"tokens": 10_000})).await;
    assert_eq!(
        app.post_usage(&alice, json!({"tokens": 1})).await.status(),
        429
    );
    let response = app.release(&alice, &id).await;
    assert_eq!(response.status(), 200);
    let released: Value = response.json().await.unwrap();
    assert_eq!(released["status"], "released");
    assert_eq!(released["usage"]["reservedTokens"], 0);
    assert!(released.get("committedTokens").is_none());
    let again = app.release(&alice, &id).await;
    assert_eq!(again.status(), 200);
    assert!(replayed(&again));
    assert_error(
        app.commit(&alice, &id, json!({"tokens": 5})).await,
        409,
        "reservation_released",
    )
    .await;
    assert_eq!(app.today(&alice).await["tokensUsed"], 0);
    assert_eq!(
        app.post_usage(&alice, json!({"tokens": 10_000}))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn bad_requests_are_clear_errors_and_hold_nothing() {
    let app = spawn_app_with(
        &[
            "--reservation-max-ttl-secs=120",
            "--reservation-default-ttl-secs=60",
        ],
        |_| {},
    )
    .await;
    let alice = token("alice");
    for body in [
        json!({"tokens": 0}),
        json!({"tokens": 10, "ttlSeconds": 0}),
        json!({"tokens": 10, "ttlSeconds": 121}),
        json!({"tokens": 10, "ttl": 60}),
        json!({"tokens": "10"}),
    ] {
        let status = app.reserve(&alice, body.clone(), None).await.status();
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(app.today(&alice).await["reservedTokens"], 0);
    assert_error(
        app.reserve(&alice, json!({"tokens": 10, "userId": "bob"}), None)
            .await,
        403,
        "forbidden",
    )
    .await;

    let id = app
        .held(&alice, json!({"tokens": 10, "ttlSeconds": 120}))
        .await;
    // Another user cannot see, commit or release it; an admin acting for alice can.
    let bob = token("bob");
    assert_error(
        app.commit(&bob, &id, json!({"tokens": 5})).await,
        404,
        "reservation_not_found",
    )
    .await;
    assert_error(app.release(&bob, &id).await, 404, "reservation_not_found").await;
    assert_error(
        app.commit(&bob, &id, json!({"tokens": 5, "userId": "alice"}))
            .await,
        403,
        "forbidden",
    )
    .await;
    for unknown in [
        "nope",
        "20240115-1705314600-9F86D081884C7D65",
        "20991231-4102444800-0123456789abcdef",
    ] {
        assert_error(
            app.release(&alice, unknown).await,
            404,
            "reservation_not_found",
        )
        .await;
    }
    assert_error(
        app.commit(&alice, &id, json!({"tokens": 5, "extra": 1}))
            .await,
        400,
        "invalid_request",
    )
    .await;
    let admin = admin_token("ops");
    let response = app
        .commit(&admin, &id, json!({"tokens": 7, "userId": "alice"}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(app.today(&alice).await["tokensUsed"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_reservations_admit_exactly_33() {
    let app = Arc::new(spawn_app().await);
    let alice = token("alice");
    let mut running = JoinSet::new();
    for _ in 0..200 {
        let (app, alice) = (app.clone(), alice.clone());
        running.spawn(async move {
            let response = app.reserve(&alice, json!({"tokens": 300}), None).await;
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        });
    }
    let answers = running.join_all().await;
    let ids: Vec<String> = answers
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, answer)| {
            assert_within_limit(answer);
            answer["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 33);
    assert!(
        answers
            .iter()
            .all(|(status, _)| [201, 429].contains(status))
    );
    let today = app.today(&alice).await;
    assert_eq!(
        (today["reservedTokens"].clone(), today["tokensUsed"].clone()),
        (json!(9_900), json!(0))
    );

    // Each reservation committed twice at once, with what its reply spent: each counts once.
    let mut running = JoinSet::new();
    for id in ids.iter().chain(&ids) {
        let (app, alice, id) = (app.clone(), alice.clone(), id.clone());
        running.spawn(async move {
            let response = app.commit(&alice, &id, json!({"tokens": 250})).await;
            (response.status().as_u16(), replayed(&response))
        });
    }
    let commits = running.join_all().await;
    assert!(
        commits.iter().all(|(status, _)| *status == 200),
        "{commits:?}"
    );
    assert_eq!(commits.iter().filter(|(_, again)| *again).count(), 33);
    let today = app.today(&alice).await;
    assert_eq!(
        (today["reservedTokens"].clone(), today["tokensUsed"].clone()),
        (json!(0), json!(8_250))
    );
    assert_eq!(app.history(&alice).await[0]["totalMonthlyTokens"], 8_250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn holds_and_records_together_never_exceed_the_limit() {
    let app = Arc::new(spawn_app().await);
    let alice = token("alice");
    let mut running = JoinSet::new();
    for i in 0..120 {
        let (app, alice) = (app.clone(), alice.clone());
        running.spawn(async move {
            if i % 2 == 0 {
                let response = app.post_usage(&alice, json!({"tokens": 150})).await;
                let status = response.status().as_u16();
                let answer: Value = response.json().await.unwrap();
                if status == 200 {
                    assert_within_limit(&answer);
                }
                return (status, 0);
            }
            let response = app.reserve(&alice, json!({"tokens": 300}), None).await;
            let status = response.status().as_u16();
            let answer: Value = response.json().await.unwrap();
            if status != 201 {
                return (status, 0);
            }
            assert_within_limit(&answer);
            // Replies that end early commit less than they held, or nothing at all.
            let id = answer["id"].as_str().unwrap();
            let spent = if i % 4 == 1 { 200 } else { 0 };
            let settled = if spent > 0 {
                app.commit(&alice, id, json!({"tokens": spent})).await
            } else {
                app.release(&alice, id).await
            };
            assert_eq!(settled.status(), 200);
            (201, spent)
        });
    }
    let results = running.join_all().await;
    let recorded: i64 = results
        .iter()
        .map(|(status, spent)| if *status == 200 { 150 } else { *spent })
        .sum();
    let today = app.today(&alice).await;
    assert_eq!(today["tokensUsed"], recorded);
    assert_eq!(today["reservedTokens"], 0);
    assert!(recorded <= 10_000);
    assert_eq!(app.history(&alice).await[0]["totalMonthlyTokens"], recorded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_reservation_holds_once() {
    let app = Arc::new(spawn_app().await);
    let alice = token("alice");
    let mut running = JoinSet::new();
    for _ in 0..30 {
        let (app, alice) = (app.clone(), alice.clone());
        running.spawn(async move {
            let response = app
                .reserve(&alice, json!({"tokens": 3000}), Some("reply-7"))
                .await;
            let again = replayed(&response);
            let status = response.status().as_u16();
            (
                status,
                again,
                response.json::<Value>().await.unwrap()["id"].clone(),
            )
        });
    }
    let answers = running.join_all().await;
    assert!(
        answers
            .iter()
            .all(|(status, _, id)| *status == 201 && *id == answers[0].2),
        "{answers:?}"
    );
    assert_eq!(answers.iter().filter(|(_, again, _)| !again).count(), 1);
    assert_eq!(app.today(&alice).await["reservedTokens"], 3000);
    // The same key for another body, or for a plain record, is refused.
    assert_error(
        app.reserve(&alice, json!({"tokens": 3001}), Some("reply-7"))
            .await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_error(
        app.post_usage_keyed(&alice, "reply-7", json!({"tokens": 3000}))
            .await,
        422,
        "idempotency_key_reused",
    )
    .await;
}

#[tokio::test]
async fn an_expired_hold_frees_its_tokens_at_that_instant() {
    let clock = TestClock::at("2024-03-10T12:00:00Z");
    let app = spawn_app_timed(
        JwksServer::start(&[KEY_1]).await,
        &[
            "--reservation-max-ttl-secs=900",
            "--reservation-commit-grace-secs=30",
        ],
        |_| {},
        clock.clone(),
    )
    .await;
    let alice = token("alice");
    // A leaked hold of the whole day, for the longest a client may ask.
    let leaked = app
        .held(&alice, json!({"tokens": 10_000, "ttlSeconds": 900}))
        .await;
    let expires = "2024-03-10T12:15:00Z";
    clock.set("2024-03-10T12:14:59.999Z");
    assert_eq!(
        app.post_usage(&alice, json!({"tokens": 1})).await.status(),
        429
    );
    assert_eq!(app.today(&alice).await["reservedTokens"], 10_000);
    clock.set(expires);
    assert_eq!(app.today(&alice).await["reservedTokens"], 0);
    let response = app.post_usage(&alice, json!({"tokens": 1})).await;
    assert_eq!(response.status(), 200);
    // Releasing an expired hold is 410; within the grace its commit still records.
    assert_error(
        app.release(&alice, &leaked).await,
        410,
        "reservation_expired",
    )
    .await;
    clock.set("2024-03-10T12:15:29Z");
    let late = app.commit(&alice, &leaked, json!({"tokens": 40})).await;
    assert_eq!(late.status(), 200);
    assert_eq!(app.today(&alice).await["tokensUsed"], 41);

    let other = app
        .held(&alice, json!({"tokens": 100, "ttlSeconds": 60}))
        .await;
    clock.set("2024-03-10T12:16:59Z");
    assert_error(
        app.commit(&alice, &other, json!({"tokens": 40})).await,
        410,
        "reservation_expired",
    )
    .await;
    // Long after, with its entry gone, the id still says it expired.
    clock.advance(Duration::hours(3));
    assert_error(
        app.commit(&alice, &other, json!({"tokens": 40})).await,
        410,
        "reservation_expired",
    )
    .await;
    assert_eq!(
        app.post_usage(&alice, json!({"tokens": 1})).await.status(),
        200
    );
    let day: Value = app.today(&alice).await;
    assert_eq!(
        (day["tokensUsed"].clone(), day["reservedTokens"].clone()),
        (json!(42), json!(0))
    );
}

#[tokio::test]
async fn a_reservation_committed_after_midnight_lands_on_its_day() {
    let clock = TestClock::at("2024-03-10T04:59:59Z");
    let app = spawn_app_timed(
        JwksServer::start(&[KEY_1]).await,
        &["--reset-timezone=America/New_York"],
        |_| {},
        clock.clone(),
    )
    .await;
    let alice = token("alice");
    // 23:59:59 on the 9th in New York.
    let response = app.reserve(&alice, json!({"tokens": 500}), None).await;
    let held: Value = response.json().await.unwrap();
    assert_eq!(held["date"], "2024-03-09");
    clock.advance(Duration::seconds(2));
    let committed: Value = app
        .commit(&alice, held["id"].as_str().unwrap(), json!({"tokens": 700}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(committed["usage"]["date"], "2024-03-09");
    assert_eq!(committed["usage"]["tokensUsed"], 700);
    let today = app.today(&alice).await;
    assert_eq!(
        (today["date"].clone(), today["tokensUsed"].clone()),
        (json!("2024-03-10"), json!(0))
    );
    let march = &app.history(&alice).await[0];
    assert_eq!(march["dailyUsage"], json!({"09": 700}));
}

#[tokio::test]
async fn reservations_are_counted_in_the_metrics() {
    let app = spawn_app().await;
    let alice = token("alice");
    let scrape = || async {
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let count = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing"))
    };
    let before = scrape().await;
    let committed = app.held(&alice, json!({"tokens": 300})).await;
    let released = app.held(&alice, json!({"tokens": 200})).await;
    app.commit(&alice, &committed, json!({"tokens": 350})).await;
    app.release(&alice, &released).await;
    let after = scrape().await;
    // Other tests run in this process too: counts only grow, by at least this test's.
    for (series, at_least) in [
        (r#"token_limits_reservations_total{event="opened"}"#, 2.0),
        (r#"token_limits_reservations_total{event="committed"}"#, 1.0),
        (r#"token_limits_reservations_total{event="released"}"#, 1.0),
        (
            r#"token_limits_reservation_tokens_total{event="held"}"#,
            500.0,
        ),
        (
            r#"token_limits_reservation_tokens_total{event="freed"}"#,
            500.0,
        ),
        (
            r#"token_limits_reservation_tokens_total{event="committed"}"#,
            350.0,
        ),
    ] {
        let grew = count(&after, series) - count(&before, series);
        assert!(grew >= at_least, "{series} grew by {grew}");
    }
    assert!(before.contains(r#"token_limits_reservations_total{event="expired"} "#));
}

/// Reserves with a key per reservation, retrying a 503 with the same key as a client would,
/// until each has a definitive answer.
async fn reserve_until_answered(app: &TestApp, token: &str, key: &str) -> (u16, Value) {
    loop {
        let response = app.reserve(token, json!({"tokens": 300}), Some(key)).await;
        let status = response.status().as_u16();
        if status != 503 {
            return (status, response.json().await.unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_firestore_admit_exactly_33() {
    let emulator = emulator::shared().await;
    let project = emulator::unique_project("reservations");
    emulator.clear(&project).await;
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(Arc::new(instance(&emulator.host(), &project, &[]).await));
    }
    let alice = token("alice");
    let mut running = JoinSet::new();
    for i in 0..200 {
        let (app, alice) = (apps[i % 3].clone(), alice.clone());
        running.spawn(async move {
            let key = format!("reply-{i}");
            (
                key.clone(),
                reserve_until_answered(&app, &alice, &key).await,
            )
        });
    }
    let answers = running.join_all().await;
    let held: Vec<&Value> = answers
        .iter()
        .filter(|(_, (status, _))| *status == 201)
        .map(|(_, (_, answer))| answer)
        .collect();
    assert_eq!(
        held.len(),
        33,
        "{:?}",
        answers.iter().map(|(_, (s, _))| s).collect::<Vec<_>>()
    );
    for answer in &held {
        assert_within_limit(answer);
    }
    for app in &apps {
        assert_eq!(app.today(&alice).await["reservedTokens"], 9_900);
    }

    // A reservation whose answer was lost, retried on another instance, holds once.
    let (key, (_, first)) = answers
        .iter()
        .find(|(_, (status, _))| *status == 201)
        .unwrap();
    let retried = apps[0]
        .reserve(&alice, json!({"tokens": 300}), Some(key))
        .await;
    assert_eq!(retried.status(), 201);
    assert!(replayed(&retried));
    assert_eq!(retried.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(apps[1].today(&alice).await["reservedTokens"], 9_900);

    // Each commit sent at once to two instances.
    let mut running = JoinSet::new();
    for (i, answer) in held.iter().enumerate() {
        for app in [apps[i % 3].clone(), apps[(i + 1) % 3].clone()] {
            let (alice, id) = (alice.clone(), answer["id"].as_str().unwrap().to_owned());
            running.spawn(async move {
                loop {
                    let response = app.commit(&alice, &id, json!({"tokens": 300})).await;
                    if response.status() != 503 {
                        return response.status().as_u16();
                    }
                }
            });
        }
    }
    let commits = running.join_all().await;
    assert!(commits.iter().all(|status| *status == 200), "{commits:?}");
    for app in &apps {
        let today = app.today(&alice).await;
        assert_eq!(
            (today["tokensUsed"].clone(), today["reservedTokens"].clone()),
            (json!(9_900), json!(0))
        );
        assert_eq!(app.history(&alice).await[0]["totalMonthlyTokens"], 9_900);
    }
}

/// A reservation id is the client's text: one whose expiry is seconds before the last instant
/// a timestamp can name is no reservation, answered 404 like any other unknown id.
#[tokio::test]
async fn an_id_expiring_at_the_end_of_time_is_not_found() {
    let app = spawn_app().await;
    let alice = token("alice");
    let id = "20240115-8210266876790-0123456789abcdef";
    assert_error(app.release(&alice, id).await, 404, "reservation_not_found").await;
    assert_error(
        app.commit(&alice, id, json!({"tokens": 5})).await,
        404,
        "reservation_not_found",
    )
    .await;
}
