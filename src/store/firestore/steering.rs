//! Limit overrides (`token_limit_overrides/{userId}`) and the audit trail
//! (`token_limit_audit/{id}`) on Firestore. A change and its audit entry are one commit,
//! conditioned on the override being as it was read.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use firestore::gcloud_sdk::google::firestore::v1::precondition::ConditionType;
use firestore::gcloud_sdk::google::firestore::v1::structured_query::{
    Direction as OrderDirection, FieldReference, Order, field_filter,
};
use firestore::gcloud_sdk::google::firestore::v1::{
    Cursor, Precondition, Value, Write, value::ValueType, write,
};

use super::FirestoreStore;
use super::client::{AttemptError, CommitFailure, MAX_RPC_TIMEOUT, commit_failure, read_failure};
use super::codec;
use super::mirror::Freshness;
use super::record::{conditional_update, unchanged_since_read};
use super::reports::{all_of, field_condition, structured_query};
use crate::store::queries::{self, AUDIT_COLLECTION, OVERRIDES_COLLECTION, QueryShape};
use crate::usage::{AuditEntry, AuditQuery, LimitOverride, OverrideChange, StoreError, UserId};

/// How often an idle mirror of the overrides makes sure it is current (one billed read each):
/// 900 reads an hour per instance.
pub(super) const OVERRIDES_REFRESH: Duration = Duration::from_secs(4);

/// How old the mirror's copy may be for a decision to use it: the longest an override set on
/// one instance takes to apply on another. Older (Firestore unreachable, the stream
/// reconnecting), the override is read from Firestore.
pub(super) const OVERRIDES_STALENESS: Duration = Duration::from_secs(5);

/// The fields an override document owns.
const OVERRIDE_FIELDS: &[&str] = &[
    "userId",
    "dailyLimit",
    "monthlyLimit",
    "enforcement",
    "expiresAt",
    "reason",
    "setBy",
    "setAt",
];

const AUDIT_FIELDS: &[&str] = &[
    "at",
    "actor",
    "action",
    "userId",
    "before",
    "after",
    "idempotencyKey",
    "reason",
];

/// Creates `entry` at `name`; never over another.
pub(super) fn audit_write(name: &str, entry: &AuditEntry) -> Write {
    conditional_update(
        name,
        codec::audit_fields(entry),
        AUDIT_FIELDS,
        ConditionType::Exists(false),
    )
}

impl FirestoreStore {
    /// From the mirror while it is current within [`OVERRIDES_STALENESS`], else from
    /// Firestore within `timeout`.
    pub(super) async fn read_override(
        &self,
        user_id: &UserId,
        timeout: Duration,
    ) -> Result<Option<LimitOverride>, AttemptError> {
        let document = match self.overrides.get(user_id.as_str(), OVERRIDES_STALENESS) {
            Freshness::Fresh(document) => document,
            Freshness::Stale => {
                let name = self.document_name(OVERRIDES_COLLECTION, user_id.as_str());
                self.get_within(name, timeout).await?
            }
        };
        document
            .map(|document| codec::override_from(&document))
            .transpose()
            .map_err(|error| AttemptError::Permanent(error.into()))
    }

    /// Reads the override, then commits the change and its audit entry on the condition that
    /// the override is still as read; another admin's change in between is read again.
    pub(super) async fn apply_override_change(
        &self,
        change: &OverrideChange,
    ) -> Result<Option<LimitOverride>, StoreError> {
        let attempt = || self.override_attempt(change);
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(10))
                    .with_max_times(5)
                    .with_jitter(),
            )
            .when(AttemptError::retryable)
            .await
            .map_err(AttemptError::into_store_error)
    }

    async fn override_attempt(
        &self,
        change: &OverrideChange,
    ) -> Result<Option<LimitOverride>, AttemptError> {
        let name = self.document_name(OVERRIDES_COLLECTION, change.user_id.as_str());
        let read = self
            .batch_get(&[&name], MAX_RPC_TIMEOUT)
            .await
            .map_err(read_failure)?;
        let stored = read.get(&name);
        let before = stored.map(codec::override_from).transpose()?;
        let condition = unchanged_since_read(stored);
        let change_write = match &change.to {
            Some(set) => conditional_update(
                &name,
                codec::override_fields(set),
                OVERRIDE_FIELDS,
                condition,
            ),
            None => Write {
                operation: Some(write::Operation::Delete(name.clone())),
                current_document: Some(Precondition {
                    condition_type: Some(condition),
                }),
                ..Default::default()
            },
        };
        let entry = change.audit(before.as_ref());
        let audit = audit_write(&self.document_name(AUDIT_COLLECTION, &entry.id), &entry);
        match self
            .commit(vec![change_write, audit], MAX_RPC_TIMEOUT)
            .await
        {
            Ok(_) => Ok(before),
            Err(status) => Err(match commit_failure(status) {
                CommitFailure::Refused(error) => error,
                CommitFailure::AnswerLost(status) => AttemptError::Ambiguous(format!(
                    "the change of {}'s override may or may not be applied: {}",
                    change.user_id,
                    status.message()
                )),
            }),
        }
    }

    pub(super) async fn read_overrides(
        &self,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<LimitOverride>, StoreError> {
        let mut query = structured_query(&queries::OVERRIDES_BY_USER, &[]);
        query.limit = Some(i32::try_from(limit.saturating_add(1)).unwrap_or(i32::MAX));
        query.start_at = after.map(|after| Cursor {
            values: vec![codec::string(after.as_str())],
            before: false,
        });
        let documents = self.run_query(query).await?;
        documents
            .iter()
            .map(|document| codec::override_from(document).map_err(StoreError::from))
            .collect()
    }

    pub(super) async fn read_audit(
        &self,
        query: &AuditQuery,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let (shape, equals): (&QueryShape, Vec<Value>) = match (&query.user_id, &query.actor) {
            (None, None) => (&queries::AUDIT_NEWEST, vec![]),
            (Some(user), None) => (&queries::AUDIT_BY_USER, vec![codec::string(user.as_str())]),
            (None, Some(actor)) => (
                &queries::AUDIT_BY_ACTOR,
                vec![codec::string(actor.as_str())],
            ),
            (Some(user), Some(actor)) => (
                &queries::AUDIT_BY_USER_AND_ACTOR,
                vec![codec::string(user.as_str()), codec::string(actor.as_str())],
            ),
        };
        let mut structured = structured_query(shape, &equals);
        if let Some(since) = query.since {
            let since = field_condition(
                "at",
                field_filter::Operator::GreaterThanOrEqual,
                codec::timestamp(since),
            );
            structured.r#where = all_of(structured.r#where.into_iter().chain([since]).collect());
        }
        structured.limit = Some(i32::try_from(query.limit.saturating_add(1)).unwrap_or(i32::MAX));
        // Entries of one millisecond follow their ids: ties are broken by name, newest first,
        // and a page resumes after the last entry's instant (its id says it) and name.
        structured.order_by.push(Order {
            field: Some(FieldReference {
                field_path: "__name__".to_owned(),
            }),
            direction: OrderDirection::Descending as i32,
        });
        if let Some(after) = &query.after {
            let at = AuditEntry::instant_of_id(after).ok_or_else(|| {
                StoreError::Internal(format!("{after:?} is not an audit entry's id"))
            })?;
            let name = self.document_name(AUDIT_COLLECTION, after);
            structured.start_at = Some(Cursor {
                values: vec![
                    codec::timestamp(at),
                    Value {
                        value_type: Some(ValueType::ReferenceValue(name)),
                    },
                ],
                before: false,
            });
        }
        let documents = self.run_query(structured).await?;
        documents
            .iter()
            .map(|document| codec::audit_from(document).map_err(StoreError::from))
            .collect()
    }
}
