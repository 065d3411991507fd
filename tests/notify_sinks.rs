//! The notification sinks against real receivers: a webhook receiver that verifies signatures
//! with the Standard Webhooks reference library in Python (tests/notify/receiver.py, from the
//! venv of scripts/notify-venv.sh), and the Pub/Sub emulator of the Google Cloud CLI.

#[path = "support/emulator.rs"]
mod emulator;
#[path = "support/pubsub_emulator.rs"]
mod pubsub_emulator;
#[path = "support/webhook_receiver.rs"]
mod webhook_receiver;

use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use token_limits::notify::{
    Delivery, DeliveryError, PubSubSink, Sink, TopicName, WebhookSecret, WebhookSink,
};

use emulator::free_port;
use pubsub_emulator::{PubSubEmulator, Pulled};
use webhook_receiver::Receiver;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_3q2+796tvu/erb7v3q2+796tvu/erb7v";
const TIMEOUT: Duration = Duration::from_secs(5);

/// A payload with the characters a careless sender would re-encode: spaces after separators,
/// non-ASCII text and an escaped slash.
const PAYLOAD: &str = r#"{"type": "usage.threshold_crossed", "data": {"user": "zoë", "path": "a\/b", "threshold": 0.8}}"#;

fn delivery<'a>(event_id: &'a str, payload: &'a str) -> Delivery<'a> {
    Delivery {
        event_id,
        event_type: "usage.threshold_crossed",
        payload,
        attempted_at: Utc::now(),
    }
}

#[tokio::test]
async fn a_signed_event_verifies_and_arrives_unchanged() {
    let receiver = Receiver::start(SECRET);
    let sink = receiver.sink("/hook", SECRET, TIMEOUT);
    sink.deliver(&delivery("evt_threshold_1", PAYLOAD))
        .await
        .unwrap();
    let received = receiver.received().await;
    assert_eq!(
        received,
        [json!({
            "id": "evt_threshold_1",
            "type": "usage.threshold_crossed",
            "content_type": "application/json",
            "body": PAYLOAD,
        })]
    );
    assert_eq!(sink.name(), "webhook");
}

/// A receiver may be rotating its secret, so a rejected signature is worth another attempt.
#[tokio::test]
async fn a_wrong_secret_is_rejected_and_retryable() {
    let receiver = Receiver::start(SECRET);
    let sink = receiver.sink("/hook", OTHER_SECRET, TIMEOUT);
    let outcome = sink.deliver(&delivery("evt_wrong_secret", PAYLOAD)).await;
    assert!(
        matches!(&outcome, Err(DeliveryError::Retryable(message)) if message.contains("400")),
        "{outcome:?}"
    );
    assert_eq!(receiver.received().await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_receiver_that_is_down_is_retryable() {
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let url = format!("http://127.0.0.1:{}/hook", free_port());
    let sink = WebhookSink::new(&url, secret, TIMEOUT).unwrap();
    let outcome = sink.deliver(&delivery("evt_down", PAYLOAD)).await;
    assert!(
        matches!(outcome, Err(DeliveryError::Retryable(_))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_server_error_is_retryable_and_gone_is_permanent() {
    let receiver = Receiver::start(SECRET);
    let outcome = receiver
        .sink("/status/500", SECRET, TIMEOUT)
        .deliver(&delivery("evt_500", PAYLOAD))
        .await;
    assert!(
        matches!(&outcome, Err(DeliveryError::Retryable(message)) if message.contains("500")),
        "{outcome:?}"
    );
    let outcome = receiver
        .sink("/status/410", SECRET, TIMEOUT)
        .deliver(&delivery("evt_410", PAYLOAD))
        .await;
    assert!(
        matches!(outcome, Err(DeliveryError::Permanent(_))),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_retryable_within_it() {
    let receiver = Receiver::start(SECRET);
    let bound = Duration::from_millis(500);
    let sink = receiver.sink("/slow/20", SECRET, bound);
    let started = Instant::now();
    let outcome = sink.deliver(&delivery("evt_slow", PAYLOAD)).await;
    let waited = started.elapsed();
    assert!(
        matches!(outcome, Err(DeliveryError::Retryable(_))),
        "{outcome:?}"
    );
    // The receiver answers after 20 s: the attempt ended at its own bound, not at the answer.
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
}

#[tokio::test]
async fn pubsub_publishes_each_event_with_its_id_and_type_on_the_emulator() {
    let mut emulator = PubSubEmulator::start_on(free_port()).await;
    let project = "demo-notify";
    emulator
        .create_topic_with_subscription(project, "token-limits-events", "events-pull")
        .await;

    let topic =
        TopicName::parse(&format!("projects/{project}/topics/token-limits-events")).unwrap();
    let sink = PubSubSink::connect(topic, Some(&emulator.host()), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(sink.name(), "pubsub");
    let first = r#"{"type": "usage.threshold_crossed", "data": {"user": "zoë"}}"#;
    let second = r#"{"type":"usage.first_denied","data":{"user":"ann"}}"#;
    sink.deliver(&delivery("evt_pubsub_1", first))
        .await
        .unwrap();
    let denied = Delivery {
        event_type: "usage.first_denied",
        ..delivery("evt_pubsub_2", second)
    };
    sink.deliver(&denied).await.unwrap();

    let mut messages = emulator.pull(project, "events-pull").await;
    messages.sort();
    assert_eq!(
        messages,
        [
            Pulled {
                event_id: "evt_pubsub_1".to_owned(),
                event_type: "usage.threshold_crossed".to_owned(),
                data: first.to_owned(),
            },
            Pulled {
                event_id: "evt_pubsub_2".to_owned(),
                event_type: "usage.first_denied".to_owned(),
                data: second.to_owned(),
            },
        ]
    );

    // A well-formed name of a topic that does not exist fails the same way every time.
    let missing = TopicName::parse(&format!("projects/{project}/topics/no-such-topic")).unwrap();
    let sink = PubSubSink::connect(missing, Some(&emulator.host()), TIMEOUT)
        .await
        .unwrap();
    let outcome = sink.deliver(&delivery("evt_missing", first)).await;
    assert!(
        matches!(outcome, Err(DeliveryError::Permanent(_))),
        "{outcome:?}"
    );

    // Pub/Sub gone after the start: an outage, worth another attempt.
    emulator.stop();
    let outcome = sink.deliver(&delivery("evt_down", first)).await;
    assert!(
        matches!(outcome, Err(DeliveryError::Retryable(_))),
        "{outcome:?}"
    );
}
