//! Limit overrides and the audit trail on SQLite: the `limit_overrides` and `audit_log`
//! tables. A change and its audit entry are one `BEGIN IMMEDIATE` transaction.

use rusqlite::{Connection, OptionalExtension, Row, Statement, TransactionBehavior, params};

use super::time::SqlTime;
use crate::usage::{AuditAction, AuditEntry, AuditQuery, LimitOverride, OverrideChange, UserId};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS limit_overrides (
    user_id       TEXT PRIMARY KEY,
    daily_limit   INTEGER NOT NULL,
    monthly_limit INTEGER,
    enforcement   TEXT,
    expires_at    TEXT NOT NULL,
    reason        TEXT NOT NULL,
    set_by        TEXT NOT NULL,
    set_at        TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS audit_log (
    id              TEXT PRIMARY KEY,
    at              TEXT NOT NULL,
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    user_id         TEXT,
    before          TEXT,
    after           TEXT,
    idempotency_key TEXT,
    reason          TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS audit_by_user ON audit_log (user_id, id DESC);
CREATE INDEX IF NOT EXISTS audit_by_actor ON audit_log (actor, id DESC);
";

pub(super) const READ_OVERRIDE: &str = "SELECT * FROM limit_overrides WHERE user_id = ?1";

pub(super) fn read_override(
    connection: &Connection,
    user_id: &UserId,
) -> rusqlite::Result<Option<LimitOverride>> {
    override_of(&mut *connection.prepare_cached(READ_OVERRIDE)?, user_id)
}

/// The user's override with [`READ_OVERRIDE`], inside the caller's transaction.
pub(super) fn override_of(
    statement: &mut Statement<'_>,
    user_id: &UserId,
) -> rusqlite::Result<Option<LimitOverride>> {
    statement
        .query_row([user_id.as_str()], override_from_row)
        .optional()
}

/// Applies the change and appends its audit entry, in one transaction; returns what it
/// replaced.
pub(super) fn change_override(
    connection: &mut Connection,
    change: &OverrideChange,
) -> rusqlite::Result<Option<LimitOverride>> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let before = read_override(&transaction, &change.user_id)?;
    match &change.to {
        Some(set) => {
            transaction.execute(
                "INSERT OR REPLACE INTO limit_overrides VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    set.user_id.as_str(),
                    set.daily_limit,
                    set.monthly_limit,
                    set.enforcement.map(|mode| mode.as_str()),
                    SqlTime(set.expires_at),
                    set.reason,
                    set.set_by.as_str(),
                    SqlTime(set.set_at),
                ],
            )?;
        }
        None => {
            transaction.execute(
                "DELETE FROM limit_overrides WHERE user_id = ?1",
                [change.user_id.as_str()],
            )?;
        }
    }
    write_audit(
        &mut *transaction.prepare_cached(WRITE_AUDIT)?,
        &change.audit(before.as_ref()),
    )?;
    transaction.commit()?;
    Ok(before)
}

pub(super) const WRITE_AUDIT: &str =
    "INSERT INTO audit_log VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Appends `entry` with [`WRITE_AUDIT`], inside the caller's transaction.
pub(super) fn write_audit(
    statement: &mut Statement<'_>,
    entry: &AuditEntry,
) -> rusqlite::Result<()> {
    let json = |value: &Option<serde_json::Value>| value.as_ref().map(ToString::to_string);
    statement.execute(params![
        entry.id,
        SqlTime(entry.at),
        entry.actor.as_str(),
        entry.action.as_str(),
        entry.user_id.as_ref().map(UserId::as_str),
        json(&entry.before),
        json(&entry.after),
        entry.idempotency_key,
        entry.reason,
    ])?;
    Ok(())
}

/// Up to `limit + 1` overrides by user id after `after`, expired or not: the caller keeps the
/// active ones, and the extra one only says that more follow.
pub(super) fn read_overrides(
    connection: &Connection,
    after: Option<&UserId>,
    limit: u32,
) -> rusqlite::Result<Vec<LimitOverride>> {
    let mut statement = connection.prepare_cached(
        "SELECT * FROM limit_overrides WHERE user_id > ?1 ORDER BY user_id LIMIT ?2",
    )?;
    let after = after.map_or("", UserId::as_str);
    statement
        .query_map(params![after, i64::from(limit) + 1], override_from_row)?
        .collect()
}

/// Up to `query.limit + 1` entries, newest first.
pub(super) fn read_audit(
    connection: &Connection,
    query: &AuditQuery,
) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut statement = connection.prepare_cached(
        "SELECT * FROM audit_log
         WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR actor = ?2)
           AND (?3 IS NULL OR id >= ?3) AND (?4 IS NULL OR id < ?4)
         ORDER BY id DESC LIMIT ?5",
    )?;
    statement
        .query_map(
            params![
                query.user_id.as_ref().map(UserId::as_str),
                query.actor.as_ref().map(UserId::as_str),
                query.since.map(AuditEntry::first_id_at),
                query.after,
                i64::from(query.limit) + 1,
            ],
            audit_from_row,
        )?
        .collect()
}

fn conversion(column: usize, problem: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        problem.to_string().into(),
    )
}

fn user_id(row: &Row<'_>, column: &str) -> rusqlite::Result<UserId> {
    let raw: String = row.get(column)?;
    let index = row.as_ref().column_index(column)?;
    UserId::parse(&raw).map_err(|e| conversion(index, e))
}

fn override_from_row(row: &Row<'_>) -> rusqlite::Result<LimitOverride> {
    let enforcement: Option<String> = row.get("enforcement")?;
    let index = row.as_ref().column_index("enforcement")?;
    Ok(LimitOverride {
        user_id: user_id(row, "user_id")?,
        daily_limit: row.get("daily_limit")?,
        monthly_limit: row.get("monthly_limit")?,
        enforcement: enforcement
            .map(|mode| mode.parse().map_err(|e| conversion(index, e)))
            .transpose()?,
        expires_at: row.get::<_, SqlTime>("expires_at")?.0,
        reason: row.get("reason")?,
        set_by: user_id(row, "set_by")?,
        set_at: row.get::<_, SqlTime>("set_at")?.0,
    })
}

fn audit_from_row(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    let json = |column: &str| -> rusqlite::Result<Option<serde_json::Value>> {
        let text: Option<String> = row.get(column)?;
        let index = row.as_ref().column_index(column)?;
        text.map(|text| serde_json::from_str(&text).map_err(|e| conversion(index, e)))
            .transpose()
    };
    let action: String = row.get("action")?;
    let index = row.as_ref().column_index("action")?;
    Ok(AuditEntry {
        id: row.get("id")?,
        at: row.get::<_, SqlTime>("at")?.0,
        actor: user_id(row, "actor")?,
        action: AuditAction::parse(&action)
            .ok_or_else(|| conversion(index, format!("{action:?} is not an audit action")))?,
        user_id: match row.get_ref("user_id")? {
            rusqlite::types::ValueRef::Null => None,
            _ => Some(user_id(row, "user_id")?),
        },
        before: json("before")?,
        after: json("after")?,
        idempotency_key: row.get("idempotency_key")?,
        reason: row.get("reason")?,
    })
}
