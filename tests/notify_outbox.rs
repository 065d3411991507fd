//! Threshold events in the outbox, on every store: written in the commit of the record that
//! raises them, once per user, window and threshold, whatever the concurrency, the instances
//! or a reset; and nothing more written by a record that raises nothing.

#[path = "support/emulator.rs"]
mod emulator;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use token_limits::notify::{Delivery, DeliveryError, DeliveryWorker, Sink, WorkerSettings};
use token_limits::store::{FirestoreSettings, FirestoreStore, SqliteStore};
use token_limits::usage::{
    Action, AdminAct, AuditAction, AuditQuery, Clock, DayWindow, Deadline, DeliveryOutcome, Limits,
    Outbox, OutboxEntry, OutboxStatus, Pending, RecordOutcome, RecordRequest, Redelivery, Share,
    Thresholds, Tokens, UsageStore, UserId, UserType,
};

const LIMITS: Limits = Limits::daily(1_000, 5_000);

/// The stores of a test (several instances on one database), and the outbox as stored.
trait Harness {
    async fn instance(&self) -> Arc<dyn UsageStore>;
    /// Another instance's view of the outbox.
    async fn outbox_port(&self) -> Arc<dyn Outbox>;
    /// Every entry's id and payload, by id.
    async fn outbox(&self) -> Vec<(String, Value)>;
}

fn thresholds() -> Thresholds {
    Thresholds::new(["0.8", "1"].map(|raw| raw.parse::<Share>().unwrap()))
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn request(uid: &str, action: Action, now: &str) -> RecordRequest {
    let now = at(now);
    RecordRequest {
        user_id: UserId::parse(uid).unwrap(),
        action,
        window: DayWindow::containing(now, Tz::UTC),
        limits: LIMITS,
        commit_grace: chrono::Duration::seconds(30),
        now,
        idempotency: None,
        audit_actor: None,
        thresholds: thresholds(),
    }
}

fn spend(uid: &str, tokens: i64, now: &str) -> RecordRequest {
    let tokens = Tokens::bounded(tokens, i64::MAX).unwrap();
    let user_type = UserType::Trial;
    request(uid, Action::Spend { tokens, user_type }, now)
}

async fn record(store: &dyn UsageStore, request: RecordRequest) -> RecordOutcome {
    let deadline = Deadline::from_now(Duration::from_secs(10));
    store.record(request, deadline).await.unwrap().outcome
}

fn ids(outbox: &[(String, Value)]) -> Vec<&str> {
    outbox.iter().map(|(id, _)| id.as_str()).collect()
}

async fn each_threshold_and_the_first_refusal_are_written_once(h: &impl Harness) {
    let store = h.instance().await;
    let now = "2026-12-04T10:00:00Z";
    assert!(matches!(
        record(&*store, spend("alice", 700, now)).await,
        RecordOutcome::Admitted(_)
    ));
    assert_eq!(h.outbox().await, [], "700 of 1,000 crosses nothing");

    record(&*store, spend("alice", 150, now)).await;
    record(&*store, spend("alice", 100, now)).await;
    let outbox = h.outbox().await;
    assert_eq!(ids(&outbox), ["alice_2026-12-04_daily-80"]);
    let payload = &outbox[0].1;
    assert_eq!(payload["type"], "usage.threshold_crossed");
    assert_eq!(
        (&payload["data"]["tokensUsed"], &payload["data"]["limit"]),
        (&Value::from(850), &Value::from(1_000)),
        "the figures when it was crossed"
    );

    record(&*store, spend("alice", 50, now)).await;
    for _ in 0..2 {
        assert!(matches!(
            record(&*store, spend("alice", 1, now)).await,
            RecordOutcome::Denied(_)
        ));
    }
    // After a reset the day climbs again, past thresholds it already raised: nothing new.
    let reset = Action::Reset {
        actor: UserId::parse("admin").unwrap(),
        reason: "support ticket".to_owned(),
    };
    record(&*store, request("alice", reset, now)).await;
    record(&*store, spend("alice", 1_000, now)).await;
    record(&*store, spend("alice", 1, now)).await;
    let outbox = h.outbox().await;
    assert_eq!(
        ids(&outbox),
        [
            "alice_2026-12-04_daily-100",
            "alice_2026-12-04_daily-80",
            "alice_2026-12-04_denied",
        ]
    );
    assert_eq!(outbox[2].1["type"], "usage.first_denied");
    assert_eq!(
        outbox[1].1["data"]["tokensUsed"], 850,
        "an entry is never written again, not even after a reset"
    );
}

/// 40 records of 25 tokens at once, spread over three instances: together they reach exactly
/// the limit, and each threshold is written once.
async fn concurrent_records_on_several_instances_write_each_threshold_once(h: &impl Harness) {
    let instances = [h.instance().await, h.instance().await, h.instance().await];
    let now = "2026-12-04T11:00:00Z";
    let mut running = tokio::task::JoinSet::new();
    for n in 0..40 {
        let store = instances[n % instances.len()].clone();
        running.spawn(async move { record(&*store, spend("bob", 25, now)).await });
    }
    for outcome in running.join_all().await {
        assert!(matches!(outcome, RecordOutcome::Admitted(_)), "{outcome:?}");
    }
    assert_eq!(
        ids(&h.outbox().await),
        ["bob_2026-12-04_daily-100", "bob_2026-12-04_daily-80"]
    );
}

/// Two instances share an entry: one takes it at a time, a lease that ends without an outcome
/// (the instance died) leaves it due again, and an outcome counts only under the claim that
/// still holds.
async fn one_instance_at_a_time_takes_an_entry(h: &impl Harness) {
    let store = h.instance().await;
    record(&*store, spend("dave", 900, "2026-12-04T10:00:00Z")).await;
    let (a, b) = (h.outbox_port().await, h.outbox_port().await);
    let now = at("2026-12-04T10:00:01Z");
    let later = |seconds| now + chrono::Duration::seconds(seconds);
    assert_eq!(a.due(at("2026-12-04T09:59:59Z"), 10).await.unwrap(), []);
    let seen_by_a = a.due(now, 10).await.unwrap();
    let seen_by_b = b.due(now, 10).await.unwrap();
    assert_eq!(seen_by_a.len(), 1);
    assert_eq!(seen_by_a, seen_by_b);

    let claimed_by_a = a.claim(&seen_by_a[0], later(30)).await.unwrap().unwrap();
    assert_eq!(claimed_by_a.attempts, 1);
    assert_eq!(b.claim(&seen_by_b[0], later(30)).await.unwrap(), None);
    assert_eq!(
        b.due(later(29), 10).await.unwrap(),
        [],
        "taken until the lease ends"
    );

    let again = b.due(later(30), 10).await.unwrap();
    assert_eq!(again.len(), 1, "a lease that ended unsettled is due again");
    let claimed_by_b = b.claim(&again[0], later(60)).await.unwrap().unwrap();
    assert_eq!(claimed_by_b.attempts, 2);
    let delivered = DeliveryOutcome::Delivered {
        delivered_to: ["webhook".to_owned()].into(),
    };
    assert!(
        !a.settle(&claimed_by_a, &delivered, later(31))
            .await
            .unwrap(),
        "a's claim is lost"
    );

    let retry = DeliveryOutcome::Retry {
        at: later(90),
        delivered_to: ["webhook".to_owned()].into(),
        error: "pubsub: unavailable".to_owned(),
    };
    assert!(b.settle(&claimed_by_b, &retry, later(32)).await.unwrap());
    assert_eq!(a.due(later(89), 10).await.unwrap(), []);
    let retried = a.due(later(90), 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].attempts, 2);
    assert_eq!(retried[0].delivered_to, ["webhook".to_owned()].into());
    assert_eq!(
        retried[0].last_error.as_deref(),
        Some("pubsub: unavailable")
    );
    let claimed = a.claim(&retried[0], later(120)).await.unwrap().unwrap();
    assert!(a.settle(&claimed, &delivered, later(91)).await.unwrap());
    assert_eq!(
        b.due(later(100_000), 10).await.unwrap(),
        [],
        "delivered: never due again"
    );
}

macro_rules! outbox_suite {
    ($store:ident, $harness:expr) => {
        mod $store {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn each_threshold_and_the_first_refusal_are_written_once() {
                super::each_threshold_and_the_first_refusal_are_written_once(&$harness.await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn workers_deliver_each_event_once_after_retries() {
                super::workers_deliver_each_event_once_after_retries(&$harness.await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_event_past_its_retry_period_is_kept_as_failed() {
                super::an_event_past_its_retry_period_is_kept_as_failed(&$harness.await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn an_admin_lists_failed_events_and_sends_them_again() {
                super::an_admin_lists_failed_events_and_sends_them_again(&$harness.await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_instance_at_a_time_takes_an_entry() {
                super::one_instance_at_a_time_takes_an_entry(&$harness.await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_records_on_several_instances_write_each_threshold_once() {
                super::concurrent_records_on_several_instances_write_each_threshold_once(
                    &$harness.await,
                )
                .await;
            }
        }
    };
}

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Harness for Sqlite {
    /// Another process on the same file.
    async fn instance(&self) -> Arc<dyn UsageStore> {
        Arc::new(SqliteStore::open(&self.dir.path().join("usage.db")).unwrap())
    }

    async fn outbox_port(&self) -> Arc<dyn Outbox> {
        Arc::new(SqliteStore::open(&self.dir.path().join("usage.db")).unwrap())
    }

    async fn outbox(&self) -> Vec<(String, Value)> {
        let connection = rusqlite::Connection::open(self.dir.path().join("usage.db")).unwrap();
        let mut statement = connection
            .prepare("SELECT id, payload FROM notification_outbox ORDER BY id")
            .unwrap();
        statement
            .query_map([], |row| {
                let payload: String = row.get(1)?;
                Ok((row.get(0)?, serde_json::from_str(&payload).unwrap()))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

outbox_suite!(sqlite, async {
    Sqlite {
        dir: tempfile::tempdir().unwrap(),
    }
});

struct Firestore {
    emulator: &'static emulator::Emulator,
    project: String,
}

impl Firestore {
    async fn new() -> Self {
        let emulator = emulator::shared().await;
        let project = emulator::unique_project("outbox");
        emulator.clear(&project).await;
        Self { emulator, project }
    }

    async fn connect(&self) -> FirestoreStore {
        FirestoreStore::connect(FirestoreSettings {
            project_id: self.project.clone(),
            database_id: "(default)".to_owned(),
            emulator_host: Some(self.emulator.host()),
            cache_bytes: 32 << 20,
        })
        .await
        .unwrap()
    }
}

impl Harness for Firestore {
    async fn instance(&self) -> Arc<dyn UsageStore> {
        Arc::new(self.connect().await)
    }

    async fn outbox_port(&self) -> Arc<dyn Outbox> {
        Arc::new(self.connect().await)
    }

    /// Through the emulator's REST API: the documents as Firestore holds them.
    async fn outbox(&self) -> Vec<(String, Value)> {
        let listed: Value = reqwest::Client::new()
            .get(
                self.emulator
                    .document_url(&self.project, "notification_outbox?pageSize=300"),
            )
            .bearer_auth("owner")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut entries: Vec<(String, Value)> = listed["documents"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|document| {
                let name = document["name"].as_str().unwrap();
                let id = name.rsplit('/').next().unwrap().to_owned();
                let payload = document["fields"]["payload"]["stringValue"]
                    .as_str()
                    .unwrap();
                (id, serde_json::from_str(payload).unwrap())
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }
}

outbox_suite!(firestore, Firestore::new());

/// What a record costs on Firestore with events on: a record that raises nothing writes what it
/// wrote before; one that crosses writes one entry more.
#[tokio::test]
async fn on_firestore_only_a_crossing_writes_more() {
    let h = Firestore::new().await;
    let store = h.connect().await;
    while !store.overrides_ready() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = "2026-12-04T12:00:00Z";
    let writes = async |tokens| {
        let before = store.operation_counts();
        record(&store, spend("carol", tokens, now)).await;
        (store.operation_counts() - before).document_writes
    };
    assert_eq!(writes(100).await, 2, "the day and the month");
    assert_eq!(writes(100).await, 2, "still nothing crossed");
    assert_eq!(
        writes(700).await,
        3,
        "0.8 crossed: the day, the month, one entry"
    );
    assert_eq!(writes(10).await, 2);
    assert_eq!(ids(&h.outbox().await), ["carol_2026-12-04_daily-80"]);
}

/// A clock the test moves.
struct TestClock(std::sync::Mutex<DateTime<Utc>>);

impl TestClock {
    fn advance(&self, seconds: i64) {
        *self.0.lock().unwrap() += chrono::Duration::seconds(seconds);
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// A sink that refuses its first `failures` attempts, then takes every event, counting both.
struct FlakySink {
    failures: std::sync::atomic::AtomicU32,
    received: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Sink for FlakySink {
    fn name(&self) -> &'static str {
        "flaky"
    }

    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        use std::sync::atomic::Ordering;
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(DeliveryError::Retryable("receiver down".to_owned()));
        }
        self.received
            .lock()
            .unwrap()
            .push(delivery.event_id.to_owned());
        Ok(())
    }
}

/// Workers on two instances share the outbox: a failed attempt is retried after its pause, and
/// every event arrives once.
async fn workers_deliver_each_event_once_after_retries(h: &impl Harness) {
    let store = h.instance().await;
    record(&*store, spend("erin", 1_000, "2026-12-04T10:00:00Z")).await;
    let clock = Arc::new(TestClock(std::sync::Mutex::new(at("2026-12-04T10:00:00Z"))));
    let sink = Arc::new(FlakySink {
        failures: 1.into(),
        received: Default::default(),
    });
    let worker = async || {
        DeliveryWorker::new(
            h.outbox_port().await,
            vec![sink.clone()],
            clock.clone(),
            WorkerSettings::default(),
        )
    };
    let (a, b) = (worker().await, worker().await);
    let outbox = h.outbox_port().await;
    let raised_at = Some(at("2026-12-04T10:00:00Z"));
    let pending = outbox.pending().await.unwrap();
    assert_eq!((pending.count, pending.oldest), (2, raised_at));
    let (taken_a, taken_b) = tokio::join!(a.sweep(), b.sweep());
    assert_eq!(
        taken_a.unwrap() + taken_b.unwrap(),
        2,
        "two events, each taken once"
    );
    assert_eq!(
        sink.received.lock().unwrap().len(),
        1,
        "the first attempt failed"
    );
    assert_eq!(
        a.sweep().await.unwrap(),
        0,
        "the failed one waits for its pause"
    );
    clock.advance(3);
    let (taken_a, taken_b) = tokio::join!(a.sweep(), b.sweep());
    assert_eq!(taken_a.unwrap() + taken_b.unwrap(), 1);
    assert_eq!(outbox.pending().await.unwrap().count, 0);
    let mut received = sink.received.lock().unwrap().clone();
    received.sort();
    assert_eq!(
        received,
        ["erin_2026-12-04_daily-100", "erin_2026-12-04_daily-80"]
    );
    clock.advance(100_000);
    assert_eq!(b.sweep().await.unwrap(), 0, "nothing is due after delivery");
    assert_eq!(outbox.pending().await.unwrap(), Pending::default());
}

/// An event still undelivered when its retry period is over is kept as failed.
async fn an_event_past_its_retry_period_is_kept_as_failed(h: &impl Harness) {
    let store = h.instance().await;
    record(&*store, spend("fred", 850, "2026-12-04T10:00:00Z")).await;
    let clock = Arc::new(TestClock(std::sync::Mutex::new(at("2026-12-04T10:00:00Z"))));
    let sink = Arc::new(FlakySink {
        failures: u32::MAX.into(),
        received: Default::default(),
    });
    let settings = WorkerSettings {
        retry_for: Duration::from_secs(10),
        ..WorkerSettings::default()
    };
    let worker = DeliveryWorker::new(h.outbox_port().await, vec![sink], clock.clone(), settings);
    let mut attempts = 0;
    while worker.sweep().await.unwrap() == 1 || attempts == 0 {
        attempts += 1;
        clock.advance(60);
        assert!(attempts < 10, "never given up");
    }
    clock.advance(100_000);
    assert_eq!(worker.sweep().await.unwrap(), 0, "failed: not due again");
    assert!(attempts >= 2, "retried before giving up ({attempts})");
}

/// Failed events are listed, oldest first and paged; an admin's redelivery makes one pending
/// again with a new retry period, audited in the same commit; asking again while it is pending
/// changes nothing; and a worker then delivers it.
async fn an_admin_lists_failed_events_and_sends_them_again(h: &impl Harness) {
    let store = h.instance().await;
    record(&*store, spend("gina", 1_000, "2026-12-04T10:00:00Z")).await;
    let clock = Arc::new(TestClock(std::sync::Mutex::new(at("2026-12-04T10:00:00Z"))));
    let refusing = Arc::new(FlakySink {
        failures: u32::MAX.into(),
        received: Default::default(),
    });
    let settings = WorkerSettings {
        retry_for: Duration::from_secs(1),
        ..WorkerSettings::default()
    };
    let outbox = h.outbox_port().await;
    let worker = DeliveryWorker::new(outbox.clone(), vec![refusing], clock.clone(), settings);
    assert_eq!(worker.sweep().await.unwrap(), 2);

    let first_page = outbox.entries(OutboxStatus::Failed, None, 1).await.unwrap();
    assert_eq!(
        first_page.len(),
        2,
        "a page of one, and one more: there is a next page"
    );
    assert_eq!(first_page[0].id, "gina_2026-12-04_daily-100");
    let second_page = outbox
        .entries(OutboxStatus::Failed, Some(&first_page[0].cursor()), 1)
        .await
        .unwrap();
    assert_eq!(ids_of(&second_page), ["gina_2026-12-04_daily-80"]);
    assert_eq!(
        second_page[0].last_error.as_deref(),
        Some("flaky: delivery failed, worth retrying: receiver down")
    );
    assert_eq!(
        outbox
            .entries(OutboxStatus::Pending, None, 10)
            .await
            .unwrap(),
        []
    );

    clock.advance(3_600);
    let act = AdminAct {
        actor: UserId::parse("support-admin").unwrap(),
        reason: Some("the receiver is fixed".to_owned()),
        idempotency_key: None,
    };
    let id = "gina_2026-12-04_daily-80";
    let Redelivery::Queued(queued) = outbox.redeliver(id, &act, clock.now()).await.unwrap() else {
        panic!("a failed event is queued again");
    };
    assert_eq!(queued.status, OutboxStatus::Pending);
    assert_eq!(queued.retry_since, clock.now());
    assert!(matches!(
        outbox.redeliver(id, &act, clock.now()).await.unwrap(),
        Redelivery::AlreadyPending(_)
    ));
    assert_eq!(
        outbox
            .redeliver("nobody_2026-12-04_denied", &act, clock.now())
            .await
            .unwrap(),
        Redelivery::NotFound
    );
    let audit = AuditQuery {
        user_id: Some(UserId::parse("gina").unwrap()),
        actor: None,
        since: None,
        limit: 10,
        after: None,
    };
    let entries = store.audit_entries(&audit).await.unwrap();
    assert_eq!(
        entries.len(),
        1,
        "one redelivery, audited once: {entries:?}"
    );
    assert_eq!(entries[0].action, AuditAction::NotificationRedelivered);
    assert_eq!(entries[0].before.as_ref().unwrap()["status"], "failed");
    assert_eq!(entries[0].after.as_ref().unwrap()["status"], "pending");
    assert_eq!(entries[0].reason.as_deref(), Some("the receiver is fixed"));

    let working = Arc::new(FlakySink {
        failures: 0.into(),
        received: Default::default(),
    });
    let worker = DeliveryWorker::new(
        outbox.clone(),
        vec![working.clone()],
        clock.clone(),
        settings,
    );
    assert_eq!(worker.sweep().await.unwrap(), 1);
    assert_eq!(*working.received.lock().unwrap(), [id]);
    let delivered = outbox
        .entries(OutboxStatus::Delivered, None, 10)
        .await
        .unwrap();
    assert_eq!(ids_of(&delivered), [id]);
    let failed = outbox
        .entries(OutboxStatus::Failed, None, 10)
        .await
        .unwrap();
    assert_eq!(ids_of(&failed), ["gina_2026-12-04_daily-100"]);
}

fn ids_of(entries: &[OutboxEntry]) -> Vec<&str> {
    entries.iter().map(|entry| entry.id.as_str()).collect()
}

fn delivered() -> DeliveryOutcome {
    DeliveryOutcome::Delivered {
        delivered_to: ["webhook".to_owned()].into(),
    }
}

/// Settles the one entry `uid` raised, as delivered at `at`.
async fn deliver_all(outbox: &dyn Outbox, at: DateTime<Utc>) {
    for entry in outbox.due(at, 10).await.unwrap() {
        let claimed = outbox.claim(&entry, at).await.unwrap().unwrap();
        assert!(outbox.settle(&claimed, &delivered(), at).await.unwrap());
    }
}

/// A delivered entry is kept 30 days, then `cleanup` deletes it with the expired keys.
#[tokio::test]
async fn cleanup_deletes_settled_entries_after_their_retention_on_sqlite() {
    use token_limits::lifecycle::DocumentStore;
    let h = Sqlite {
        dir: tempfile::tempdir().unwrap(),
    };
    let store = SqliteStore::open(&h.dir.path().join("usage.db")).unwrap();
    record(&store, spend("gina", 800, "2026-12-04T10:00:00Z")).await;
    let delivered_at = at("2026-12-04T10:00:05Z");
    deliver_all(&store, delivered_at).await;
    let day = chrono::Duration::days(1);
    assert_eq!(
        store
            .delete_expired_keys(delivered_at + day * 29, 100)
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(h.outbox().await.len(), 1, "kept within its retention");
    assert_eq!(
        store
            .delete_expired_keys(delivered_at + day * 31, 100)
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(h.outbox().await, []);
}

/// On Firestore a delivered entry carries `expiresAt`, for the collection's TTL policy.
#[tokio::test]
async fn settled_entries_carry_their_expiry_on_firestore() {
    let h = Firestore::new().await;
    let store = h.connect().await;
    record(&store, spend("hugo", 800, "2026-12-04T10:00:00Z")).await;
    deliver_all(&store, at("2026-12-04T10:00:05Z")).await;
    let document: Value = reqwest::Client::new()
        .get(
            h.emulator
                .document_url(&h.project, "notification_outbox/hugo_2026-12-04_daily-80"),
        )
        .bearer_auth("owner")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(document["fields"]["status"]["stringValue"], "delivered");
    assert_eq!(
        document["fields"]["expiresAt"]["timestampValue"],
        "2027-01-03T10:00:05Z"
    );
}
