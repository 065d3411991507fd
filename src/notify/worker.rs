//! The delivery worker: one per instance. Woken by a record of this instance that wrote events,
//! and sweeping the outbox now and then for the rest (another instance's, or one whose
//! deliverer died), it takes each due entry under a lease, hands it to every sink that does
//! not have it yet, and records the outcome: delivered, retried later with backoff and jitter,
//! or failed once the retry period is over.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Notify;

use super::{Delivery, DeliveryError, Sink};
use crate::metrics::{NOTIFICATION_OLDEST_PENDING, NOTIFICATIONS, NOTIFICATIONS_PENDING};
use crate::usage::{Clock, DeliveryOutcome, EVENT_TYPES, Outbox, OutboxEntry};

/// How the worker paces itself.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// How long an entry is taken for one attempt: longer than any attempt lasts.
    pub lease: Duration,
    /// How often the outbox is swept without a wake-up.
    pub sweep_every: Duration,
    /// How long after its event (or an admin's redelivery) an entry is retried before it is
    /// kept as failed.
    pub retry_for: Duration,
    /// The most entries one sweep takes.
    pub batch: u32,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            sweep_every: Duration::from_secs(10),
            retry_for: Duration::from_secs(24 * 60 * 60),
            batch: 50,
        }
    }
}

pub struct DeliveryWorker {
    outbox: Arc<dyn Outbox>,
    sinks: Vec<Arc<dyn Sink>>,
    clock: Arc<dyn Clock>,
    settings: WorkerSettings,
    wake: Arc<Notify>,
}

impl DeliveryWorker {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        sinks: Vec<Arc<dyn Sink>>,
        clock: Arc<dyn Clock>,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            outbox,
            sinks,
            clock,
            settings,
            wake: Arc::default(),
        }
    }

    /// What a record that wrote events notifies, so that they leave at once.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Sweeps until `stop` resolves, which also ends an attempt under way, so that the drain
    /// is not held up by a slow sink: that entry's lease runs out and it is delivered again,
    /// under the same id, by another instance or after a restart.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                swept = self.sweep() => {
                    if let Err(error) = swept {
                        tracing::warn!(%error, "the outbox could not be swept");
                    }
                }
            }
            tokio::select! {
                () = &mut stop => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.sweep_every) => {}
            }
        }
    }

    /// Attempts every entry due now; how many this instance took. The pending gauges are
    /// set from the outbox as it stands after, so that they cost a due entry no delay.
    pub async fn sweep(&self) -> Result<usize, crate::usage::StoreError> {
        let now = self.clock.now();
        let due = self.outbox.due(now, self.settings.batch).await?;
        let mut taken = 0;
        for entry in due {
            let lease_end = now + self.settings.lease;
            let Some(claimed) = self.outbox.claim(&entry, lease_end).await? else {
                continue;
            };
            taken += 1;
            let outcome = self.attempt(&claimed).await;
            if !self
                .outbox
                .settle(&claimed, &outcome, self.clock.now())
                .await?
            {
                tracing::warn!(event_id = %claimed.id, "the lease ended before the outcome was kept");
            }
        }
        let pending = self.outbox.pending().await?;
        metrics::gauge!(NOTIFICATIONS_PENDING).set(pending.count as f64);
        let oldest_age = pending.oldest.map_or(0.0, |oldest| {
            (self.clock.now() - oldest)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64()
        });
        metrics::gauge!(NOTIFICATION_OLDEST_PENDING).set(oldest_age);
        Ok(taken)
    }

    /// Hands the entry to every sink that does not have it yet.
    async fn attempt(&self, entry: &OutboxEntry) -> DeliveryOutcome {
        let mut delivered_to = entry.delivered_to.clone();
        let mut errors = Vec::new();
        let mut permanent = false;
        for sink in self
            .sinks
            .iter()
            .filter(|sink| !entry.delivered_to.contains(sink.name()))
        {
            let attempted_at = self.clock.now();
            let delivery = Delivery {
                event_id: &entry.id,
                event_type: &entry.event_type,
                payload: &entry.payload,
                attempted_at,
            };
            match sink.deliver(&delivery).await {
                Ok(()) => {
                    count(sink.name(), &entry.event_type, "delivered");
                    tracing::info!(event_id = %entry.id, sink = sink.name(), attempt = entry.attempts, "event delivered");
                    delivered_to.insert(sink.name().to_owned());
                }
                Err(error) => {
                    permanent |= matches!(error, DeliveryError::Permanent(_));
                    tracing::warn!(event_id = %entry.id, sink = sink.name(), attempt = entry.attempts, %error, "event not delivered");
                    errors.push(format!("{}: {error}", sink.name()));
                }
            }
        }
        if errors.is_empty() {
            return DeliveryOutcome::Delivered { delivered_to };
        }
        let error = errors.join("; ");
        let now = self.clock.now();
        let next = now + backoff(entry.attempts);
        let gives_up = permanent || next > entry.retry_since + self.settings.retry_for;
        let outcome = if gives_up { "failed" } else { "retried" };
        for sink in self
            .sinks
            .iter()
            .filter(|sink| !delivered_to.contains(sink.name()))
        {
            count(sink.name(), &entry.event_type, outcome);
        }
        if gives_up {
            DeliveryOutcome::Failed {
                delivered_to,
                error,
            }
        } else {
            DeliveryOutcome::Retry {
                at: next,
                delivered_to,
                error,
            }
        }
    }
}

/// One attempt's outcome, labelled by the event's type as the closed set of types names it.
fn count(sink: &'static str, event_type: &str, outcome: &'static str) {
    let event_type = EVENT_TYPES
        .into_iter()
        .find(|known| *known == event_type)
        .unwrap_or("other");
    metrics::counter!(NOTIFICATIONS, "sink" => sink, "type" => event_type, "outcome" => outcome)
        .increment(1);
}

/// The pause before attempt `attempts + 1`: doubling from a second up to an hour, with jitter
/// so that entries that failed together do not come back together.
fn backoff(attempts: u32) -> chrono::TimeDelta {
    let pause = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(60 * 60))
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts.saturating_sub(1) as usize)
        .unwrap_or(Duration::from_secs(60 * 60));
    chrono::TimeDelta::from_std(pause).unwrap_or(chrono::TimeDelta::hours(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_grows_to_its_bound() {
        let first = backoff(1);
        assert!(first >= chrono::TimeDelta::seconds(1) && first <= chrono::TimeDelta::seconds(2));
        let later = backoff(5);
        assert!(later >= chrono::TimeDelta::seconds(16), "{later}");
        assert!(backoff(40) <= chrono::TimeDelta::hours(2));
    }
}
