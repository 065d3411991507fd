//! This instance's activity as figures a handler can read: admitted tokens by hour of day and
//! HTTP requests by status class, since the registry was installed. The recorder here sits
//! beside the Prometheus one and is fed the same increments of the same two counters, so the
//! two never disagree; the Prometheus registry itself can only be rendered as text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

use super::{HTTP_REQUESTS, TOKENS_BY_HOUR};

/// Hours in a day: the `hour` label's values are 00 to 23.
pub const HOURS: usize = 24;

/// The counts behind [`Activity`], as the counters move.
pub(super) struct Tally {
    since: SystemTime,
    tokens_by_hour: [AtomicU64; HOURS],
    requests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
}

/// What this instance has counted since `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// When the registry was installed: the instance's start.
    pub since: SystemTime,
    /// Admitted tokens by hour of day (index 0 is 00:00 to 00:59) in RESET_TIMEZONE.
    pub tokens_by_hour: [u64; HOURS],
    /// HTTP requests answered.
    pub requests: u64,
    /// Those answered 4xx.
    pub client_errors: u64,
    /// Those answered 5xx.
    pub server_errors: u64,
}

impl Tally {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            since: SystemTime::now(),
            tokens_by_hour: std::array::from_fn(|_| AtomicU64::new(0)),
            requests: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
        })
    }

    pub(super) fn read(&self) -> Activity {
        Activity {
            since: self.since,
            tokens_by_hour: std::array::from_fn(|hour| {
                self.tokens_by_hour[hour].load(Ordering::Relaxed)
            }),
            requests: self.requests.load(Ordering::Relaxed),
            client_errors: self.client_errors.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
        }
    }

    /// The tally's own counter for `key`, if it keeps one.
    fn counter(self: &Arc<Self>, key: &Key) -> Option<Counter> {
        let label = |name: &str| {
            key.labels()
                .find(|label| label.key() == name)
                .map(|label| label.value().to_owned())
        };
        let kept = match key.name() {
            TOKENS_BY_HOUR => {
                let hour = label("hour")?
                    .parse::<usize>()
                    .ok()
                    .filter(|h| *h < HOURS)?;
                Kept::TokensInHour(hour)
            }
            HTTP_REQUESTS => match label("status")?.parse::<u16>().ok()? {
                400..=499 => Kept::Request(Some(StatusClass::Client)),
                500..=599 => Kept::Request(Some(StatusClass::Server)),
                _ => Kept::Request(None),
            },
            _ => return None,
        };
        Some(Counter::from_arc(Arc::new(TallyCounter {
            tally: self.clone(),
            kept,
        })))
    }
}

#[derive(Clone, Copy)]
enum StatusClass {
    Client,
    Server,
}

/// Which of the tally's counts a counter moves.
#[derive(Clone, Copy)]
enum Kept {
    TokensInHour(usize),
    /// A request, and its error class if it failed.
    Request(Option<StatusClass>),
}

struct TallyCounter {
    tally: Arc<Tally>,
    kept: Kept,
}

impl CounterFn for TallyCounter {
    fn increment(&self, value: u64) {
        let tally = &self.tally;
        match self.kept {
            Kept::TokensInHour(hour) => {
                tally.tokens_by_hour[hour].fetch_add(value, Ordering::Relaxed);
            }
            Kept::Request(class) => {
                tally.requests.fetch_add(value, Ordering::Relaxed);
                let errors = match class {
                    Some(StatusClass::Client) => &tally.client_errors,
                    Some(StatusClass::Server) => &tally.server_errors,
                    None => return,
                };
                errors.fetch_add(value, Ordering::Relaxed);
            }
        }
    }

    /// Only series started at zero are set: the tally starts there already.
    fn absolute(&self, _value: u64) {}
}

/// The Prometheus recorder, with the tally fed the counters it keeps.
pub(super) struct WithTally<R> {
    pub(super) inner: R,
    pub(super) tally: Arc<Tally>,
}

impl<R: Recorder> Recorder for WithTally<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let exported = self.inner.register_counter(key, metadata);
        match self.tally.counter(key) {
            Some(tallied) => Counter::from_arc(Arc::new(Both(exported, tallied))),
            None => exported,
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(key, metadata)
    }
}

/// One counter's increments, given to two recorders.
struct Both(Counter, Counter);

impl CounterFn for Both {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        self.1.increment(value);
    }

    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        self.1.absolute(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static METADATA: Metadata<'static> =
        Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

    fn count(tally: &Arc<Tally>, key: Key, value: u64) {
        if let Some(counter) = tally.counter(&key) {
            counter.increment(value);
        }
    }

    #[test]
    fn tokens_fall_in_their_hour_and_requests_in_their_status_class() {
        let tally = Tally::new();
        let request = |status: &'static str| {
            Key::from_parts(
                HTTP_REQUESTS,
                vec![
                    metrics::Label::new("route", "/usage"),
                    metrics::Label::new("status", status),
                ],
            )
        };
        let hour = |hour: &'static str| {
            Key::from_parts(TOKENS_BY_HOUR, vec![metrics::Label::new("hour", hour)])
        };
        count(&tally, hour("07"), 120);
        count(&tally, hour("07"), 5);
        count(&tally, hour("23"), 9);
        count(&tally, hour("24"), 1000);
        count(&tally, request("200"), 3);
        count(&tally, request("404"), 2);
        count(&tally, request("503"), 1);
        count(&tally, Key::from_name("token_limits_tokens_total"), 50);

        let activity = tally.read();
        let mut expected = [0; HOURS];
        expected[7] = 125;
        expected[23] = 9;
        assert_eq!(activity.tokens_by_hour, expected);
        assert_eq!(
            (
                activity.requests,
                activity.client_errors,
                activity.server_errors
            ),
            (6, 2, 1)
        );
    }

    #[test]
    fn the_exported_counter_moves_as_the_tallied_one_does() {
        let exported = Summing::default();
        let recorder = WithTally {
            inner: exported.clone(),
            tally: Tally::new(),
        };
        let key = Key::from_parts(TOKENS_BY_HOUR, vec![metrics::Label::new("hour", "03")]);
        recorder.register_counter(&key, &METADATA).increment(40);
        assert_eq!(recorder.tally.read().tokens_by_hour[3], 40);
        assert_eq!(exported.total(), 40);
    }

    /// A recorder that sums every counter increment it is given.
    #[derive(Clone, Default)]
    struct Summing(Arc<AtomicU64>);

    impl Summing {
        fn total(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl Recorder for Summing {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.0.clone())
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }
}
