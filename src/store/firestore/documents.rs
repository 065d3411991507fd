//! The maintenance port on Firestore: scans ordered by document name (or by `date`, for the
//! days past retention) resumed from the last document's values, consistent reads at one read
//! time, and commits whose every write carries an `updateTime` or `exists: false` precondition.

use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, NaiveDate, Utc};
use firestore::gcloud_sdk::google::firestore::v1::precondition::ConditionType;
use firestore::gcloud_sdk::google::firestore::v1::structured_query::{
    Direction as OrderDirection, FieldReference, Filter, Order, field_filter,
};
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use firestore::gcloud_sdk::google::firestore::v1::{
    Cursor, Document as FirestoreDocument, DocumentMask, Precondition, StructuredQuery, Value,
    Write, write,
};
use firestore::gcloud_sdk::prost_types::Timestamp;
use firestore::gcloud_sdk::tonic::Code;

use super::client::{AttemptError, MAX_RPC_TIMEOUT, Snapshot, read_failure};
use super::reports::{all_of, field_condition, structured_query};
use super::{FirestoreStore, codec, steering};
use crate::lifecycle::{
    Applied, Change, Collection, Condition, Document, DocumentStore, DocumentWrite, MonthSnapshot,
    Scan, ScanCursor, Stored, StoredEntry, Version, strict_user_type,
};
use crate::store::queries::{self, AUDIT_COLLECTION, OUTBOX_COLLECTION, QueryShape};
use crate::usage::{AuditEntry, MonthlyUsage, StoreError, UserId, month_dates};

/// Reads are retried a few times: a long scan should not fail on one dropped call.
fn read_retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(5)
}

fn version_of(update_time: Option<Timestamp>) -> Version {
    Version(
        update_time
            .map(|at| format!("{}.{:09}", at.seconds, at.nanos))
            .unwrap_or_default(),
    )
}

fn update_time_of(version: &Version) -> Option<Timestamp> {
    let (seconds, nanos) = version.0.split_once('.')?;
    Some(Timestamp {
        seconds: seconds.parse().ok()?,
        nanos: nanos.parse().ok()?,
    })
}

fn stored_from(collection: Collection, document: &FirestoreDocument) -> Stored {
    let id = document
        .name
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let date = match document
        .fields
        .get("date")
        .and_then(|v| v.value_type.as_ref())
    {
        Some(ValueType::StringValue(date)) => Some(date.clone()),
        _ => None,
    };
    let decoded = match collection {
        Collection::Daily => codec::stored_day_from(document).map(Document::Day),
        Collection::History => codec::month_from(document).map(Document::Month),
    };
    let content = decoded.map_err(|e| e.to_string()).and_then(|decoded| {
        match document
            .fields
            .get("userType")
            .and_then(|v| v.value_type.as_ref())
        {
            Some(ValueType::StringValue(raw)) => strict_user_type(raw).map(|_| decoded),
            _ => Err("field userType is not a string".to_owned()),
        }
    });
    Stored {
        collection,
        version: version_of(document.update_time),
        cursor: ScanCursor {
            id: id.clone(),
            date,
        },
        id,
        content,
    }
}

/// The query's equality filters and `more`, all required.
fn and(query: &mut StructuredQuery, more: Vec<Filter>) {
    let mut filters: Vec<Filter> = query.r#where.take().into_iter().collect();
    filters.extend(more);
    query.r#where = all_of(filters);
}

fn by_name() -> Order {
    Order {
        field: Some(FieldReference {
            field_path: "__name__".to_owned(),
        }),
        direction: OrderDirection::Ascending as i32,
    }
}

fn date_value(date: NaiveDate) -> Value {
    codec::string(&date.format("%Y-%m-%d").to_string())
}

impl FirestoreStore {
    /// A query, retried while Firestore is unavailable.
    async fn query_retrying(
        &self,
        query: StructuredQuery,
    ) -> Result<Vec<FirestoreDocument>, StoreError> {
        (|| self.run_query(query.clone()))
            .retry(read_retries())
            .sleep(tokio::time::sleep)
            .when(|error| matches!(error, StoreError::Unavailable(_)))
            .await
    }

    /// A query in a new read-only snapshot, retried while Firestore is unavailable; returns
    /// the transaction that holds the snapshot.
    async fn query_in_new_snapshot(
        &self,
        query: StructuredQuery,
    ) -> Result<(Vec<FirestoreDocument>, Vec<u8>), StoreError> {
        (|| self.run_query_in(query.clone(), Snapshot::Begin))
            .retry(read_retries())
            .sleep(tokio::time::sleep)
            .when(|error| matches!(error, StoreError::Unavailable(_)))
            .await
    }

    /// The named documents that exist, in the read-only `transaction`'s snapshot when given,
    /// retried while Firestore is unavailable.
    async fn read_all(
        &self,
        names: &[String],
        transaction: Option<&[u8]>,
    ) -> Result<Vec<FirestoreDocument>, StoreError> {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let found = (|| async {
            self.batch_get_in(&names, MAX_RPC_TIMEOUT, transaction)
                .await
                .map_err(read_failure)
        })
        .retry(read_retries())
        .sleep(tokio::time::sleep)
        .when(AttemptError::retryable)
        .await
        .map_err(AttemptError::into_store_error)?;
        Ok(found.into_values().collect())
    }

    /// The query a scan runs, and the collection it reads. Every scan's order ends with the
    /// document name, so that a page resumes just after the previous page's last document.
    fn scan_query(&self, scan: &Scan, after: Option<&ScanCursor>) -> (Collection, StructuredQuery) {
        let (collection, mut query) = match scan {
            Scan::Collection { collection, user } => {
                let shape: &QueryShape = match collection {
                    Collection::Daily => &queries::USER_DAYS_BY_NAME,
                    Collection::History => &queries::USER_MONTHS_BY_NAME,
                };
                let equals: Vec<Value> = user.iter().map(|u| codec::string(u.as_str())).collect();
                (*collection, structured_query(shape, &equals))
            }
            Scan::Month { year, month } => {
                let equals = [
                    codec::integer(i64::from(*year)),
                    codec::integer(i64::from(*month)),
                ];
                let query = structured_query(&queries::MONTH_BY_NAME, &equals);
                (Collection::History, query)
            }
            Scan::DaysBefore(date) => {
                let mut query = structured_query(&queries::DAYS_BEFORE, &[]);
                let before =
                    field_condition("date", field_filter::Operator::LessThan, date_value(*date));
                and(&mut query, vec![before]);
                (Collection::Daily, query)
            }
        };
        query.order_by.push(by_name());
        query.start_at = after.map(|cursor| {
            // Ordered by date first, a page resumes after the last document's date too.
            let date = matches!(scan, Scan::DaysBefore(_))
                .then(|| codec::string(cursor.date.as_deref().unwrap_or_default()));
            let name = reference(self.document_name(collection.name(), &cursor.id));
            Cursor {
                values: date.into_iter().chain([name]).collect(),
                before: false,
            }
        });
        (collection, query)
    }

    fn lifecycle_write(&self, write: &DocumentWrite) -> Result<Write, StoreError> {
        let name = self.document_name(write.collection.name(), &write.id);
        let current_document = Some(precondition(&name, &write.condition)?);
        Ok(match &write.change {
            Change::Delete => Write {
                operation: Some(write::Operation::Delete(name)),
                current_document,
                ..Default::default()
            },
            Change::Put(document) => {
                let (fields, owned) = match document {
                    Document::Day(day) => (
                        codec::stored_day_fields(&day.usage, &day.reservations),
                        codec::stored_day_mask(),
                    ),
                    Document::Month(month) => {
                        (codec::month_fields(month), codec::MONTH_FIELDS.to_vec())
                    }
                };
                Write {
                    operation: Some(write::Operation::Update(FirestoreDocument {
                        name,
                        fields,
                        ..Default::default()
                    })),
                    update_mask: Some(DocumentMask {
                        field_paths: owned.iter().map(|field| field.to_string()).collect(),
                    }),
                    current_document,
                    ..Default::default()
                }
            }
        })
    }
}

/// What a maintenance write requires of its document: to be missing, or to be exactly the
/// version that was read. A version without an update time cannot be required exactly, and a
/// looser condition (that the document merely exists) could overwrite another writer's change:
/// such a write is refused.
fn precondition(name: &str, condition: &Condition) -> Result<Precondition, StoreError> {
    let condition = match condition {
        Condition::Missing => ConditionType::Exists(false),
        Condition::Unchanged(version) => update_time_of(version)
            .map(ConditionType::UpdateTime)
            .ok_or_else(|| {
                StoreError::Internal(format!(
                    "{name} was read without an update time: no write can be conditioned on it"
                ))
            })?,
    };
    Ok(Precondition {
        condition_type: Some(condition),
    })
}

fn reference(name: String) -> Value {
    Value {
        value_type: Some(ValueType::ReferenceValue(name)),
    }
}

#[async_trait]
impl DocumentStore for FirestoreStore {
    async fn outbox_entries(
        &self,
        user: Option<&UserId>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let equals: Vec<Value> = user.iter().map(|u| codec::string(u.as_str())).collect();
        let mut query = structured_query(&queries::OUTBOX_BY_NAME, &equals);
        query.order_by.push(by_name());
        query.start_at = after.map(|id| Cursor {
            values: vec![reference(self.document_name(OUTBOX_COLLECTION, id))],
            before: false,
        });
        query.limit = Some(i32::try_from(limit).unwrap_or(i32::MAX));
        let documents = self.query_retrying(query).await?;
        Ok(documents
            .iter()
            .map(|document| StoredEntry {
                id: codec::document_id(document),
                entry: codec::outbox_from(document).map_err(|error| error.to_string()),
            })
            .collect())
    }

    async fn scan(
        &self,
        scan: &Scan,
        after: Option<&ScanCursor>,
        limit: u32,
    ) -> Result<Vec<Stored>, StoreError> {
        let (collection, mut query) = self.scan_query(scan, after);
        query.limit = Some(i32::try_from(limit).unwrap_or(i32::MAX));
        let documents = self.query_retrying(query).await?;
        Ok(documents
            .iter()
            .map(|document| stored_from(collection, document))
            .collect())
    }

    async fn get(&self, collection: Collection, ids: &[String]) -> Result<Vec<Stored>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = ids
            .iter()
            .map(|id| self.document_name(collection.name(), id))
            .collect();
        let found = self.read_all(&names, None).await?;
        Ok(found
            .iter()
            .map(|document| stored_from(collection, document))
            .collect())
    }

    /// The days are found by a query, then read again together with the month, both in one
    /// read-only transaction, which sees one snapshot: a `BatchGetDocuments` alone may read
    /// its documents at different times (the emulator does), and a month read after a day it
    /// no longer agrees with would pass a write conditioned on the month's version.
    async fn month_with_days(
        &self,
        user_id: &UserId,
        year: i32,
        month: u32,
    ) -> Result<MonthSnapshot, StoreError> {
        let (first, last) = month_dates(year, month)
            .ok_or_else(|| StoreError::Internal(format!("{year}-{month} is no month")))?;
        let mut query = structured_query(
            &queries::USER_DAYS_OF_MONTH,
            &[codec::string(user_id.as_str())],
        );
        and(
            &mut query,
            vec![
                field_condition(
                    "date",
                    field_filter::Operator::GreaterThanOrEqual,
                    date_value(first),
                ),
                field_condition(
                    "date",
                    field_filter::Operator::LessThanOrEqual,
                    date_value(last),
                ),
            ],
        );
        let (listed, transaction) = self.query_in_new_snapshot(query).await?;
        let month_id = MonthlyUsage::document_id(user_id, year, month);
        let month_name = self.document_name(Collection::History.name(), &month_id);
        let names: Vec<String> = std::iter::once(month_name.clone())
            .chain(listed.into_iter().map(|document| document.name))
            .collect();
        let mut found = self.read_all(&names, Some(&transaction)).await?;
        found.sort_by(|a, b| a.name.cmp(&b.name));
        let (months, days): (Vec<_>, Vec<_>) = found
            .iter()
            .partition(|document| document.name == month_name);
        Ok(MonthSnapshot {
            month: months
                .first()
                .map(|document| stored_from(Collection::History, document)),
            days: days
                .iter()
                .map(|document| stored_from(Collection::Daily, document))
                .collect(),
        })
    }

    async fn apply(
        &self,
        writes: Vec<DocumentWrite>,
        audit: &AuditEntry,
    ) -> Result<Applied, StoreError> {
        let mut writes = writes
            .iter()
            .map(|write| self.lifecycle_write(write))
            .collect::<Result<Vec<_>, _>>()?;
        let audit_name = self.document_name(AUDIT_COLLECTION, &audit.id);
        writes.push(steering::audit_write(&audit_name, audit));
        match self.commit(writes, MAX_RPC_TIMEOUT).await {
            Ok(_) => Ok(Applied::All),
            Err(status)
                if matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::AlreadyExists | Code::NotFound | Code::Aborted
                ) =>
            {
                Ok(Applied::Nothing)
            }
            Err(status) => Err(read_failure(status).into_store_error()),
        }
    }

    /// A TTL policy on `expiresAt` deletes them (see the deploy guide).
    async fn delete_expired_keys(
        &self,
        _now: DateTime<Utc>,
        _limit: u32,
    ) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_on_a_version_without_an_update_time_is_refused() {
        let name = "projects/p/databases/(default)/documents/daily_token_usage/a_2024-01-15";
        let unknown = Condition::Unchanged(version_of(None));
        let error = precondition(name, &unknown).unwrap_err();
        assert!(error.to_string().contains(name), "{error}");

        let at = Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        };
        let read = Condition::Unchanged(version_of(Some(at)));
        assert_eq!(
            precondition(name, &read).unwrap().condition_type,
            Some(ConditionType::UpdateTime(at))
        );
        assert_eq!(
            precondition(name, &Condition::Missing)
                .unwrap()
                .condition_type,
            Some(ConditionType::Exists(false))
        );
    }
}
