//! Threshold events end to end: the service with a webhook configured, users driven past their
//! thresholds over HTTP, and a receiver that verifies each event's signature with the Standard
//! Webhooks reference library. Each event arrives once, on one instance or across several.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::emulator;
use crate::firestore::instance;
use crate::helpers::*;
use crate::pubsub_emulator::PubSubEmulator;
use crate::webhook_receiver::Receiver;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn flags(receiver: &Receiver) -> Vec<String> {
    flags_to(&receiver.url("/hook"))
}

fn flags_to(url: &str) -> Vec<String> {
    [
        "--daily-limit-trial",
        "1000",
        "--notify-webhook-url",
        url,
        "--notify-webhook-secret",
        SECRET,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// 40 requests of 25 tokens at once, spread over `apps`: exactly the limit.
async fn drive_to_the_limit(apps: &[TestApp], uid: &str) {
    let mut running = JoinSet::new();
    for n in 0..40 {
        let (client, url) = (
            apps[n % apps.len()].client.clone(),
            apps[n % apps.len()].url("/usage"),
        );
        let token = token(uid);
        running.spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "tokens": 25 }))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    assert!(running.join_all().await.iter().all(|status| *status == 200));
}

/// The receiver's verified events, once `count` have arrived (or the patience ran out).
async fn arrived(receiver: &Receiver, count: usize) -> Vec<Value> {
    arrived_within(receiver, count, Duration::from_secs(30)).await
}

async fn arrived_within(receiver: &Receiver, count: usize, patience: Duration) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let received = receiver.received().await;
        if received.len() >= count || start.elapsed() > patience {
            // A moment more, so that a duplicate on its way would be seen too.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return receiver.received().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event_ids(received: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = received
        .iter()
        .map(|event| event["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn each_threshold_arrives_once_signed_on_sqlite() {
    let receiver = Receiver::start(SECRET);
    let flags = flags(&receiver);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app_with(&flags, |_| {}).await;
    drive_to_the_limit(std::slice::from_ref(&app), "notified-one").await;
    let refused = app
        .post_usage(&token("notified-one"), json!({ "tokens": 1 }))
        .await;
    assert_eq!(refused.status(), 429);
    let received = arrived(&receiver, 3).await;
    assert_eq!(
        event_ids(&received),
        [
            format!("notified-one_{}_daily-100", today()),
            format!("notified-one_{}_daily-80", today()),
            format!("notified-one_{}_denied", today()),
        ]
    );
}

#[tokio::test]
async fn each_threshold_arrives_once_from_three_instances_on_firestore() {
    let receiver = Receiver::start(SECRET);
    let flags = flags(&receiver);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let emulator = emulator::shared().await;
    let project = emulator::unique_project("notify");
    emulator.clear(&project).await;
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(instance(&emulator.host(), &project, &flags).await);
    }
    drive_to_the_limit(&apps, "notified-many").await;
    let received = arrived(&receiver, 2).await;
    assert_eq!(
        event_ids(&received),
        [
            format!("notified-many_{}_daily-100", today()),
            format!("notified-many_{}_daily-80", today()),
        ]
    );
}

/// The receiver is down while users cross their thresholds: the attempts fail and are retried
/// with backoff by every instance, and once it is up each event arrives once.
async fn events_wait_for_a_receiver_that_was_down(apps: &[TestApp], port: u16, uid: &str) {
    drive_to_the_limit(apps, uid).await;
    let refused = apps[0]
        .post_usage(&token(uid), json!({ "tokens": 1 }))
        .await;
    assert_eq!(refused.status(), 429);
    // Until each of the three has failed an attempt while the receiver was down.
    let admin = admin_token("ops-admin");
    let start = Instant::now();
    loop {
        let page: Value = apps[0]
            .get(&admin, "/admin/notifications?status=pending")
            .await
            .json()
            .await
            .unwrap();
        let attempted = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|item| item["userId"] == uid && item["lastError"].is_string())
            .count();
        if attempted == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no failed attempts: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let receiver = Receiver::start_on(SECRET, port);
    // The backoff doubles from a second: the attempt after ~3 s of failures comes within 16 s.
    let received = arrived_within(&receiver, 3, Duration::from_secs(40)).await;
    assert_eq!(
        event_ids(&received),
        [
            format!("{uid}_{}_daily-100", today()),
            format!("{uid}_{}_daily-80", today()),
            format!("{uid}_{}_denied", today()),
        ]
    );
}

#[tokio::test]
async fn events_wait_for_a_receiver_that_was_down_on_sqlite() {
    let port = emulator::free_port();
    let flags = flags_to(&format!("http://127.0.0.1:{port}/hook"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app_with(&flags, |_| {}).await;
    events_wait_for_a_receiver_that_was_down(std::slice::from_ref(&app), port, "patient-one").await;
}

#[tokio::test]
async fn events_wait_for_a_receiver_that_was_down_across_three_instances_on_firestore() {
    let port = emulator::free_port();
    let flags = flags_to(&format!("http://127.0.0.1:{port}/hook"));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let emulator = emulator::shared().await;
    let project = emulator::unique_project("notify-down");
    emulator.clear(&project).await;
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(instance(&emulator.host(), &project, &flags).await);
    }
    events_wait_for_a_receiver_that_was_down(&apps, port, "patient-many").await;
}

/// Undelivered past its retry period (the receiver is down), an event is failed; an admin sees
/// it in `GET /admin/notifications`, sends it again once the receiver is up, and the
/// redelivery is in the audit trail.
#[tokio::test]
async fn an_admin_sends_a_failed_event_again() {
    let port = emulator::free_port();
    let mut flags = flags_to(&format!("http://127.0.0.1:{port}/hook"));
    flags.extend(["--notify-retry-for".to_owned(), "1s".to_owned()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app_with(&flags, |_| {}).await;
    let uid = "redelivered-one";
    assert_eq!(
        app.post_usage(&token(uid), json!({ "tokens": 850 }))
            .await
            .status(),
        200
    );
    let admin = admin_token("support-admin");
    let failed = loop {
        let page: Value = app
            .get(&admin, "/admin/notifications?status=failed")
            .await
            .json()
            .await
            .unwrap();
        if !page["items"].as_array().unwrap().is_empty() {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let event_id = format!("{uid}_{}_daily-80", today());
    assert_eq!(failed["items"][0]["eventId"], event_id.as_str());
    assert_eq!(failed["items"][0]["status"], "failed");
    assert_eq!(failed["items"][0]["payload"]["data"]["tokensUsed"], 850);
    assert!(
        failed["items"][0]["lastError"]
            .as_str()
            .unwrap()
            .starts_with("webhook: "),
        "{failed}"
    );
    assert_error(
        app.get(&token(uid), "/admin/notifications").await,
        403,
        "forbidden",
    )
    .await;
    assert_error(
        app.get(&admin, "/admin/notifications?status=lost").await,
        400,
        "invalid_request",
    )
    .await;

    let receiver = Receiver::start_on(SECRET, port);
    let redeliver = |event_id: String| {
        let (client, url) = (
            app.client.clone(),
            app.url(&format!("/admin/notifications/{event_id}/redeliver")),
        );
        let admin = admin.clone();
        async move {
            client
                .post(url)
                .bearer_auth(admin)
                .json(&json!({ "reason": "the receiver is back" }))
                .send()
                .await
                .unwrap()
        }
    };
    let queued = redeliver(event_id.clone()).await;
    assert_eq!(queued.status(), 200);
    let queued: Value = queued.json().await.unwrap();
    assert_eq!(queued["queued"], true);
    assert_eq!(queued["notification"]["status"], "pending");
    assert_eq!(arrived(&receiver, 1).await.len(), 1);
    assert_error(
        redeliver(format!("{uid}_{}_denied", today())).await,
        404,
        "notification_not_found",
    )
    .await;
    assert_error(
        redeliver("__reserved__".to_owned()).await,
        400,
        "invalid_request",
    )
    .await;
    let audit: Value = app
        .get(&admin, &format!("/admin/audit?userId={uid}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "{audit}");
    assert_eq!(audit["items"][0]["action"], "notification_redelivered");
    assert_eq!(audit["items"][0]["actor"], "support-admin");
    assert_eq!(audit["items"][0]["reason"], "the receiver is back");
    let delivered: Value = app
        .get(&admin, "/admin/notifications?status=delivered")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(delivered["items"][0]["deliveredTo"], json!(["webhook"]));
}

/// With both sinks, the service sends each event to the webhook and publishes it to the
/// Pub/Sub topic (on the emulator), under the same id.
#[tokio::test]
async fn each_event_reaches_both_sinks_with_one_id() {
    let pubsub = PubSubEmulator::start_on(emulator::free_port()).await;
    let project = "demo-notify-service";
    let topic = format!("projects/{project}/topics/usage-events");
    pubsub
        .create_topic_with_subscription(project, "usage-events", "usage-events-pull")
        .await;
    let receiver = Receiver::start(SECRET);
    let mut flags = flags(&receiver);
    flags.extend([
        "--notify-pubsub-topic".to_owned(),
        topic.clone(),
        "--pubsub-emulator-host".to_owned(),
        pubsub.host(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = spawn_app_with(&flags, |_| {}).await;
    drive_to_the_limit(std::slice::from_ref(&app), "both-sinks").await;
    let webhook_ids = event_ids(&arrived(&receiver, 2).await);

    let mut published = Vec::new();
    let start = Instant::now();
    while published.len() < 2 && start.elapsed() < Duration::from_secs(30) {
        for message in pubsub.pull(project, "usage-events-pull").await {
            let event: Value = serde_json::from_str(&message.data).unwrap();
            assert_eq!(event["data"]["eventId"], message.event_id.as_str());
            published.push(message.event_id);
        }
    }
    published.sort();
    assert_eq!(published, webhook_ids);
    assert_eq!(
        webhook_ids,
        [
            format!("both-sinks_{}_daily-100", today()),
            format!("both-sinks_{}_daily-80", today()),
        ]
    );
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}
