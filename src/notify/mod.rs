//! Notifications: threshold events leave the outbox through the sinks. The sink port and its
//! two adapters, a signed webhook and a Pub/Sub topic, each make one bounded attempt per call;
//! the delivery worker takes the outbox's entries and does the retries, backoff and
//! bookkeeping.

pub mod pubsub;
pub mod settings;
pub mod webhook;
mod worker;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use pubsub::{PubSubSink, TopicName};
pub use settings::{NotifyArgs, NotifyConfigError};
pub use webhook::{WebhookSecret, WebhookSink};
pub use worker::{DeliveryWorker, WorkerSettings};

/// One attempt to hand one event to one sink.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// The event's JSON exactly as stored: the bytes sent and signed.
    pub payload: &'a str,
    pub attempted_at: DateTime<Utc>,
}

/// Why an attempt did not hand the event over.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Worth another attempt later (network, timeout, 5xx, 408, 429, any non-2xx by default).
    #[error("delivery failed, worth retrying: {0}")]
    Retryable(String),
    /// Will never succeed as configured (e.g. the URL or topic is malformed / not found).
    #[error("delivery failed for good: {0}")]
    Permanent(String),
}

/// Where events go.
#[async_trait]
pub trait Sink: Send + Sync {
    /// `webhook` or `pubsub`: the metrics' and logs' label.
    fn name(&self) -> &'static str;

    /// One attempt, bounded by the sink's timeout.
    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError>;
}
