//! Limits an operator steers, on both stores: monthly caps beside the daily limit, rollout
//! modes (enforce, shadow, off), the soft-limit warning, the IETF RateLimit fields, and
//! failing open by choice while the store is down.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sfv::{BareItem, List, ListEntry, Parser};
use tokio::task::JoinSet;

use crate::emulator::{self, Emulator};
use crate::firestore::instance_timed;
use crate::helpers::*;

#[derive(Clone, Copy, Debug)]
enum Store {
    Sqlite,
    Firestore,
}

const BOTH: [Store; 2] = [Store::Sqlite, Store::Firestore];

/// The service on `store` with `extra` flags, reading the time from `clock`; each Firestore
/// instance gets a project of its own on the shared emulator.
async fn app_on(store: Store, extra: &[&str], clock: Arc<TestClock>) -> TestApp {
    match store {
        Store::Sqlite => {
            spawn_app_timed(JwksServer::start(&[KEY_1]).await, extra, |_| {}, clock).await
        }
        Store::Firestore => {
            let emulator = emulator::shared().await;
            let project = emulator::unique_project("steering");
            instance_timed(&emulator.host(), &project, extra, clock).await
        }
    }
}

/// `count` concurrent `POST /usage` of `tokens` each for `uid`: each answer's status and body.
async fn burst(app: &TestApp, uid: &str, count: usize, tokens: i64) -> Vec<(u16, Value)> {
    let token = token(uid);
    let mut running = JoinSet::new();
    for _ in 0..count {
        let request = app
            .client
            .post(app.url("/usage"))
            .bearer_auth(&token)
            .json(&json!({ "tokens": tokens }));
        running.spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        });
    }
    running.join_all().await
}

fn count_status(answers: &[(u16, Value)], status: u16) -> usize {
    answers.iter().filter(|(s, _)| *s == status).count()
}

/// Under a monthly cap both windows are checked, under concurrency, and a refusal names the
/// window that refused and points `Retry-After` at its reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_windows_hold_under_concurrency_and_refusals_name_theirs() {
    for store in BOTH {
        let clock = TestClock::at("2026-01-19T12:00:00Z");
        let flags = ["--daily-limit-trial=500", "--monthly-limit-trial=1000"];
        let app = app_on(store, &flags, clock.clone()).await;
        let alice = token("alice");
        assert_eq!(
            app.post_usage(&alice, json!({"tokens": 400}))
                .await
                .status(),
            200
        );

        // The 20th: the day has 500 left, the month 600. The day binds.
        clock.set("2026-01-20T12:00:00Z");
        let answers = burst(&app, "alice", 200, 10).await;
        let admitted = count_status(&answers, 200);
        assert_eq!(admitted, 50, "{store:?}");
        assert_eq!(count_status(&answers, 429), 150, "{store:?}");
        assert!(answers.iter().all(
            |(status, body)| *status == 200 || body["error"]["code"] == "daily_limit_exceeded"
        ));
        let today = app.today(&alice).await;
        assert_eq!(
            (&today["tokensUsed"], &today["monthlyTokensUsed"]),
            (&json!(500), &json!(900)),
            "{store:?}"
        );
        assert_eq!(today["monthlyLimit"], 1000);
        assert_eq!(today["remaining"], 0);

        // The 21st: the day has 500 left again, the month 100. The month binds.
        clock.set("2026-01-21T12:00:00Z");
        let answers = burst(&app, "alice", 200, 10).await;
        assert_eq!(count_status(&answers, 200), 10, "{store:?}");
        assert_eq!(count_status(&answers, 429), 190, "{store:?}");
        let refusal = app.post_usage(&alice, json!({"tokens": 1})).await;
        assert_eq!(refusal.status(), 429);
        // 2026-02-01T00:00:00Z is 10 days and 12 hours away.
        assert_eq!(refusal.headers()["retry-after"], "907200");
        let body: Value = refusal.json().await.unwrap();
        assert_eq!(body["error"]["code"], "monthly_limit_exceeded", "{body}");
        assert_eq!(
            (&body["tokensUsed"], &body["remaining"]),
            (&json!(100), &json!(0))
        );
        assert_eq!(body["monthlyTokensUsed"], 1000);
        let history = app.history(&alice).await;
        assert_eq!(history[0]["totalMonthlyTokens"], 1000, "{store:?}");
    }
}

/// `shadow` refuses nothing: 200 concurrent requests are all recorded once, and exactly those
/// that `enforce` would have refused say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_records_everything_once_and_flags_what_enforce_would_refuse() {
    for store in BOTH {
        let clock = TestClock::at("2026-01-20T12:00:00Z");
        let flags = ["--daily-limit-trial=1000", "--enforcement=shadow"];
        let app = app_on(store, &flags, clock).await;
        let answers = burst(&app, "alice", 200, 10).await;
        assert_eq!(count_status(&answers, 200), 200, "{store:?}");
        let mut flagged = 0;
        for (_, body) in &answers {
            assert_eq!(
                (&body["allowed"], &body["enforced"], &body["enforcement"]),
                (&json!(true), &json!(false), &json!("shadow"))
            );
            let over = body["tokensUsed"].as_i64().unwrap() > 1000;
            assert_eq!(body["wouldExceed"], over, "{body}");
            flagged += usize::from(over);
        }
        assert_eq!(flagged, 100, "{store:?}");
        let today = app.today(&token("alice")).await;
        assert_eq!(today["tokensUsed"], 2000, "{store:?}");
        assert_eq!(today["monthlyTokensUsed"], 2000);
    }
}

/// `off` for one user type lets its requests through uncounted; the other type is enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_for_one_type_counts_nothing_of_it() {
    for store in BOTH {
        let clock = TestClock::at("2026-01-20T12:00:00Z");
        let flags = ["--daily-limit-trial=100", "--enforcement-trial=off"];
        let app = app_on(store, &flags, clock).await;
        let trial = token("trial-user");
        for _ in 0..3 {
            let response = app.post_usage(&trial, json!({"tokens": 60})).await;
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            assert_eq!(
                (&body["enforced"], &body["enforcement"], &body["tokensUsed"]),
                (&json!(false), &json!("off"), &json!(0)),
                "{store:?}"
            );
        }
        assert_eq!(app.today(&trial).await["tokensUsed"], 0);
        let subscribed = token_with("paying-user", json!({"userType": "subscribed"}));
        let body: Value = app
            .post_usage(&subscribed, json!({"tokens": 60}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (&body["enforced"], &body["enforcement"], &body["tokensUsed"]),
            (&json!(true), &json!("enforce"), &json!(60))
        );
    }
}

/// The warning comes at exactly the soft share of the binding limit, counting held tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_limit_warns_from_exactly_its_share() {
    for store in BOTH {
        let clock = TestClock::at("2026-01-20T12:00:00Z");
        let app = app_on(store, &["--daily-limit-trial=1000"], clock).await;
        let warning = |body: &Value| body["warning"].clone();
        let below: Value = app
            .post_usage(&token("below"), json!({"tokens": 799}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(warning(&below), Value::Null, "{store:?}");
        let at: Value = app
            .post_usage(&token("below"), json!({"tokens": 1}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(warning(&at), "approaching_limit", "{store:?}");
        let above: Value = app
            .post_usage(&token("above"), json!({"tokens": 801}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(warning(&above), "approaching_limit");
        // 700 used and 100 held reach 80 %.
        let held = token("held");
        app.post_usage(&held, json!({"tokens": 700})).await;
        assert_eq!(warning(&app.today(&held).await), Value::Null);
        let reserved = app
            .client
            .post(app.url("/usage/reservations"))
            .bearer_auth(&held)
            .json(&json!({"tokens": 100}))
            .send()
            .await
            .unwrap();
        assert_eq!(reserved.status(), 201);
        assert_eq!(warning(&app.today(&held).await), "approaching_limit");
    }
}

/// A RateLimit field's members: each one's name and integer parameters.
type Members = Vec<(String, Vec<(String, i64)>)>;

/// One RateLimit field, parsed as a structured-field list.
fn parse_field(value: &str) -> Members {
    let list: List = Parser::new(value).parse().unwrap();
    list.into_iter()
        .map(|entry| {
            let ListEntry::Item(item) = entry else {
                panic!("an inner list in {value}")
            };
            let BareItem::String(name) = item.bare_item else {
                panic!("a policy that is not named by a string in {value}")
            };
            let params = item
                .params
                .into_iter()
                .map(|(key, value)| {
                    let BareItem::Integer(number) = value else {
                        panic!("{key} is not an integer in {value:?}")
                    };
                    (key.as_str().to_owned(), i64::from(number))
                })
                .collect();
            (name.as_str().to_owned(), params)
        })
        .collect()
}

/// The answer's `RateLimit-Policy` and `RateLimit`, parsed.
fn fields(response: &reqwest::Response) -> (Members, Members) {
    let text = |name: &str| response.headers()[name].to_str().unwrap().to_owned();
    (
        parse_field(&text("ratelimit-policy")),
        parse_field(&text("ratelimit")),
    )
}

fn param(params: &[(String, i64)], key: &str) -> i64 {
    params.iter().find(|(k, _)| k == key).unwrap().1
}

/// Every usage answer carries RateLimit-Policy and RateLimit as structured fields that agree
/// with its body: admitted, refused, reserved, and read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_fields_parse_and_agree_with_the_body() {
    for store in BOTH {
        let clock = TestClock::at("2026-01-20T23:00:00Z");
        let flags = ["--daily-limit-trial=1000", "--monthly-limit-trial=5000"];
        let app = app_on(store, &flags, clock).await;
        let alice = token("alice");

        let admitted = app.post_usage(&alice, json!({"tokens": 250})).await;
        let (policies, limit) = fields(&admitted);
        let names: Vec<&str> = policies.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["daily", "monthly"], "{store:?}");
        assert_eq!(param(&policies[0].1, "q"), 1000);
        assert_eq!(param(&policies[0].1, "w"), 86_400);
        assert_eq!(param(&policies[1].1, "q"), 5000);
        assert_eq!(param(&policies[1].1, "w"), 31 * 86_400);
        let body: Value = admitted.json().await.unwrap();
        assert_eq!(limit[0].0, "daily");
        assert_eq!(param(&limit[0].1, "r"), body["remaining"].as_i64().unwrap());
        assert_eq!(param(&limit[0].1, "r"), 750);
        assert_eq!(param(&limit[0].1, "t"), 3600);

        let refused = app.post_usage(&alice, json!({"tokens": 751})).await;
        assert_eq!(refused.status(), 429);
        let (_, limit) = fields(&refused);
        assert_eq!(
            (param(&limit[0].1, "r"), param(&limit[0].1, "t")),
            (750, 3600)
        );

        let reserved = app
            .client
            .post(app.url("/usage/reservations"))
            .bearer_auth(&alice)
            .json(&json!({"tokens": 50}))
            .send()
            .await
            .unwrap();
        assert_eq!(reserved.status(), 201);
        let (_, limit) = fields(&reserved);
        let body: Value = reserved.json().await.unwrap();
        assert_eq!(param(&limit[0].1, "r"), 700);
        assert_eq!(body["usage"]["remaining"], 700);

        let today = app.get(&alice, "/usage/today").await;
        let (_, limit) = fields(&today);
        assert_eq!(param(&limit[0].1, "r"), 700);
    }
}

/// With `ON_STORE_UNAVAILABLE=allow`, a request the store cannot decide by its deadline is let
/// through uncounted and flagged; with the default it is still a 503. The embedded store is
/// held by another process past the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_allow_admits_degraded_while_the_file_is_locked() {
    for (choice, expected) in [("allow", 200), ("deny", 503)] {
        let flags = [
            "--request-timeout-secs=1".to_owned(),
            format!("--on-store-unavailable={choice}"),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let app = spawn_app_with(&flags, |_| {}).await;
        let alice = token("alice");
        let blocker = rusqlite::Connection::open(&app.sqlite_path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let response = app.post_usage(&alice, json!({"tokens": 5})).await;
        assert_eq!(response.status(), expected, "{choice}");
        let body: Value = response.json().await.unwrap();
        if choice == "allow" {
            assert_eq!(
                (
                    &body["allowed"],
                    &body["enforced"],
                    &body["degraded"],
                    &body["recorded"]
                ),
                (&json!(true), &json!(false), &json!(true), &json!("no")),
                "{body}"
            );
        } else {
            assert_eq!(body["error"]["code"], "unavailable");
        }
        blocker.execute_batch("COMMIT").unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(app.today(&alice).await["tokensUsed"], 0, "{choice}");
        // The store back, a request is decided as usual.
        let body: Value = app
            .post_usage(&alice, json!({"tokens": 5}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (&body["tokensUsed"], &body["degraded"]),
            (&json!(5), &Value::Null)
        );
    }
}

/// The same on Firestore with the emulator stopped; a refusal is never turned into an
/// admission.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn firestore_allow_admits_degraded_while_the_emulator_is_down() {
    let port = emulator::free_port();
    let mut emulator = Emulator::start_on(port).await;
    let project = emulator::unique_project("fail-open");
    let clock = TestClock::at("2026-01-20T12:00:00Z");
    let common = ["--request-timeout-secs=4", "--daily-limit-trial=100"];
    let allow = instance_timed(
        &emulator.host(),
        &project,
        &[common[0], common[1], "--on-store-unavailable=allow"],
        clock.clone(),
    )
    .await;
    let deny = instance_timed(&emulator.host(), &project, &common, clock).await;
    let alice = token("alice");
    assert_eq!(
        allow
            .post_usage(&alice, json!({"tokens": 100}))
            .await
            .status(),
        200
    );
    // A refusal stays a refusal while the store answers.
    assert_eq!(
        allow
            .post_usage(&alice, json!({"tokens": 1}))
            .await
            .status(),
        429
    );

    emulator.stop();
    let response = allow.post_usage(&alice, json!({"tokens": 1})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (&body["allowed"], &body["enforced"], &body["degraded"]),
        (&json!(true), &json!(false), &json!(true)),
        "{body}"
    );
    assert_eq!(body["tokenLimit"], 100);
    let scraped = scrape(&allow).await;
    assert!(metric_total(&scraped, "token_limits_degraded_admissions_total") >= 1.0);
    let refused = deny.post_usage(&alice, json!({"tokens": 1})).await;
    assert_error(refused, 503, "unavailable").await;
}
