//! Per-user overrides and the audit trail, on both stores: an override raises and lowers the
//! next decision at once and expires on time, on every instance; every change is audited in
//! the same commit; nobody but an admin may touch them.

use serde_json::{Value, json};

use crate::emulator;
use crate::firestore::instance_timed;
use crate::helpers::*;

#[derive(Clone, Copy, Debug)]
enum Store {
    Sqlite,
    Firestore,
}

/// The chat backend's uid: its records for other users are not audited.
const UNAUDITED: &str = "--unaudited-recorders=chat-backend";

async fn instances(store: Store, count: usize, clock: &std::sync::Arc<TestClock>) -> Vec<TestApp> {
    let mut apps = Vec::new();
    match store {
        Store::Sqlite => {
            apps.push(
                spawn_app_timed(
                    JwksServer::start(&[KEY_1]).await,
                    &["--daily-limit-trial=100", UNAUDITED],
                    |_| {},
                    clock.clone(),
                )
                .await,
            );
        }
        Store::Firestore => {
            let emulator = emulator::shared().await;
            let project = emulator::unique_project("overrides");
            for _ in 0..count {
                let flags = ["--daily-limit-trial=100", UNAUDITED];
                apps.push(instance_timed(&emulator.host(), &project, &flags, clock.clone()).await);
            }
        }
    }
    apps
}

async fn put_override(app: &TestApp, user: &str, body: Value) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/admin/users/{user}/limit")))
        .bearer_auth(admin_token("support"))
        .header("Idempotency-Key", "ticket-7")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The longest an override set on one instance may take to apply on another: on Firestore,
/// how old the listener's copy may be (SQLite reads the file itself).
const OVERRIDE_STALENESS: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until every instance judges `uid` by `limit`, for at most the staleness bound (and a
/// second of slack for the test's own requests).
async fn until_every_instance_sees(apps: &[TestApp], uid: &str, limit: i64) {
    let started = std::time::Instant::now();
    for app in apps {
        loop {
            let seen = app.today(&token(uid)).await["tokenLimit"].clone();
            if seen == limit {
                break;
            }
            assert!(
                started.elapsed() < OVERRIDE_STALENESS + std::time::Duration::from_secs(1),
                "{uid}'s limit still {seen}, not {limit}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

async fn status_of(app: &TestApp, uid: &str, tokens: i64) -> u16 {
    app.post_usage(&token(uid), json!({ "tokens": tokens }))
        .await
        .status()
        .as_u16()
}

/// Raised, the next request is admitted on every instance once the change has reached it
/// (within the staleness bound); lowered, refused; expired, the configured limit is back on
/// every instance at the instant of expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_override_steers_the_next_decision_on_every_instance_until_it_expires() {
    for store in [Store::Sqlite, Store::Firestore] {
        let clock = TestClock::at("2026-01-20T10:00:00Z");
        let apps = instances(store, 3, &clock).await;
        let first = &apps[0];
        assert_eq!(status_of(first, "alice", 100).await, 200, "{store:?}");
        for app in &apps {
            assert_eq!(status_of(app, "alice", 50).await, 429, "{store:?}");
        }

        let raised = put_override(
            first,
            "alice",
            json!({"dailyLimit": 1000, "expiresAt": "2026-01-21T00:00:00Z", "reason": "launch week"}),
        )
        .await;
        assert_eq!(raised.status(), 200);
        let body: Value = raised.json().await.unwrap();
        assert_eq!(body["override"]["dailyLimit"], 1000, "{body}");
        assert_eq!(body["previous"], Value::Null);
        until_every_instance_sees(&apps, "alice", 1000).await;
        for app in &apps {
            let response = app.post_usage(&token("alice"), json!({"tokens": 50})).await;
            assert_eq!(response.status(), 200, "{store:?}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["tokenLimit"], 1000);
        }
        assert_eq!(first.today(&token("alice")).await["tokenLimit"], 1000);

        // Lowered below what is used: refused at once, everywhere.
        let lowered = put_override(
            first,
            "alice",
            json!({"dailyLimit": 10, "monthlyLimit": 100000, "reason": "abuse report"}),
        )
        .await;
        let body: Value = lowered.json().await.unwrap();
        assert_eq!(body["previous"]["dailyLimit"], 1000, "{body}");
        until_every_instance_sees(&apps, "alice", 10).await;
        for app in &apps {
            assert_eq!(status_of(app, "alice", 1).await, 429, "{store:?}");
        }

        // Raised again until 10:30; at 10:30 exactly it no longer applies.
        put_override(
            first,
            "alice",
            json!({"dailyLimit": 1000, "expiresAt": "2026-01-20T10:30:00Z", "reason": "retry"}),
        )
        .await;
        until_every_instance_sees(&apps, "alice", 1000).await;
        clock.set("2026-01-20T10:29:59.999Z");
        assert_eq!(status_of(&apps[apps.len() - 1], "alice", 1).await, 200);
        clock.set("2026-01-20T10:30:00Z");
        for app in &apps {
            assert_eq!(status_of(app, "alice", 1).await, 429, "{store:?}");
            assert_eq!(app.today(&token("alice")).await["tokenLimit"], 100);
        }
        let listed: Value = first
            .get(&admin_token("support"), "/admin/limits")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            listed["items"],
            json!([]),
            "an expired override is not listed"
        );
        let stored: Value = first
            .get(&admin_token("support"), "/admin/users/alice/limit")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(stored["active"], false);
    }
}

/// Every change is in the audit trail, newest first, with who, what before and after, the
/// key and the reason; filters and pages work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_override_change_is_audited() {
    for store in [Store::Sqlite, Store::Firestore] {
        let clock = TestClock::at("2026-01-20T10:00:00Z");
        let app = instances(store, 1, &clock).await.remove(0);
        put_override(&app, "alice", json!({"dailyLimit": 500, "reason": "first"})).await;
        clock.set("2026-01-20T10:00:01Z");
        put_override(&app, "bob", json!({"dailyLimit": 700, "reason": "second"})).await;
        clock.set("2026-01-20T10:00:02Z");
        let removed = app
            .client
            .delete(app.url("/admin/users/alice/limit?reason=resolved"))
            .bearer_auth(admin_token("lead"))
            .send()
            .await
            .unwrap();
        assert_eq!(removed.status(), 200, "{store:?}");
        let again = app
            .client
            .delete(app.url("/admin/users/alice/limit"))
            .bearer_auth(admin_token("lead"))
            .send()
            .await
            .unwrap();
        assert_error(again, 404, "override_not_found").await;

        let admin = admin_token("auditor");
        let page: Value = app.get(&admin, "/admin/audit").await.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        let summary: Vec<(&str, &str, &str)> = items
            .iter()
            .map(|entry| {
                (
                    entry["action"].as_str().unwrap(),
                    entry["userId"].as_str().unwrap(),
                    entry["actor"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("override_removed", "alice", "lead"),
                ("override_set", "bob", "support"),
                ("override_set", "alice", "support"),
            ],
            "{store:?}"
        );
        let removal = &items[0];
        assert_eq!(removal["before"]["dailyLimit"], 500);
        assert_eq!(removal["after"], Value::Null);
        assert_eq!(removal["reason"], "resolved");
        assert_eq!(removal["at"], "2026-01-20T10:00:02Z");
        assert_eq!(items[2]["after"]["dailyLimit"], 500);
        assert_eq!(items[2]["idempotencyKey"], "ticket-7");
        assert_eq!(items[2]["reason"], "first");

        let alice: Value = app
            .get(&admin, "/admin/audit?userId=alice&limit=1")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(alice["items"][0]["action"], "override_removed", "{store:?}");
        let token = alice["nextPageToken"].as_str().unwrap();
        let next: Value = app
            .get(
                &admin,
                &format!("/admin/audit?userId=alice&limit=1&pageToken={token}"),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(next["items"][0]["action"], "override_set", "{store:?}");
        assert_eq!(next["nextPageToken"], Value::Null);
        let by_lead: Value = app
            .get(&admin, "/admin/audit?actor=lead")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(by_lead["items"].as_array().unwrap().len(), 1);
        let since: Value = app
            .get(&admin, "/admin/audit?since=2026-01-20T10:00:01Z")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(since["items"].as_array().unwrap().len(), 2, "{store:?}");
    }
}

#[tokio::test]
async fn bad_overrides_are_400_and_write_nothing() {
    let app = spawn_app_with(&["--override-max-days=30"], |_| {}).await;
    let far = (chrono::Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    for (body, named) in [
        (json!({"dailyLimit": -1, "reason": "x"}), "dailyLimit"),
        (
            json!({"dailyLimit": 1, "monthlyLimit": 1_000_000_000_001_i64, "reason": "x"}),
            "monthlyLimit",
        ),
        (json!({"dailyLimit": 1, "reason": " "}), "reason"),
        (json!({"dailyLimit": 1}), "reason"),
        (
            json!({"dailyLimit": 1, "reason": "x", "expiresAt": "2020-01-01T00:00:00Z"}),
            "expiresAt",
        ),
        (
            json!({"dailyLimit": 1, "reason": "x", "expiresAt": far}),
            "expiresAt",
        ),
        (
            json!({"dailyLimit": 1, "reason": "x", "enforcement": "audit"}),
            "enforcement",
        ),
        (json!({"dailyLimit": 1, "reason": "x", "extra": 1}), "extra"),
    ] {
        let response = put_override(&app, "alice", body.clone()).await;
        let error = assert_error(response, 400, "invalid_request").await;
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{body}: {message}");
    }
    let response = app
        .client
        .put(app.url("/admin/users/alice/limit"))
        .bearer_auth(token("alice"))
        .json(&json!({"dailyLimit": 1_000_000, "reason": "me"}))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "forbidden").await;
    let audit: Value = app
        .get(&admin_token("auditor"), "/admin/audit")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"], json!([]));
    assert_error(
        app.get(&admin_token("auditor"), "/admin/users/alice/limit")
            .await,
        404,
        "override_not_found",
    )
    .await;
}

/// A reset sets the day to 0 and its month entry with it, is audited in the same write, and
/// with its key replays once: retried, it neither resets again nor audits twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_is_audited_and_replays_once() {
    for store in [Store::Sqlite, Store::Firestore] {
        let clock = TestClock::at("2026-01-19T10:00:00Z");
        let app = instances(store, 1, &clock).await.remove(0);
        let alice = token("alice");
        assert_eq!(status_of(&app, "alice", 30).await, 200);
        clock.set("2026-01-20T10:00:00Z");
        assert_eq!(status_of(&app, "alice", 100).await, 200);
        assert_eq!(status_of(&app, "alice", 1).await, 429);

        let reset = || async {
            app.client
                .post(app.url("/admin/users/alice/reset"))
                .bearer_auth(admin_token("support"))
                .header("Idempotency-Key", "reset-ticket-9")
                .json(&json!({"reason": "billing error, ticket 9"}))
                .send()
                .await
                .unwrap()
        };
        let first = reset().await;
        assert_eq!(first.status(), 200, "{store:?}");
        assert!(!first.headers().contains_key("idempotent-replayed"));
        let body: Value = first.json().await.unwrap();
        assert_eq!(
            (&body["usage"]["tokensUsed"], &body["tokensBefore"]),
            (&json!(0), &json!(100)),
            "{body}"
        );
        assert_eq!(body["usage"]["monthlyTokensUsed"], 30);
        // Spent again after the reset, then the retry: replayed, not reset again.
        assert_eq!(status_of(&app, "alice", 40).await, 200);
        let retry = reset().await;
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(app.today(&alice).await["tokensUsed"], 40, "{store:?}");
        let month = &app.history(&alice).await[0];
        assert_eq!(
            month["dailyUsage"],
            json!({"19": 30, "20": 40}),
            "{store:?}"
        );
        assert_eq!(month["totalMonthlyTokens"], 70);

        let audit: Value = app
            .get(&admin_token("auditor"), "/admin/audit?userId=alice")
            .await
            .json()
            .await
            .unwrap();
        let entries = audit["items"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{store:?}: {audit}");
        let entry = &entries[0];
        assert_eq!(
            (
                &entry["action"],
                &entry["actor"],
                &entry["reason"],
                &entry["idempotencyKey"]
            ),
            (
                &json!("usage_reset"),
                &json!("support"),
                &json!("billing error, ticket 9"),
                &json!("reset-ticket-9")
            )
        );
        assert_eq!(
            entry["before"],
            json!({"date": "2026-01-20", "tokensUsed": 100})
        );
        assert_eq!(
            entry["after"],
            json!({"date": "2026-01-20", "tokensUsed": 0})
        );

        // Yesterday, named: its month entry goes with it; a future day is refused.
        let yesterday = app
            .client
            .post(app.url("/admin/users/alice/reset"))
            .bearer_auth(admin_token("support"))
            .json(&json!({"date": "2026-01-19", "reason": "also"}))
            .send()
            .await
            .unwrap();
        assert_eq!(yesterday.status(), 200);
        let month = &app.history(&alice).await[0];
        assert_eq!(month["dailyUsage"], json!({"19": 0, "20": 40}), "{store:?}");
        let future = app
            .client
            .post(app.url("/admin/users/alice/reset"))
            .bearer_auth(admin_token("support"))
            .json(&json!({"date": "2026-01-21", "reason": "no"}))
            .send()
            .await
            .unwrap();
        assert_error(future, 400, "invalid_request").await;
        let not_admin = app
            .client
            .post(app.url("/admin/users/alice/reset"))
            .bearer_auth(token("alice"))
            .json(&json!({"reason": "me"}))
            .send()
            .await
            .unwrap();
        assert_error(not_admin, 403, "forbidden").await;
    }
}

/// What an admin records for another user, by `POST /usage` or a reservation's commit, is
/// audited with it, once however often it is retried; refusals, a user's own records and the
/// chat backend's named in `UNAUDITED_RECORDERS` are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_an_admin_records_for_another_user_is_audited() {
    for store in [Store::Sqlite, Store::Firestore] {
        let clock = TestClock::at("2026-01-20T10:00:00Z");
        let app = instances(store, 1, &clock).await.remove(0);
        let support = admin_token("support");
        let for_bob = |tokens: i64| json!({"userId": "bob", "userType": "trial", "tokens": tokens});
        for _ in 0..2 {
            let answer = app.post_usage_keyed(&support, "fix-1", for_bob(10)).await;
            assert_eq!(answer.status(), 200, "{store:?}");
        }
        let backend = app
            .post_usage(&admin_token("chat-backend"), for_bob(5))
            .await;
        assert_eq!(backend.status(), 200);
        assert_eq!(
            app.post_usage(&token("bob"), json!({"tokens": 1}))
                .await
                .status(),
            200
        );
        let refused = app.post_usage(&support, for_bob(1_000)).await;
        assert_eq!(refused.status(), 429);

        // Entries of one millisecond have no order among them.
        clock.advance(chrono::Duration::seconds(1));
        let reservation: Value = app
            .client
            .post(app.url("/usage/reservations"))
            .bearer_auth(&support)
            .json(&for_bob(20))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = reservation["id"].as_str().expect("a reservation");
        let commit = app
            .client
            .post(app.url(&format!("/usage/reservations/{id}/commit")))
            .bearer_auth(&support)
            .json(&json!({"userId": "bob", "tokens": 7}))
            .send()
            .await
            .unwrap();
        assert_eq!(commit.status(), 200, "{store:?}");

        let audit: Value = app
            .get(&admin_token("auditor"), "/admin/audit?userId=bob")
            .await
            .json()
            .await
            .unwrap();
        let entries = audit["items"].as_array().unwrap();
        let summary: Vec<_> = entries
            .iter()
            .map(|entry| {
                (
                    entry["action"].clone(),
                    entry["actor"].clone(),
                    entry["before"]["tokensUsed"].clone(),
                    entry["after"]["tokensUsed"].clone(),
                    entry["idempotencyKey"].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    json!("usage_recorded"),
                    json!("support"),
                    json!(16),
                    json!(23),
                    Value::Null
                ),
                (
                    json!("usage_recorded"),
                    json!("support"),
                    json!(0),
                    json!(10),
                    json!("fix-1")
                ),
            ],
            "{store:?}: {audit}"
        );
        assert_eq!(entries[1]["after"]["date"], "2026-01-20");
    }
}
