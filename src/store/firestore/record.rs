//! The record path on Firestore: one optimistic read-modify-write, retried on contention, from
//! the document cache when it has the record's documents, and a lost commit settled by
//! sending it again or reading the day back.

use std::collections::HashMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use firestore::gcloud_sdk::google::firestore::v1::precondition::ConditionType;
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use firestore::gcloud_sdk::google::firestore::v1::{
    Document, DocumentMask, Precondition, Write, write,
};
use firestore::gcloud_sdk::tonic::Status;

use super::cache::CachedDocument;
use super::client::{
    AttemptError, CommitFailure, MIN_RPC_TIMEOUT, commit_failure, describe, read_failure,
};
use super::codec;
use super::{FirestoreStore, steering};
use crate::store::queries::{
    AUDIT_COLLECTION, DAILY_COLLECTION, HISTORY_COLLECTION, OUTBOX_COLLECTION,
};
use crate::usage::{
    Deadline, IdempotencyKey, LimitOverride, Plan, RecordRequest, Recorded, Snapshot, StoreError,
    StoredDay, UserId, Writes,
};

/// The service's own collection: idempotency records, deleted by a TTL policy on `expiresAt`.
const IDEMPOTENCY: &str = "idempotency_keys";

/// What settling a lost commit found.
enum Settled {
    /// The commit was applied, once.
    Applied,
    /// Whether it was applied cannot be told, and why.
    Unknown(&'static str),
}

impl FirestoreStore {
    /// One try of a record: straight from cached documents when this instance has them all,
    /// else from a fresh read.
    async fn attempt(
        &self,
        request: &RecordRequest,
        names: &RecordNames,
        deadline: Deadline,
    ) -> Result<Recorded, AttemptError> {
        // From the listener-fed copy: no read while it is current.
        let limit_override = self
            .read_override(&request.user_id, deadline.time_left())
            .await?;
        let limit_override = limit_override.as_ref();
        if let Some(cached) = self.cached_snapshot(names, limit_override).await {
            let plan = request
                .plan(&cached.snapshot)
                .map_err(|error| AttemptError::Permanent(error.into()))?;
            // A decision that writes nothing (a denial, a refusal) is only as true as the copy
            // it came from: it is taken again from a fresh read.
            if plan.writes.is_some() {
                self.counters.cached_commit();
                match self
                    .commit_plan(
                        request,
                        names,
                        &cached.snapshot,
                        plan,
                        &cached.conditions,
                        deadline,
                    )
                    .await
                {
                    Err(AttemptError::Contention) => self.counters.stale_cached_commit(),
                    answer => return answer,
                }
            }
        }
        let read = self
            .batch_get(&names.all(), deadline.time_left())
            .await
            .map_err(read_failure)?;
        let snapshot = names.snapshot(&read, limit_override)?;
        let plan = request
            .plan(&snapshot)
            .map_err(|error| AttemptError::Permanent(error.into()))?;
        // A commit caches what it wrote, or forgets the copies: only a decision that writes
        // nothing keeps what was read.
        if plan.writes.is_none() {
            self.remember_read(names, &read, &snapshot).await;
            return Ok(plan.applied());
        }
        let conditions = Conditions::as_read(names, &read);
        self.commit_plan(request, names, &snapshot, plan, &conditions, deadline)
            .await
    }

    /// The record's documents from the cache, when it has every one the request reads. An
    /// idempotency record is taken not to exist: its write requires that.
    async fn cached_snapshot(
        &self,
        names: &RecordNames,
        limit_override: Option<&LimitOverride>,
    ) -> Option<CachedRecord> {
        let day = self.cache.get(&names.day).await?;
        let CachedDocument::Day(stored_day) = &day.document else {
            return None;
        };
        let month = self.cache.get(&names.month).await?;
        let CachedDocument::Month(stored_month, month_notified) = &month.document else {
            return None;
        };
        Some(CachedRecord {
            snapshot: Snapshot {
                day: Some(stored_day.clone()),
                month: Some(stored_month.clone()),
                idempotency: None,
                limit_override: limit_override.cloned(),
                month_notified: month_notified.clone(),
            },
            conditions: Conditions {
                day: ConditionType::UpdateTime(day.update_time),
                month: ConditionType::UpdateTime(month.update_time),
                idempotency: ConditionType::Exists(false),
            },
        })
    }

    async fn remember_read(
        &self,
        names: &RecordNames,
        read: &HashMap<String, Document>,
        snapshot: &Snapshot,
    ) {
        let update_time = |name: &str| read.get(name).and_then(|document| document.update_time);
        if let (Some(day), Some(update_time)) = (&snapshot.day, update_time(&names.day)) {
            self.cache
                .put_day(&names.day, update_time, day.clone())
                .await;
        }
        if let (Some(month), Some(update_time)) = (&snapshot.month, update_time(&names.month)) {
            self.cache
                .put_month(
                    &names.month,
                    update_time,
                    month.clone(),
                    snapshot.month_notified.clone(),
                )
                .await;
        }
    }

    /// Commits a plan's writes on `conditions`. Applied, the documents as written are cached;
    /// refused or lost, the record's cached documents are forgotten.
    async fn commit_plan(
        &self,
        request: &RecordRequest,
        names: &RecordNames,
        snapshot: &Snapshot,
        plan: Plan,
        conditions: &Conditions,
        deadline: Deadline,
    ) -> Result<Recorded, AttemptError> {
        let Some(writes) = &plan.writes else {
            return Ok(plan.applied());
        };
        if !deadline.may_write() {
            return Err(AttemptError::TooLate);
        }
        let stored_day = snapshot.day.as_ref();
        let written_day = StoredDay {
            usage: writes.day.clone(),
            reservations: writes.reservations.clone().unwrap_or_else(|| {
                stored_day
                    .map(|day| day.reservations.clone())
                    .unwrap_or_default()
            }),
            notified: writes.raised.day_marks.clone().unwrap_or_else(|| {
                stored_day
                    .map(|day| day.notified.clone())
                    .unwrap_or_default()
            }),
        };
        let written_month_notified =
            (writes.raised.month_marks.clone()).unwrap_or_else(|| snapshot.month_notified.clone());
        let write_id = uuid::Uuid::new_v4().to_string();
        let commit = names.conditional_writes(request, writes, conditions, &write_id);
        // Half the time left, so that a lost answer can still be settled in the other half.
        match self.commit(commit.clone(), deadline.time_left() / 2).await {
            Ok(results) => {
                let mut update_times = results.into_iter().map(|result| result.update_time);
                if let Some(Some(update_time)) = update_times.next() {
                    self.cache
                        .put_day(&names.day, update_time, written_day)
                        .await;
                }
                if let (Some(month), Some(Some(update_time))) = (&writes.month, update_times.next())
                {
                    self.cache
                        .put_month(
                            &names.month,
                            update_time,
                            month.clone(),
                            written_month_notified,
                        )
                        .await;
                }
                Ok(plan.applied())
            }
            Err(status) => {
                self.cache.forget(&names.cached()).await;
                match commit_failure(status) {
                    CommitFailure::Refused(error) => Err(error),
                    CommitFailure::AnswerLost(status) => {
                        self.counters.lost_answer();
                        self.settle_lost_commit(names, commit, &write_id, status, deadline)
                            .await
                            .map(|()| plan.applied())
                    }
                }
            }
        }
    }

    /// A commit whose answer was lost wrote everything or nothing, and may still be on its way:
    /// a read cannot rule out that it lands later. So the very same commit, with the same
    /// preconditions, is sent again; at most one of the two can ever apply. Applied: done.
    /// Refused: the day changed since it was read, and reading it back tells whether this
    /// commit did it, for the day then carries this commit's `writeId`. Only when the request's
    /// time runs out, or another writer changed the day since, is the outcome unknown.
    async fn settle_lost_commit(
        &self,
        names: &RecordNames,
        commit: Vec<Write>,
        write_id: &str,
        status: Status,
        deadline: Deadline,
    ) -> Result<(), AttemptError> {
        let settled = tokio::time::timeout_at(
            deadline.work_until().into(),
            self.resend_or_read_back(names, commit, write_id, deadline),
        )
        .await;
        let why = match settled {
            Ok(Ok(Settled::Applied)) => return Ok(()),
            Ok(Ok(Settled::Unknown(why))) => why,
            Ok(Err(error)) => return Err(error),
            Err(_) => "no answer came before the deadline",
        };
        tracing::warn!(error = %describe(&status), why, "a commit's outcome is unknown");
        self.counters.unknown_outcome();
        Err(AttemptError::Ambiguous(format!(
            "{}; {why}",
            describe(&status)
        )))
    }

    /// The steps of [`Self::settle_lost_commit`], each call within the time left.
    async fn resend_or_read_back(
        &self,
        names: &RecordNames,
        commit: Vec<Write>,
        write_id: &str,
        deadline: Deadline,
    ) -> Result<Settled, AttemptError> {
        let time_left = || deadline.time_left() >= MIN_RPC_TIMEOUT;
        let resend = (|| async {
            match self.commit(commit.clone(), deadline.time_left()).await {
                Ok(_) => Ok(true),
                Err(status) => match commit_failure(status) {
                    CommitFailure::Refused(AttemptError::Contention) => Ok(false),
                    CommitFailure::Refused(error) => Err(Some(error)),
                    CommitFailure::AnswerLost(_) => Err(None),
                },
            }
        })
        .retry(Self::settle_backoff())
        .sleep(tokio::time::sleep)
        .when(|lost| lost.is_none() && time_left())
        .await;
        match resend {
            Ok(true) => return Ok(Settled::Applied),
            Ok(false) => {}
            Err(None) => return Ok(Settled::Unknown("it could not be sent again")),
            Err(Some(error)) => return Err(error),
        }
        let day_only = [names.day.as_str()];
        let read_back = (|| self.batch_get(&day_only, deadline.time_left()))
            .retry(Self::settle_backoff())
            .sleep(tokio::time::sleep)
            .when(|_| time_left())
            .await;
        let Ok(now) = read_back else {
            return Ok(Settled::Unknown("the day could not be read back"));
        };
        let written_by = now
            .get(&names.day)
            .and_then(|day| day.fields.get(codec::WRITE_ID_FIELD))
            .and_then(|value| match &value.value_type {
                Some(ValueType::StringValue(id)) => Some(id.as_str()),
                _ => None,
            });
        Ok(if written_by == Some(write_id) {
            Settled::Applied
        } else {
            Settled::Unknown("the day was changed by another writer since")
        })
    }

    fn settle_backoff() -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(200))
            .without_max_times()
    }

    pub(super) async fn record_within(
        &self,
        request: RecordRequest,
        deadline: Deadline,
    ) -> Result<Recorded, StoreError> {
        let names = RecordNames {
            day: self.document_name(DAILY_COLLECTION, &request.day_id()),
            month: self.document_name(HISTORY_COLLECTION, &request.month_id()),
            audit_prefix: self.document_name(AUDIT_COLLECTION, ""),
            outbox_prefix: self.document_name(OUTBOX_COLLECTION, ""),
            idempotency: request.idempotency_key().map(|key| {
                self.document_name(IDEMPOTENCY, &idempotency_document_id(&request.user_id, key))
            }),
        };
        // No commit is sent after the time for writes; one under way ends by the deadline.
        let _turn = tokio::time::timeout_at(
            deadline.writes_until().into(),
            self.queue.turn(request.user_id.as_str()),
        )
        .await
        .map_err(|_| StoreError::Unavailable("too many requests queued for one user".to_owned()))?;
        // Contenders for one user back off briefly and at random, so that each round has a
        // winner rather than everyone colliding again.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(150))
            .with_factor(1.5)
            .with_jitter()
            .without_max_times();
        (|| self.attempt(&request, &names, deadline))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|error| error.retryable() && deadline.may_write())
            .notify(|error, _| match error {
                AttemptError::Contention => self.counters.contention_retry(),
                _ => self.counters.transient_retry(),
            })
            .await
            .map_err(AttemptError::into_store_error)
    }
}

/// The documents one record touches.
struct RecordNames {
    day: String,
    month: String,
    idempotency: Option<String>,
    /// `.../documents/token_limit_audit/`: an audited change's entry is named by its id.
    audit_prefix: String,
    /// `.../documents/notification_outbox/`: an event's entry is named by its id.
    outbox_prefix: String,
}

impl RecordNames {
    fn all(&self) -> Vec<&str> {
        let mut names = vec![self.day.as_str(), self.month.as_str()];
        names.extend(self.idempotency.as_deref());
        names
    }

    fn snapshot(
        &self,
        read: &HashMap<String, Document>,
        limit_override: Option<&LimitOverride>,
    ) -> Result<Snapshot, codec::DecodeError> {
        Ok(Snapshot {
            day: read
                .get(&self.day)
                .map(codec::stored_day_from)
                .transpose()?,
            month: read.get(&self.month).map(codec::month_from).transpose()?,
            idempotency: self
                .idempotency
                .as_ref()
                .and_then(|name| read.get(name))
                .map(codec::idempotency_from)
                .transpose()?,
            limit_override: limit_override.cloned(),
            month_notified: read
                .get(&self.month)
                .map(codec::marks_from)
                .transpose()?
                .unwrap_or_default(),
        })
    }

    /// The documents a record may have cached.
    fn cached(&self) -> Vec<&str> {
        vec![self.day.as_str(), self.month.as_str()]
    }

    /// The plan's writes, day first, then the month, then the idempotency record, each on
    /// its condition; the day carries `write_id`.
    fn conditional_writes(
        &self,
        request: &RecordRequest,
        writes: &Writes,
        conditions: &Conditions,
        write_id: &str,
    ) -> Vec<Write> {
        // Reservations that changed are written whole (none left removes the field); others
        // stay as stored.
        let (mut day_fields, mut day_mask) = match &writes.reservations {
            Some(reservations) => (
                codec::stored_day_fields(&writes.day, reservations),
                codec::stored_day_mask(),
            ),
            None => (codec::day_fields(&writes.day), codec::DAY_FIELDS.to_vec()),
        };
        day_fields.insert(codec::WRITE_ID_FIELD.to_owned(), codec::string(write_id));
        day_mask.push(codec::WRITE_ID_FIELD);
        if let Some(marks) = &writes.raised.day_marks {
            day_fields.insert(codec::NOTIFIED_FIELD.to_owned(), codec::marks_value(marks));
            day_mask.push(codec::NOTIFIED_FIELD);
        }
        let mut conditional = vec![conditional_update(
            &self.day,
            day_fields,
            &day_mask,
            conditions.day,
        )];
        if let Some(month) = &writes.month {
            let (mut fields, mut mask) = (codec::month_fields(month), codec::MONTH_FIELDS.to_vec());
            if let Some(marks) = &writes.raised.month_marks {
                fields.insert(codec::NOTIFIED_FIELD.to_owned(), codec::marks_value(marks));
                mask.push(codec::NOTIFIED_FIELD);
            }
            conditional.push(conditional_update(
                &self.month,
                fields,
                &mask,
                conditions.month,
            ));
        }
        if let (Some(name), Some(key), Some(record)) = (
            &self.idempotency,
            request.idempotency_key(),
            &writes.idempotency,
        ) {
            let fields =
                codec::idempotency_fields(&request.user_id, key.as_str(), record, request.now);
            conditional.push(conditional_update(
                name,
                fields,
                codec::IDEMPOTENCY_FIELDS,
                conditions.idempotency,
            ));
        }
        if let Some(entry) = &writes.audit {
            let name = format!("{}{}", self.audit_prefix, entry.id);
            conditional.push(steering::audit_write(&name, entry));
        }
        // The day's and month's marks keep an event from being raised twice, so its entry is
        // written whatever is there: a commit must never fail on an outbox entry.
        for event in &writes.raised.events {
            let name = format!("{}{}", self.outbox_prefix, event.id);
            conditional.push(unconditional_update(
                &name,
                codec::outbox_fields(event),
                codec::OUTBOX_FIELDS,
            ));
        }
        conditional
    }
}

/// What each write of a record requires of its document: to be as it was read, or as cached.
struct Conditions {
    day: ConditionType,
    month: ConditionType,
    idempotency: ConditionType,
}

impl Conditions {
    fn as_read(names: &RecordNames, read: &HashMap<String, Document>) -> Self {
        Self {
            day: unchanged_since_read(read.get(&names.day)),
            month: unchanged_since_read(read.get(&names.month)),
            idempotency: unchanged_since_read(
                names.idempotency.as_ref().and_then(|name| read.get(name)),
            ),
        }
    }
}

/// A record's documents as cached, and the conditions that they are still so.
struct CachedRecord {
    snapshot: Snapshot,
    conditions: Conditions,
}

/// The document is still as read: at the same update time, or still missing.
pub fn unchanged_since_read(as_read: Option<&Document>) -> ConditionType {
    match as_read.and_then(|document| document.update_time) {
        Some(update_time) => ConditionType::UpdateTime(update_time),
        None if as_read.is_some() => ConditionType::Exists(true),
        None => ConditionType::Exists(false),
    }
}

/// An update of the fields this service owns, on `condition`. Fields written by others stay
/// as they are.
pub fn conditional_update(
    name: &str,
    fields: codec::Fields,
    owned_fields: &[&str],
    condition: ConditionType,
) -> Write {
    Write {
        operation: Some(write::Operation::Update(Document {
            name: name.to_owned(),
            fields,
            ..Default::default()
        })),
        update_mask: Some(DocumentMask {
            field_paths: owned_fields.iter().map(|field| field.to_string()).collect(),
        }),
        current_document: Some(Precondition {
            condition_type: Some(condition),
        }),
        ..Default::default()
    }
}

/// An update of the fields this service owns, whatever the document's state.
fn unconditional_update(name: &str, fields: codec::Fields, owned_fields: &[&str]) -> Write {
    Write {
        current_document: None,
        ..conditional_update(name, fields, owned_fields, ConditionType::Exists(true))
    }
}

/// Document ids cannot hold `/` and keys may: the key is spelled in hex.
fn idempotency_document_id(user_id: &UserId, key: &IdempotencyKey) -> String {
    let hex: String = key.as_str().bytes().map(|b| format!("{b:02x}")).collect();
    format!("{user_id}_k{hex}")
}
