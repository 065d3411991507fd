//! Prometheus metrics: the process-wide registry, every metric's name and meaning, and the
//! text that `GET /metrics` serves, and this instance's activity read from the same counters.

mod activity;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use self::activity::{Activity, HOURS};
use self::activity::{Tally, WithTally};

pub const HTTP_REQUESTS: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
pub const HTTP_DEADLINE_OVERRUNS: &str = "http_deadline_overruns_total";
pub const DECISIONS: &str = "token_limits_decisions_total";
pub const TOKENS: &str = "token_limits_tokens_total";
pub const TOKENS_BY_HOUR: &str = "token_limits_admitted_tokens_by_hour_total";
pub const RESERVATIONS: &str = "token_limits_reservations_total";
pub const RESERVATION_TOKENS: &str = "token_limits_reservation_tokens_total";
pub const RECORD_ERRORS: &str = "token_limits_record_errors_total";
pub const WOULD_DENY: &str = "token_limits_would_deny_total";
pub const DEGRADED_ADMISSIONS: &str = "token_limits_degraded_admissions_total";
pub const ACTIVE_USERS_TODAY: &str = "token_limits_active_users_today";
pub const TOKENS_TODAY: &str = "token_limits_tokens_today";
pub const STORE_OPERATIONS: &str = "token_limits_store_operations_total";
pub const STORE_OPERATION_DURATION: &str = "token_limits_store_operation_duration_seconds";
pub const STORE_RETRIES: &str = "token_limits_store_retries_total";
pub const STORE_LOST_ANSWERS: &str = "token_limits_store_lost_commit_answers_total";
pub const STORE_UNKNOWN_OUTCOMES: &str = "token_limits_store_unknown_outcomes_total";
pub const SQLITE_GROUP_COMMIT_SIZE: &str = "token_limits_sqlite_group_commit_size";
pub const SQLITE_WAL_RESTART_PAUSE: &str = "token_limits_sqlite_wal_restart_pause_seconds";
pub const FIRESTORE_RPCS: &str = "token_limits_firestore_rpcs_total";
pub const FIRESTORE_READS: &str = "token_limits_firestore_document_reads_total";
pub const FIRESTORE_WRITES: &str = "token_limits_firestore_document_writes_total";
pub const FIRESTORE_CACHED_COMMITS: &str = "token_limits_firestore_cached_commits_total";
pub const KEY_FETCHES: &str = "token_limits_signing_key_fetches_total";
pub const STALE_KEY_USES: &str = "token_limits_stale_signing_key_uses_total";
pub const DIRECTORY_LOOKUPS: &str = "token_limits_user_directory_lookups_total";
pub const STREAMS_OPEN: &str = "token_limits_streams_open";
pub const STREAMS_REFUSED: &str = "token_limits_streams_refused_total";
pub const NOTIFICATIONS: &str = "token_limits_notifications_total";
pub const NOTIFICATIONS_PENDING: &str = "token_limits_notifications_pending";
pub const NOTIFICATION_OLDEST_PENDING: &str = "token_limits_notification_oldest_pending_seconds";

/// Latency buckets, in seconds: from a cached read to a request timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often recorded histogram samples are folded into their buckets. Until then the recorder
/// holds each sample, so without a scrape memory would grow with every request.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The name of the thread that does that upkeep.
const UPKEEP_THREAD: &str = "metrics-upkeep";

/// The installed registry: the Prometheus text's source, and the tally beside it.
struct Installed {
    prometheus: PrometheusHandle,
    tally: Arc<Tally>,
}

static REGISTRY: OnceLock<Option<Installed>> = OnceLock::new();

/// The registry, installed on first use; `None` if another recorder was installed first.
pub fn registry() -> Option<&'static PrometheusHandle> {
    installed().map(|installed| &installed.prometheus)
}

/// This instance's activity since the registry was installed; `None` if another recorder was
/// installed first.
pub fn activity() -> Option<Activity> {
    installed().map(|installed| installed.tally.read())
}

fn installed() -> Option<&'static Installed> {
    REGISTRY.get_or_init(install).as_ref()
}

fn install() -> Option<Installed> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
        .ok()?
        .build_recorder();
    let prometheus = recorder.handle();
    let tally = Tally::new();
    metrics::set_global_recorder(WithTally {
        inner: recorder,
        tally: tally.clone(),
    })
    .ok()?;
    keep_up(prometheus.clone());
    describe();
    start_at_zero();
    Some(Installed { prometheus, tally })
}

fn keep_up(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name(UPKEEP_THREAD.to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(error) = started {
        tracing::error!(%error, "cannot start the metrics upkeep: histogram samples pile up until each scrape");
    }
}

/// Every series an alert reads exists from the start, at zero: a rate over a series that does
/// not exist yet is no rate at all.
fn start_at_zero() {
    for kind in [
        "unavailable",
        "outcome_unknown",
        "corrupt_document",
        "internal",
    ] {
        metrics::counter!(RECORD_ERRORS, "kind" => kind).absolute(0);
    }
    for event in ["opened", "committed", "released", "expired"] {
        metrics::counter!(RESERVATIONS, "event" => event).absolute(0);
    }
    for event in ["held", "freed", "committed"] {
        metrics::counter!(RESERVATION_TOKENS, "event" => event).absolute(0);
    }
    for reason in ["contention", "transient"] {
        metrics::counter!(STORE_RETRIES, "reason" => reason).absolute(0);
    }
    for result in ["ok", "error"] {
        metrics::counter!(KEY_FETCHES, "result" => result).absolute(0);
        metrics::counter!(DIRECTORY_LOOKUPS, "result" => result).absolute(0);
    }
    for name in [
        HTTP_DEADLINE_OVERRUNS,
        STORE_LOST_ANSWERS,
        STORE_UNKNOWN_OUTCOMES,
        FIRESTORE_RPCS,
        FIRESTORE_READS,
        FIRESTORE_WRITES,
        STALE_KEY_USES,
        STREAMS_REFUSED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!(HTTP_REQUESTS_IN_FLIGHT).set(0.0);
    metrics::gauge!(STREAMS_OPEN).set(0.0);
    metrics::gauge!(NOTIFICATIONS_PENDING).set(0.0);
    metrics::gauge!(NOTIFICATION_OLDEST_PENDING).set(0.0);
}

/// The series labelled by user type, at zero like those of [`start_at_zero`]. The user types
/// are the domain's, which names its metrics here: so they are handed in, not imported.
pub fn start_user_type_series_at_zero(user_types: impl IntoIterator<Item = &'static str>) {
    for user_type in user_types {
        for outcome in ["admitted", "uncounted", "denied", "replayed", "key_reused"] {
            metrics::counter!(DECISIONS, "outcome" => outcome, "user_type" => user_type)
                .absolute(0);
        }
        for decision in ["admitted", "denied"] {
            metrics::counter!(TOKENS, "decision" => decision, "user_type" => user_type).absolute(0);
        }
        for window in ["daily", "monthly"] {
            for mode in ["shadow", "off"] {
                metrics::counter!(WOULD_DENY, "user_type" => user_type, "window" => window, "mode" => mode)
                    .absolute(0);
            }
        }
        metrics::counter!(DEGRADED_ADMISSIONS, "user_type" => user_type).absolute(0);
    }
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route, method and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by route and method"
    );
    describe_gauge!(HTTP_REQUESTS_IN_FLIGHT, "HTTP requests being answered now");
    describe_gauge!(STREAMS_OPEN, "Usage event streams open on this instance");
    describe_counter!(
        NOTIFICATIONS,
        "Attempts to hand a threshold event to a sink, by sink, event type and outcome (delivered, retried, failed)"
    );
    describe_gauge!(
        NOTIFICATIONS_PENDING,
        "Threshold events in the outbox not yet delivered or given up, as of this instance's last sweep"
    );
    describe_gauge!(
        NOTIFICATION_OLDEST_PENDING,
        Unit::Seconds,
        "Age of the oldest threshold event not yet delivered, as of this instance's last sweep (0: none)"
    );
    describe_counter!(
        STREAMS_REFUSED,
        "Usage event streams refused because MAX_STREAMS were open"
    );
    describe_counter!(
        HTTP_DEADLINE_OVERRUNS,
        "HTTP requests still running at their deadline, answered 503 by the backstop (a fault: every step keeps to the deadline)"
    );
    describe_counter!(
        DECISIONS,
        "Recorded requests by outcome (admitted, uncounted when enforcement is off, denied, replayed, key_reused) and user type"
    );
    describe_counter!(
        WOULD_DENY,
        "Requests let through that enforce would have refused, by user type, window (daily, monthly) and mode (shadow, off)"
    );
    describe_counter!(
        DEGRADED_ADMISSIONS,
        "POST /usage requests admitted without counting because the store was down (ON_STORE_UNAVAILABLE=allow), by user type"
    );
    describe_counter!(
        TOKENS,
        "Tokens asked for, by decision (admitted, denied) and user type"
    );
    describe_counter!(
        TOKENS_BY_HOUR,
        "Admitted tokens by hour of the day in RESET_TIMEZONE (00-23): when usage peaks"
    );
    describe_counter!(
        RESERVATIONS,
        "Reservations by event (opened, committed, released, expired; an expired hold is counted when a write of its day drops it)"
    );
    describe_counter!(
        RESERVATION_TOKENS,
        "Reservation tokens by event: held (estimate, on open), freed (estimate, when the hold ends), committed (actual); held now = held - freed"
    );
    describe_counter!(
        RECORD_ERRORS,
        "POST /usage requests that got no decision, by kind (unavailable, outcome_unknown, corrupt_document, internal)"
    );
    describe_gauge!(
        ACTIVE_USERS_TODAY,
        "Users who used tokens today (all instances see the same figure), by user type"
    );
    describe_gauge!(TOKENS_TODAY, "Tokens used today by all users, by user type");
    describe_counter!(
        STORE_OPERATIONS,
        "Store operations by store, operation and result (ok, error)"
    );
    describe_histogram!(
        STORE_OPERATION_DURATION,
        Unit::Seconds,
        "Time of a store operation, by store and operation"
    );
    describe_counter!(
        STORE_RETRIES,
        "Firestore attempts repeated, by reason (contention, transient)"
    );
    describe_counter!(
        STORE_LOST_ANSWERS,
        "Firestore commits whose answer was lost and had to be settled"
    );
    describe_counter!(
        STORE_UNKNOWN_OUTCOMES,
        "Firestore commits whose outcome could not be known (answered 503, may be recorded)"
    );
    describe_histogram!(
        SQLITE_GROUP_COMMIT_SIZE,
        "Records applied by one transaction of the embedded store's writer"
    );
    describe_histogram!(
        SQLITE_WAL_RESTART_PAUSE,
        Unit::Seconds,
        "Time the embedded store's writer was held between two groups so that the WAL could start over"
    );
    describe_counter!(FIRESTORE_RPCS, "Calls to Firestore");
    describe_counter!(FIRESTORE_READS, "Firestore documents read (billed reads)");
    describe_counter!(FIRESTORE_WRITES, "Firestore documents written");
    describe_counter!(
        FIRESTORE_CACHED_COMMITS,
        "Commits sent from cached documents without a read, and those refused as stale"
    );
    describe_counter!(KEY_FETCHES, "Fetches of the token signing keys, by result");
    describe_counter!(
        STALE_KEY_USES,
        "Token checks that used a signing key past its max-age because refreshing the keys failed"
    );
    describe_counter!(
        DIRECTORY_LOOKUPS,
        "Look-ups of a user's plan in Firebase Auth, by result"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Histogram samples are held one by one until upkeep folds them: the registry runs it on
    /// a thread of its own, whether or not anyone scrapes.
    #[test]
    fn the_registry_folds_histogram_samples_without_a_scrape() {
        assert!(registry().is_some());
        // A thread names itself once it runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let threads = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
                .collect::<Vec<_>>();
            if threads.iter().any(|name| name.trim() == UPKEEP_THREAD) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{threads:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
