//! The maintenance port on the embedded store. A row's version is its content: a write
//! conditioned on it checks, inside the same `BEGIN IMMEDIATE` transaction, that the row still
//! holds exactly what was read.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    STORED_DAY_COLUMNS, SqliteStore, WRITE_DAY, WRITE_MONTH, month_from_row, steering,
    stored_day_from_row, write_day, write_month,
};
use crate::lifecycle::{
    Applied, Change, Collection, Condition, Document, DocumentStore, DocumentWrite, MonthSnapshot,
    Scan, ScanCursor, Stored, StoredEntry, Version, strict_user_type,
};
use crate::usage::{AuditEntry, MonthlyUsage, StoreError, UserId, month_dates};

fn table(collection: Collection) -> &'static str {
    collection.name()
}

/// The columns a scan selects: the decoder's own, then the id.
fn columns(collection: Collection) -> String {
    match collection {
        Collection::Daily => format!("{STORED_DAY_COLUMNS}, id"),
        Collection::History => "*".to_owned(),
    }
}

/// Every column of the row, spelled out: equal versions mean equal rows.
fn version_of(row: &Row<'_>) -> rusqlite::Result<Version> {
    let values = (0..row.as_ref().column_count())
        .map(|index| row.get::<_, Value>(index))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Version(format!("{values:?}")))
}

fn stored_from(collection: Collection, row: &Row<'_>) -> rusqlite::Result<Stored> {
    let id: String = row.get("id")?;
    let date = match collection {
        Collection::Daily => row
            .get::<_, Value>("date")
            .ok()
            .and_then(|value| match value {
                Value::Text(text) => Some(text),
                _ => None,
            }),
        Collection::History => None,
    };
    let decoded = match collection {
        Collection::Daily => stored_day_from_row(row).map(Document::Day),
        Collection::History => month_from_row(row).map(Document::Month),
    };
    let content = decoded.map_err(|e| e.to_string()).and_then(|document| {
        let raw_type: String = row.get("user_type").map_err(|e| e.to_string())?;
        strict_user_type(&raw_type).map(|_| document)
    });
    Ok(Stored {
        collection,
        version: version_of(row)?,
        cursor: ScanCursor {
            id: id.clone(),
            date,
        },
        id,
        content,
    })
}

fn read_stored(
    connection: &Connection,
    collection: Collection,
    id: &str,
) -> rusqlite::Result<Option<Stored>> {
    connection
        .prepare_cached(&format!(
            "SELECT {} FROM {} WHERE id = ?1",
            columns(collection),
            table(collection)
        ))?
        .query_row([id], |row| stored_from(collection, row))
        .optional()
}

fn scan(
    connection: &Connection,
    scan: &Scan,
    after: Option<&ScanCursor>,
    limit: u32,
) -> rusqlite::Result<Vec<Stored>> {
    let after_id = after.map(|cursor| cursor.id.as_str());
    match scan {
        Scan::Collection { collection, user } => {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {} FROM {} WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR id > ?2)
                 ORDER BY id LIMIT ?3",
                columns(*collection),
                table(*collection)
            ))?;
            let rows = statement.query_map(
                params![user.as_ref().map(UserId::as_str), after_id, limit],
                |row| stored_from(*collection, row),
            )?;
            rows.collect()
        }
        Scan::Month { year, month } => {
            let mut statement = connection.prepare_cached(
                "SELECT * FROM token_usage_history
                 WHERE year = ?1 AND month = ?2 AND (?3 IS NULL OR id > ?3) ORDER BY id LIMIT ?4",
            )?;
            let rows = statement.query_map(params![year, month, after_id, limit], |row| {
                stored_from(Collection::History, row)
            })?;
            rows.collect()
        }
        Scan::DaysBefore(date) => {
            let after_date = after.and_then(|cursor| cursor.date.as_deref());
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {STORED_DAY_COLUMNS}, id FROM daily_token_usage
                 WHERE date < ?1 AND (?2 IS NULL OR (date, id) > (?2, ?3))
                 ORDER BY date, id LIMIT ?4"
            ))?;
            let rows = statement.query_map(params![date, after_date, after_id, limit], |row| {
                stored_from(Collection::Daily, row)
            })?;
            rows.collect()
        }
    }
}

fn month_with_days(
    connection: &mut Connection,
    user_id: &UserId,
    year: i32,
    month: u32,
) -> rusqlite::Result<MonthSnapshot> {
    let transaction = connection.transaction()?;
    let (first, last) = month_dates(year, month)
        .ok_or_else(|| rusqlite::Error::InvalidParameterName(format!("{year}-{month}")))?;
    let month_id = MonthlyUsage::document_id(user_id, year, month);
    let month = read_stored(&transaction, Collection::History, &month_id)?;
    let days = {
        let mut statement = transaction.prepare_cached(&format!(
            "SELECT {STORED_DAY_COLUMNS}, id FROM daily_token_usage
             WHERE user_id = ?1 AND date BETWEEN ?2 AND ?3 ORDER BY date"
        ))?;
        let rows = statement.query_map(params![user_id.as_str(), first, last], |row| {
            stored_from(Collection::Daily, row)
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    transaction.finish()?;
    Ok(MonthSnapshot { month, days })
}

fn apply(
    connection: &mut Connection,
    writes: &[DocumentWrite],
    audit: &AuditEntry,
) -> rusqlite::Result<Applied> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for write in writes {
        let current = read_stored(&transaction, write.collection, &write.id)?;
        let holds = match (&write.condition, &current) {
            (Condition::Missing, None) => true,
            (Condition::Unchanged(version), Some(stored)) => &stored.version == version,
            _ => false,
        };
        if !holds {
            // Dropping the transaction rolls back whatever this batch wrote so far.
            return Ok(Applied::Nothing);
        }
        match &write.change {
            Change::Put(Document::Day(day)) => write_day(
                &mut *transaction.prepare_cached(WRITE_DAY)?,
                &write.id,
                &day.usage,
                Some(&day.reservations),
                Some(&day.notified),
            )?,
            Change::Put(Document::Month(month)) => write_month(
                &mut *transaction.prepare_cached(WRITE_MONTH)?,
                &write.id,
                month,
            )?,
            Change::Delete => {
                transaction
                    .prepare_cached(&format!(
                        "DELETE FROM {} WHERE id = ?1",
                        table(write.collection)
                    ))?
                    .execute([&write.id])?;
            }
        }
    }
    steering::write_audit(
        &mut *transaction.prepare_cached(steering::WRITE_AUDIT)?,
        audit,
    )?;
    transaction.commit()?;
    Ok(Applied::All)
}

#[async_trait]
impl DocumentStore for SqliteStore {
    async fn scan(
        &self,
        scan_of: &Scan,
        after: Option<&ScanCursor>,
        limit: u32,
    ) -> Result<Vec<Stored>, StoreError> {
        let (scan_of, after) = (scan_of.clone(), after.cloned());
        self.with_connection(move |connection| scan(connection, &scan_of, after.as_ref(), limit))
            .await
    }

    async fn get(&self, collection: Collection, ids: &[String]) -> Result<Vec<Stored>, StoreError> {
        let ids = ids.to_vec();
        self.with_connection(move |connection| {
            let transaction = connection.transaction()?;
            let mut found = Vec::new();
            for id in &ids {
                found.extend(read_stored(&transaction, collection, id)?);
            }
            transaction.finish()?;
            Ok(found)
        })
        .await
    }

    async fn month_with_days(
        &self,
        user_id: &UserId,
        year: i32,
        month: u32,
    ) -> Result<MonthSnapshot, StoreError> {
        let user_id = user_id.clone();
        self.with_connection(move |connection| month_with_days(connection, &user_id, year, month))
            .await
    }

    async fn apply(
        &self,
        writes: Vec<DocumentWrite>,
        audit: &AuditEntry,
    ) -> Result<Applied, StoreError> {
        let audit = audit.clone();
        self.with_connection(move |connection| apply(connection, &writes, &audit))
            .await
    }

    async fn outbox_entries(
        &self,
        user: Option<&UserId>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let (user, after) = (user.cloned(), after.map(str::to_owned));
        self.with_connection(move |connection| {
            super::outbox::entries_by_id(connection, user.as_ref(), after.as_deref(), limit)
        })
        .await
    }

    async fn delete_expired_keys(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Option<u64>, StoreError> {
        self.with_connection(move |connection| {
            let keys = connection
                .prepare_cached(
                    "DELETE FROM idempotency_keys WHERE rowid IN
                     (SELECT rowid FROM idempotency_keys WHERE expires_at < ?1 LIMIT ?2)",
                )?
                .execute(params![now, limit])?;
            let events = connection
                .prepare_cached(
                    "DELETE FROM notification_outbox WHERE rowid IN
                     (SELECT rowid FROM notification_outbox WHERE expires_at < ?1 LIMIT ?2)",
                )?
                .execute(params![now, limit])?;
            Ok(Some((keys + events) as u64))
        })
        .await
    }
}
