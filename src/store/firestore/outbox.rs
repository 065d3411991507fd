//! The outbox port on Firestore: an entry's version is its update time, and every change is
//! a commit on the condition that the entry still has it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use firestore::gcloud_sdk::google::firestore::v1::precondition::ConditionType;
use firestore::gcloud_sdk::google::firestore::v1::structured_query::{
    Direction as OrderDirection, FieldReference, Order,
};
use firestore::gcloud_sdk::google::firestore::v1::{Cursor, Value, value::ValueType};
use firestore::gcloud_sdk::prost_types::Timestamp;
use firestore::gcloud_sdk::tonic::Code;

use super::client::{
    AttemptError, CommitFailure, MAX_RPC_TIMEOUT, Snapshot, commit_failure, read_failure,
};
use super::record::conditional_update;
use super::reports::structured_query;
use super::steering::audit_write;
use super::{FirestoreStore, codec};
use crate::store::queries::{self, AUDIT_COLLECTION, OUTBOX_COLLECTION};
use crate::usage::{
    AdminAct, DeliveryOutcome, Outbox, OutboxCursor, OutboxEntry, OutboxStatus, Pending,
    Redelivery, StoreError,
};

/// How often a redelivery is tried again when the entry changed between its read and its
/// commit (a worker settled it meanwhile).
const REDELIVERY_ATTEMPTS: usize = 3;

fn update_time_of(version: &str) -> Result<Timestamp, StoreError> {
    let parsed = version.split_once('.').and_then(|(seconds, nanos)| {
        Some(Timestamp {
            seconds: seconds.parse().ok()?,
            nanos: nanos.parse().ok()?,
        })
    });
    parsed.ok_or_else(|| StoreError::Internal(format!("{version:?} is no outbox version")))
}

impl FirestoreStore {
    /// Writes `fields` of the entry if it is still at its version: the new version, or `None`
    /// when it changed since.
    async fn change_as_read(
        &self,
        entry: &OutboxEntry,
        fields: codec::Fields,
    ) -> Result<Option<String>, StoreError> {
        self.change_as_read_with(entry, fields, &[], None).await
    }

    /// [`Self::change_as_read`], removing the fields `removed` too, and appending `audit` in
    /// the same commit.
    async fn change_as_read_with(
        &self,
        entry: &OutboxEntry,
        fields: codec::Fields,
        removed: &[&str],
        audit: Option<&crate::usage::AuditEntry>,
    ) -> Result<Option<String>, StoreError> {
        let name = self.document_name(OUTBOX_COLLECTION, &entry.id);
        let mask: Vec<&str> = fields
            .keys()
            .map(String::as_str)
            .chain(removed.iter().copied())
            .collect();
        let condition = ConditionType::UpdateTime(update_time_of(&entry.version)?);
        let mut writes = vec![conditional_update(&name, fields.clone(), &mask, condition)];
        if let Some(audit) = audit {
            writes.push(audit_write(
                &self.document_name(AUDIT_COLLECTION, &audit.id),
                audit,
            ));
        }
        match self.commit(writes, MAX_RPC_TIMEOUT).await {
            Ok(results) => Ok(results
                .into_iter()
                .next()
                .and_then(|result| result.update_time)
                .map(|at| format!("{}.{:09}", at.seconds, at.nanos))),
            // Deleted by its retention, or changed since it was read.
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => match commit_failure(status) {
                CommitFailure::Refused(AttemptError::Contention) => Ok(None),
                CommitFailure::Refused(error) => Err(error.into_store_error()),
                CommitFailure::AnswerLost(status) => Err(StoreError::OutcomeUnknown(format!(
                    "the change of the event {} may or may not be applied: {}",
                    entry.id,
                    status.message()
                ))),
            },
        }
    }
}

#[async_trait]
impl Outbox for FirestoreStore {
    /// Counted by an aggregation, and the oldest read alone: two reads while fewer than a
    /// thousand are pending.
    async fn pending(&self) -> Result<Pending, StoreError> {
        let pending = [codec::string(OutboxStatus::Pending.as_str())];
        let shape = &queries::OUTBOX_BY_STATUS;
        let (totals, _) = self
            .totals(shape, "attempts", &pending, Snapshot::Begin)
            .await?;
        let mut query = structured_query(shape, &pending);
        query.limit = Some(1);
        let oldest = match self.run_query(query).await?.first() {
            Some(document) => Some(
                codec::outbox_from(document)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?
                    .created_at,
            ),
            None => None,
        };
        Ok(Pending {
            count: u64::try_from(totals.active_users).unwrap_or_default(),
            oldest,
        })
    }

    /// The first pending entries by next attempt, of which those due: a sweep reads at most
    /// `limit` entries even when none is due.
    async fn due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut query = structured_query(
            &queries::OUTBOX_DUE,
            &[codec::string(OutboxStatus::Pending.as_str())],
        );
        query.limit = Some(i32::try_from(limit).unwrap_or(i32::MAX));
        let documents = self.run_query(query).await?;
        let mut due = Vec::new();
        for document in &documents {
            let entry =
                codec::outbox_from(document).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if entry.next_attempt_at > now {
                break;
            }
            due.push(entry);
        }
        Ok(due)
    }

    async fn claim(
        &self,
        entry: &OutboxEntry,
        until: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let claimed = entry.claimed(until);
        let fields = codec::Fields::from([
            (
                "attempts".to_owned(),
                codec::integer(i64::from(claimed.attempts)),
            ),
            (
                "nextAttemptAt".to_owned(),
                codec::timestamp(claimed.next_attempt_at),
            ),
        ]);
        let version = self.change_as_read(entry, fields).await?;
        Ok(version.map(|version| OutboxEntry { version, ..claimed }))
    }

    async fn settle(
        &self,
        claimed: &OutboxEntry,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let settled = outcome.settled(now);
        let mut fields = codec::Fields::from([
            ("status".to_owned(), codec::string(settled.status.as_str())),
            (
                "nextAttemptAt".to_owned(),
                codec::timestamp(settled.next_attempt_at),
            ),
        ]);
        if let Some(delivered_to) = settled.delivered_to {
            fields.insert("deliveredTo".to_owned(), codec::strings(delivered_to));
        }
        if let Some(error) = settled.last_error {
            fields.insert("lastError".to_owned(), codec::string(error));
        }
        if let Some(expires_at) = settled.expires_at {
            fields.insert("expiresAt".to_owned(), codec::timestamp(expires_at));
        }
        Ok(self.change_as_read(claimed, fields).await?.is_some())
    }

    async fn entries(
        &self,
        status: OutboxStatus,
        after: Option<&OutboxCursor>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut query = structured_query(
            &queries::OUTBOX_BY_STATUS,
            &[codec::string(status.as_str())],
        );
        query.limit = Some(i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX));
        // Firestore orders by the document's name last anyway (so the shape's index serves
        // this); named, it may take a cursor's value.
        query.order_by.push(Order {
            field: Some(FieldReference {
                field_path: "__name__".to_owned(),
            }),
            direction: OrderDirection::Ascending as i32,
        });
        query.start_at = after.map(|after| Cursor {
            values: vec![
                codec::timestamp(after.created_at),
                Value {
                    value_type: Some(ValueType::ReferenceValue(
                        self.document_name(OUTBOX_COLLECTION, &after.id),
                    )),
                },
            ],
            before: false,
        });
        self.run_query(query)
            .await?
            .iter()
            .map(|document| {
                codec::outbox_from(document).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn redeliver(
        &self,
        id: &str,
        act: &AdminAct,
        now: DateTime<Utc>,
    ) -> Result<Redelivery, StoreError> {
        let name = self.document_name(OUTBOX_COLLECTION, id);
        for _ in 0..REDELIVERY_ATTEMPTS {
            let read = self
                .batch_get(&[&name], MAX_RPC_TIMEOUT)
                .await
                .map_err(|status| read_failure(status).into_store_error())?;
            let Some(document) = read.get(&name) else {
                return Ok(Redelivery::NotFound);
            };
            let entry =
                codec::outbox_from(document).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if entry.status == OutboxStatus::Pending {
                return Ok(Redelivery::AlreadyPending(entry));
            }
            let queued = entry.redelivered(now);
            let fields = codec::Fields::from([
                ("status".to_owned(), codec::string(queued.status.as_str())),
                ("nextAttemptAt".to_owned(), codec::timestamp(now)),
                ("retrySince".to_owned(), codec::timestamp(now)),
            ]);
            let audit = entry.redelivery_audit(act, now);
            if let Some(version) = self
                .change_as_read_with(&entry, fields, &["expiresAt"], Some(&audit))
                .await?
            {
                return Ok(Redelivery::Queued(OutboxEntry { version, ..queued }));
            }
        }
        Err(StoreError::Unavailable(format!(
            "the event {id} kept changing while it was being queued again; nothing was changed"
        )))
    }
}
