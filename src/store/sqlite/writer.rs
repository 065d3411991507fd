//! The embedded store's one writer: a thread that owns the write connection and applies the
//! records waiting for it as a group, in order, in one transaction. Each record runs in a
//! savepoint of its own, so it sees the records before it and a failing one rolls back alone;
//! every record of the group is answered only once the group's commit succeeded.
//!
//! SQLite runs one writer at a time anyway: one thread and one commit per group take the
//! place of a thread hand-off, a lock and a commit per record.

use std::time::{Duration, Instant};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::checkpointer::{self, Checkpointer};
use super::{RecordStatements, store_error};
use crate::metrics::SQLITE_GROUP_COMMIT_SIZE;
use crate::usage::{Deadline, RecordRequest, Recorded, StoreError};

/// The most records one transaction applies: bounds the latency a group adds to its first.
const MAX_GROUP: usize = 256;

/// Records waiting for the writer; beyond this, callers wait for room until their deadline.
const QUEUE_CAPACITY: usize = 4096;

type Answer = Result<Recorded, StoreError>;

struct Job {
    request: RecordRequest,
    deadline: Deadline,
    answer: oneshot::Sender<Answer>,
}

/// Hands records to the writer thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// The writer on `connection`, its pages checkpointed by `checkpoints`.
    pub(super) fn start(
        connection: Connection,
        checkpoints: Checkpointer,
    ) -> Result<Self, StoreError> {
        connection
            .pragma_update(None, "wal_autocheckpoint", checkpointer::BACKSTOP_PAGES)
            .map_err(store_error)?;
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let (started, start) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || run(connection, queue, checkpoints, started))
            .map_err(|e| StoreError::Internal(format!("cannot start the sqlite writer: {e}")))?;
        start.recv().map_err(|_| stopped())??;
        Ok(Self { jobs })
    }

    /// Applies `request` in the next group. A record still queued when the deadline's time
    /// for writes ends is answered 503 unapplied: none begins after it. Once queued, the
    /// writer's answer is awaited until the deadline; it comes long before, as a group
    /// applies in milliseconds, but if it did not, whether the record was applied is unknown.
    pub(super) async fn record(&self, request: RecordRequest, deadline: Deadline) -> Answer {
        let (answer, answered) = oneshot::channel();
        let job = Job {
            request,
            deadline,
            answer,
        };
        tokio::time::timeout_at(deadline.writes_until().into(), self.jobs.send(job))
            .await
            .map_err(|_| late())?
            .map_err(|_| stopped())?;
        tokio::time::timeout_at(deadline.work_until().into(), answered)
            .await
            .map_err(|_| {
                StoreError::OutcomeUnknown(
                    "the sqlite writer did not answer before the deadline".to_owned(),
                )
            })?
            .map_err(|_| stopped())?
    }

    /// Fails once the writer thread has stopped: no record can be applied any more.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.jobs.is_closed() {
            Err(stopped())
        } else {
            Ok(())
        }
    }
}

fn late() -> StoreError {
    StoreError::Unavailable("the store is busy: deadline reached".to_owned())
}

fn stopped() -> StoreError {
    StoreError::Internal("the sqlite writer stopped".to_owned())
}

/// The writer thread: answers `started` once its statements are prepared, then applies groups
/// until every handle is dropped.
fn run(
    connection: Connection,
    mut queue: mpsc::Receiver<Job>,
    checkpoints: Checkpointer,
    started: std::sync::mpsc::SyncSender<Result<(), StoreError>>,
) {
    let mut statements = match RecordStatements::prepare(&connection) {
        Ok(statements) => statements,
        Err(error) => {
            let _ = started.send(Err(store_error(error)));
            return;
        }
    };
    // `start` is waiting for this answer.
    let _ = started.send(Ok(()));
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!(SQLITE_GROUP_COMMIT_SIZE).record(group.len() as f64);
        let turn = checkpoints.group_turn();
        let answered = apply_group(&connection, &mut statements, group);
        drop(turn);
        checkpoints.committed();
        for (job, answer) in answered {
            // The caller may have stopped waiting; what was committed stays committed.
            let _ = job.answer.send(answer);
        }
    }
}

/// Applies the group in one `BEGIN IMMEDIATE` transaction, each record in its savepoint.
fn apply_group(
    connection: &Connection,
    statements: &mut RecordStatements<'_>,
    group: Vec<Job>,
) -> Vec<(Job, Answer)> {
    let now = Instant::now();
    // Another process's lock is waited for as long as the latest deadline allows; a record
    // whose own deadline passes meanwhile is then answered unapplied.
    let patience = group
        .iter()
        .map(|job| job.deadline.writes_until().saturating_duration_since(now))
        .max()
        .unwrap_or(Duration::ZERO);
    // Unchecked only in that it takes the connection shared, as the prepared statements do.
    let transaction = connection
        .busy_timeout(patience)
        .and_then(|()| Transaction::new_unchecked(connection, TransactionBehavior::Immediate));
    let transaction = match transaction {
        Ok(transaction) => transaction,
        Err(error) => {
            let error = store_error(error);
            return group
                .into_iter()
                .map(|job| (job, Err(error.clone())))
                .collect();
        }
    };
    let mut answered = Vec::with_capacity(group.len());
    // Set when a record's savepoint could not be undone or released: then nothing of the
    // group is kept.
    let mut unsure: Option<StoreError> = None;
    for job in group {
        let answer = match &unsure {
            Some(error) => Err(error.clone()),
            None if !job.deadline.may_write() => Err(late()),
            None => statements
                .apply_in_savepoint(&job.request)
                .unwrap_or_else(|error| {
                    let error = store_error(error);
                    unsure = Some(error.clone());
                    Err(error)
                }),
        };
        answered.push((job, answer));
    }
    // Unsure, the transaction is dropped unfinished, which rolls it back.
    let ended = match unsure {
        Some(error) => Err(error),
        None => transaction.commit().map_err(store_error),
    };
    match ended {
        Ok(()) => answered,
        // Nothing of the group was written: every record that would have been is refused.
        Err(error) => answered
            .into_iter()
            .map(|(job, answer)| (job, answer.and_then(|_| Err(error.clone()))))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};
    use chrono_tz::Tz;

    use super::super::SqliteStore;
    use super::*;
    use crate::usage::{
        Action, DayWindow, Limits, RecordOutcome, Tokens, UsageStore, UserId, UserType,
    };

    fn spend(user: &str, tokens: i64) -> RecordRequest {
        let now: DateTime<Utc> = "2024-01-15T10:00:00Z".parse().unwrap();
        RecordRequest {
            user_id: UserId::parse(user).unwrap(),
            action: Action::Spend {
                tokens: Tokens::bounded(tokens, i64::MAX).unwrap(),
                user_type: UserType::Trial,
            },
            window: DayWindow::containing(now, Tz::UTC),
            limits: Limits::uniform(1_000),
            commit_grace: chrono::Duration::zero(),
            now,
            idempotency: None,
            audit_actor: None,
            thresholds: Default::default(),
        }
    }

    /// A store, and a connection holding the file's write lock until it is dropped, so that
    /// the records sent meanwhile queue up for one group.
    fn blocked_store(dir: &tempfile::TempDir) -> (Arc<SqliteStore>, Connection) {
        let path = dir.path().join("usage.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        (store, blocker)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_record_rolls_back_alone_and_its_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (store, blocker) = blocked_store(&dir);
        // A month that does not decode: a record of its user fails inside the group.
        blocker
            .execute(
                "INSERT INTO token_usage_history VALUES ('broken_2024_01', 'broken', 2024, 1,
                 'not json', 0, 0.0, '15', 0, 'trial', '2024-01-01T00:00:00Z',
                 '2024-01-01T00:00:00Z', NULL)",
                [],
            )
            .unwrap();
        let deadline = Deadline::from_now(Duration::from_secs(10));
        let first = {
            let store = store.clone();
            tokio::spawn(async move { store.record(spend("first", 1), deadline).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut others = Vec::new();
        for n in 0..40 {
            let user = if n == 20 {
                "broken".to_owned()
            } else {
                format!("u{n}")
            };
            let store = store.clone();
            others.push(tokio::spawn(async move {
                (user.clone(), store.record(spend(&user, 10), deadline).await)
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        blocker.execute_batch("COMMIT").unwrap();

        assert!(first.await.unwrap().is_ok());
        let date = "2024-01-15".parse().unwrap();
        for other in others {
            let (user, answer) = other.await.unwrap();
            if user == "broken" {
                assert!(matches!(answer, Err(StoreError::Corrupt(_))), "{answer:?}");
                let days: i64 = blocker
                    .query_row(
                        "SELECT COUNT(*) FROM daily_token_usage WHERE user_id = 'broken'",
                        [],
                        |row| row.get(0),
                    )
                    .unwrap();
                assert_eq!(days, 0, "the failed record wrote its day");
            } else {
                let user_id = UserId::parse(&user).unwrap();
                let stored = store.day_and_month(&user_id, date).await.unwrap().day;
                let outcome = answer.unwrap().outcome;
                assert!(matches!(outcome, RecordOutcome::Admitted(_)), "{outcome:?}");
                assert_eq!(stored.unwrap().usage.tokens_used, 10, "{user}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_still_waiting_when_writes_end_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, blocker) = blocked_store(&dir);
        let deadline = Deadline::from_now(Duration::from_millis(400));
        let answer = {
            let store = store.clone();
            tokio::spawn(async move { store.record(spend("late", 1), deadline).await })
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        blocker.execute_batch("COMMIT").unwrap();
        assert!(matches!(
            answer.await.unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        let date = "2024-01-15".parse().unwrap();
        let user = UserId::parse("late").unwrap();
        assert!(
            store
                .day_and_month(&user, date)
                .await
                .unwrap()
                .day
                .is_none()
        );
    }

    /// The writer's pauses for a WAL restart counted so far, by every store of this process.
    fn restart_pauses() -> u64 {
        let registry = crate::metrics::registry().unwrap();
        let count = format!("{}_count ", crate::metrics::SQLITE_WAL_RESTART_PAUSE);
        registry
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(&count))
            .map_or(0, |value| value.parse().unwrap())
    }

    /// Steady records that never let the writer rest: the WAL still starts over near the
    /// checkpointer's threshold instead of growing to the backstop, each time in a pause of
    /// the writer that the metrics show.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_writes_that_never_stop() {
        let pauses_before = restart_pauses();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("usage.db")).unwrap());
        let deadline = Deadline::from_now(Duration::from_secs(120));
        let tasks: Vec<_> = (0..64)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(async move {
                    for n in 0..1_000 {
                        let user = format!("u{}", (task * 7 + n) % 500);
                        store.record(spend(&user, 1), deadline).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let frame = 4096 + 24;
        let wal = std::fs::metadata(dir.path().join("usage.db-wal"))
            .unwrap()
            .len();
        assert!(
            wal < u64::from(checkpointer::BACKSTOP_PAGES) * frame,
            "the WAL grew to {wal} bytes"
        );
        assert!(restart_pauses() > pauses_before, "no pause was counted");
    }
}
