//! The outbox port on SQLite: an entry's version is its attempts and next attempt, and every
//! change names them, so that a change another connection made first leaves it alone.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::steering::{WRITE_AUDIT, write_audit};
use super::time::SqlTime;
use super::{SqliteStore, json_or_default, to_json, user_id_from};
use crate::lifecycle::StoredEntry;
use crate::usage::{
    AdminAct, DeliveryOutcome, Outbox, OutboxCursor, OutboxEntry, OutboxStatus, Pending,
    Redelivery, StoreError, UserId,
};

const ENTRY_COLUMNS: &str = "id, event_type, user_id, payload, status, attempts, created_at,
    next_attempt_at, delivered_to, last_error, retry_since";

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let status: String = row.get(4)?;
    let attempts: u32 = row.get(5)?;
    let next_attempt_at = row.get::<_, SqlTime>(7)?.0;
    Ok(OutboxEntry {
        id: row.get(0)?,
        event_type: row.get(1)?,
        user_id: user_id_from(row, 2)?,
        payload: row.get(3)?,
        status: OutboxStatus::parse(&status).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("{status:?} is no outbox status").into(),
            )
        })?,
        attempts,
        created_at: row.get::<_, SqlTime>(6)?.0,
        next_attempt_at,
        delivered_to: json_or_default(row, 8)?,
        last_error: row.get(9)?,
        retry_since: row.get::<_, SqlTime>(10)?.0,
        version: version(attempts, next_attempt_at),
    })
}

fn version(attempts: u32, next_attempt_at: DateTime<Utc>) -> String {
    format!("{attempts}@{}", next_attempt_at.timestamp_millis())
}

/// Changes the entry as it was read, if it still is; whether it did.
fn change_as_read(
    connection: &Connection,
    entry: &OutboxEntry,
    assignments: &str,
    values: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<bool> {
    let sql = format!(
        "UPDATE notification_outbox SET {assignments}
         WHERE id = ?1 AND status = 'pending' AND attempts = ?2 AND next_attempt_at = ?3"
    );
    let next_attempt_at = SqlTime(entry.next_attempt_at);
    let mut bound: Vec<&dyn rusqlite::ToSql> = vec![&entry.id, &entry.attempts, &next_attempt_at];
    bound.extend_from_slice(values);
    Ok(connection.execute(&sql, bound.as_slice())? == 1)
}

/// Up to `limit` entries after the id `after` (of `user`, when named), by id, each decoded or
/// why not: `verify` reports an entry that does not decode, and goes on.
pub(super) fn entries_by_id(
    connection: &Connection,
    user: Option<&UserId>,
    after: Option<&str>,
    limit: u32,
) -> rusqlite::Result<Vec<StoredEntry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM notification_outbox
         WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR id > ?2)
         ORDER BY id LIMIT ?3"
    );
    let mut statement = connection.prepare_cached(&sql)?;
    statement
        .query_map(params![user.map(UserId::as_str), after, limit], |row| {
            Ok(StoredEntry {
                id: row.get(0)?,
                entry: entry_from_row(row).map_err(|error| error.to_string()),
            })
        })?
        .collect()
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn pending(&self) -> Result<Pending, StoreError> {
        self.with_connection(|connection| {
            connection.query_row(
                "SELECT COUNT(*), MIN(created_at) FROM notification_outbox
                 WHERE status = 'pending'",
                [],
                |row| {
                    Ok(Pending {
                        count: u64::try_from(row.get::<_, i64>(0)?).unwrap_or_default(),
                        oldest: row.get::<_, Option<SqlTime>>(1)?.map(|at| at.0),
                    })
                },
            )
        })
        .await
    }

    async fn due(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with_connection(move |connection| {
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM notification_outbox
                 WHERE status = 'pending' AND next_attempt_at <= ?1
                 ORDER BY next_attempt_at LIMIT ?2"
            );
            let mut statement = connection.prepare_cached(&sql)?;
            statement
                .query_map(params![SqlTime(now), limit], entry_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
    }

    async fn claim(
        &self,
        entry: &OutboxEntry,
        until: DateTime<Utc>,
    ) -> Result<Option<OutboxEntry>, StoreError> {
        let (entry, claimed) = (entry.clone(), entry.claimed(until));
        self.with_connection(move |connection| {
            let taken = change_as_read(
                connection,
                &entry,
                "attempts = ?4, next_attempt_at = ?5",
                &[&claimed.attempts, &SqlTime(claimed.next_attempt_at)],
            )?;
            Ok(taken.then(|| OutboxEntry {
                version: version(claimed.attempts, claimed.next_attempt_at),
                ..claimed
            }))
        })
        .await
    }

    async fn settle(
        &self,
        claimed: &OutboxEntry,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let (claimed, outcome) = (claimed.clone(), outcome.clone());
        self.with_connection(move |connection| {
            let settled = outcome.settled(now);
            let delivered_to = settled.delivered_to.map(to_json).transpose()?;
            change_as_read(
                connection,
                &claimed,
                "status = ?4, next_attempt_at = ?5,
                 delivered_to = coalesce(?6, delivered_to), last_error = coalesce(?7, last_error),
                 expires_at = ?8",
                &[
                    &settled.status.as_str(),
                    &SqlTime(settled.next_attempt_at),
                    &delivered_to,
                    &settled.last_error,
                    &settled.expires_at.map(SqlTime),
                ],
            )
        })
        .await
    }

    async fn entries(
        &self,
        status: OutboxStatus,
        after: Option<&OutboxCursor>,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let after = after.cloned();
        self.with_connection(move |connection| {
            let sql = format!(
                "SELECT {ENTRY_COLUMNS} FROM notification_outbox
                 WHERE status = ?1 AND (?2 IS NULL OR (created_at, id) > (?2, ?3))
                 ORDER BY created_at, id LIMIT ?4"
            );
            let mut statement = connection.prepare_cached(&sql)?;
            statement
                .query_map(
                    params![
                        status.as_str(),
                        after.as_ref().map(|after| SqlTime(after.created_at)),
                        after.as_ref().map(|after| after.id.as_str()),
                        limit.saturating_add(1),
                    ],
                    entry_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await
    }

    async fn redeliver(
        &self,
        id: &str,
        act: &AdminAct,
        now: DateTime<Utc>,
    ) -> Result<Redelivery, StoreError> {
        let (id, act) = (id.to_owned(), act.clone());
        self.with_connection(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let sql = format!("SELECT {ENTRY_COLUMNS} FROM notification_outbox WHERE id = ?1");
            let Some(entry) = transaction
                .query_row(&sql, [&id], entry_from_row)
                .optional()?
            else {
                return Ok(Redelivery::NotFound);
            };
            if entry.status == OutboxStatus::Pending {
                return Ok(Redelivery::AlreadyPending(entry));
            }
            let queued = entry.redelivered(now);
            transaction.execute(
                "UPDATE notification_outbox SET status = 'pending', next_attempt_at = ?2,
                     retry_since = ?2, expires_at = NULL
                 WHERE id = ?1",
                params![id, SqlTime(now)],
            )?;
            write_audit(
                &mut *transaction.prepare_cached(WRITE_AUDIT)?,
                &entry.redelivery_audit(&act, now),
            )?;
            transaction.commit()?;
            Ok(Redelivery::Queued(OutboxEntry {
                version: version(queued.attempts, queued.next_attempt_at),
                ..queued
            }))
        })
        .await
    }
}
