//! `GET /admin/reports/activity`: tokens by hour of day and requests by outcome, from this
//! instance's metrics; admins only.
//!
//! Every service these tests start runs in one process and so shares one metrics registry, as
//! one instance's handlers do: other tests add to the same counts at the same time. So each
//! test reads the counts before and after what it does and asserts that they moved by at
//! least as much as it caused.

use std::sync::Arc;

use serde_json::{Value, json};
use token_limits::usage::Clock;

use crate::firestore::instance_timed;
use crate::helpers::*;

const PATH: &str = "/admin/reports/activity";

async fn activity(app: &TestApp) -> Value {
    let response = app.get(&admin_token("ops-admin"), PATH).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn hour_tokens(report: &Value, hour: usize) -> u64 {
    let entry = &report["tokensByHour"][hour];
    assert_eq!(entry["hour"], hour, "{report}");
    entry["tokens"].as_u64().unwrap()
}

fn requests(report: &Value, field: &str) -> u64 {
    report["requests"][field].as_u64().unwrap()
}

/// 04:30 UTC is 10:00 in Kolkata (UTC+05:30): the hour is RESET_TIMEZONE's, not UTC's.
const AT: &str = "2026-03-10T04:30:00Z";
const ZONE: &str = "--reset-timezone=Asia/Kolkata";
const LOCAL_HOUR: usize = 10;

async fn admitted_tokens_land_in_their_hour_of_the_reset_zone(app: &TestApp) {
    let before = activity(app).await;
    assert_eq!(before["scope"], "instance");
    assert_eq!(before["timeZone"], "Asia/Kolkata");
    let hours = before["tokensByHour"].as_array().unwrap();
    assert_eq!(hours.len(), 24);
    for (hour, entry) in hours.iter().enumerate() {
        assert_eq!(entry["hour"], hour);
    }
    let since = chrono::DateTime::parse_from_rfc3339(before["since"].as_str().unwrap()).unwrap();
    assert!(since <= chrono::Utc::now(), "{before}");

    for tokens in [700, 77] {
        let response = app
            .post_usage(&token("night-owl"), json!({"tokens": tokens}))
            .await;
        assert_eq!(response.status(), 200);
    }
    let after = activity(app).await;
    assert!(
        hour_tokens(&after, LOCAL_HOUR) >= hour_tokens(&before, LOCAL_HOUR) + 777,
        "before: {before}\nafter: {after}"
    );
}

#[tokio::test]
async fn admitted_tokens_are_counted_in_their_hour_on_sqlite() {
    let clock: Arc<dyn Clock> = TestClock::at(AT);
    let app = spawn_app_timed(JwksServer::start(&[KEY_1]).await, &[ZONE], |_| {}, clock).await;
    admitted_tokens_land_in_their_hour_of_the_reset_zone(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admitted_tokens_are_counted_in_their_hour_on_firestore() {
    let emulator = crate::emulator::shared().await;
    let project = crate::emulator::unique_project("activity");
    let app = instance_timed(&emulator.host(), &project, &[ZONE], TestClock::at(AT)).await;
    admitted_tokens_land_in_their_hour_of_the_reset_zone(&app).await;
}

/// A 5xx is an error, a 4xx is counted apart, and the rate is the errors' share.
#[tokio::test]
async fn failed_and_refused_requests_are_counted_apart() {
    // With no stream allowed, every stream is refused 503: a server error, cheaply.
    let app = spawn_app_with(&["--max-streams=0"], |_| {}).await;
    let before = activity(&app).await;

    let refused = app.get(&token("streamer"), "/usage/stream").await;
    assert_error(refused, 503, "unavailable").await;
    let invalid = app
        .post_usage(&token("streamer"), json!({"tokens": -1}))
        .await;
    assert_error(invalid, 400, "invalid_request").await;

    let after = activity(&app).await;
    assert!(requests(&after, "serverErrors") > requests(&before, "serverErrors"));
    assert!(requests(&after, "clientErrors") > requests(&before, "clientErrors"));
    // The first report's own request, the stream and the usage, at least.
    assert!(requests(&after, "total") >= requests(&before, "total") + 3);
    let rate = after["requests"]["errorRate"].as_f64().unwrap();
    #[allow(clippy::cast_precision_loss)]
    let share = requests(&after, "serverErrors") as f64 / requests(&after, "total") as f64;
    assert!((rate - share).abs() < 1e-12, "{after}");
}

#[tokio::test]
async fn only_an_admin_may_read_the_activity() {
    let app = spawn_app().await;
    let response = app.get(&token("member"), PATH).await;
    assert_error(response, 403, "forbidden").await;
    let response = app.client.get(app.url(PATH)).send().await.unwrap();
    assert_error(response, 401, "unauthenticated").await;
}
