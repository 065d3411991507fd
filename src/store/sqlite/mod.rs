//! The embedded store: one SQLite file (WAL), tables mirroring the two Firestore collections.

mod answer;
mod checkpointer;
mod documents;
mod outbox;
mod reader;
mod steering;
mod time;
mod writer;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{Datelike, NaiveDate};
use rusqlite::{Connection, ErrorCode, OptionalExtension, PrepFlags, Row, Statement, params};

use self::checkpointer::Checkpointer;
use self::time::{SqlDate, SqlTime};

use crate::usage::{
    AuditEntry, AuditQuery, DailySummary, DailyUsage, DayAndMonth, DayChangeHub, DayChanges,
    Deadline, Fingerprint, IdempotencyKey, IdempotencyRecord, LimitOverride, Marks, MonthlySummary,
    MonthlyUsage, OverLimit, OverrideChange, Page, PageRequest, RecordRequest, Recorded,
    Reservations, Snapshot, StoreError, StoredDay, UsageStore, UsageTotals, UserId, UserType,
    days_of_month,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS daily_token_usage (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    date         TEXT NOT NULL,
    tokens_used  INTEGER NOT NULL,
    token_limit  INTEGER NOT NULL,
    user_type    TEXT NOT NULL,
    last_updated TEXT NOT NULL,
    reset_at     TEXT NOT NULL,
    reservations TEXT,
    notified     TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS daily_by_user_date ON daily_token_usage (user_id, date DESC);
CREATE INDEX IF NOT EXISTS daily_by_date_tokens
    ON daily_token_usage (date, tokens_used DESC, user_id);

CREATE TABLE IF NOT EXISTS token_usage_history (
    id                   TEXT PRIMARY KEY,
    user_id              TEXT NOT NULL,
    year                 INTEGER NOT NULL,
    month                INTEGER NOT NULL,
    daily_usage          TEXT NOT NULL,
    total_monthly_tokens INTEGER NOT NULL,
    average_daily_usage  REAL NOT NULL,
    peak_usage_date      TEXT NOT NULL,
    peak_usage_tokens    INTEGER NOT NULL,
    user_type            TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL,
    notified             TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS history_by_user ON token_usage_history (user_id, year DESC, month DESC);
CREATE INDEX IF NOT EXISTS history_by_month_tokens
    ON token_usage_history (year, month, total_monthly_tokens DESC, user_id);

CREATE TABLE IF NOT EXISTS idempotency_keys (
    user_id     TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
) STRICT;

CREATE TABLE IF NOT EXISTS notification_outbox (
    id              TEXT PRIMARY KEY,
    event_type      TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    retry_since     TEXT NOT NULL,
    delivered_to    TEXT,
    last_error      TEXT,
    expires_at      TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS outbox_due ON notification_outbox (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_by_status ON notification_outbox (status, created_at, id);
";

/// How long a read may wait for another process's lock (rare under WAL).
const READ_PATIENCE: Duration = Duration::from_secs(5);

/// The embedded store: records go to the writer thread ([`writer`]); reads, reports and the
/// maintenance commands go to a second connection on a thread of its own ([`reader`]). Under WAL the
/// reads run beside the writer, and `BEGIN IMMEDIATE` keeps other processes on the same file
/// correct too.
#[derive(Clone)]
pub struct SqliteStore {
    reader: reader::Reader,
    writer: writer::Writer,
    /// Told of each record this process commits: the file has no change feed of its own.
    changes: DayChangeHub,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = connect(path).map_err(store_error)?;
        connection.execute_batch(SCHEMA).map_err(store_error)?;
        connection
            .execute_batch(steering::SCHEMA)
            .map_err(store_error)?;
        add_missing_columns(&connection).map_err(store_error)?;
        connection
            .busy_timeout(READ_PATIENCE)
            .map_err(store_error)?;
        Ok(Self {
            reader: reader::Reader::start(connection)?,
            writer: writer::Writer::start(
                connect(path).map_err(store_error)?,
                Checkpointer::start(connect(path).map_err(store_error)?, path)?,
            )?,
            changes: DayChangeHub::default(),
        })
    }

    /// Runs `work` on the reading connection, off the runtime's threads.
    async fn with_connection<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.reader.run(work).await
    }
}

/// A connection to the file. WAL lets readers run beside the writer; NORMAL is durable across
/// process crashes (a commit is in the WAL before it is answered; only a power loss may undo
/// the last ones).
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(connection)
}

/// Files created before reservations or notifications existed gain their columns, at the
/// end of their tables (NULL: none).
fn add_missing_columns(connection: &Connection) -> rusqlite::Result<()> {
    let added = [
        ("daily_token_usage", "reservations"),
        ("daily_token_usage", "notified"),
        ("token_usage_history", "notified"),
    ];
    for (table, column) in added {
        let present: bool = connection.query_row(
            "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |row| row.get(0),
        )?;
        if !present {
            connection.execute(&format!("ALTER TABLE {table} ADD COLUMN {column} TEXT"), [])?;
        }
    }
    Ok(())
}

#[async_trait]
impl UsageStore for SqliteStore {
    /// The writer thread applies the record; see [`writer::Writer::record`] for how the
    /// deadline bounds it.
    async fn record(
        &self,
        request: RecordRequest,
        deadline: Deadline,
    ) -> Result<Recorded, StoreError> {
        let (user_id, date) = (request.user_id.clone(), request.window.date);
        self.changes
            .after_record(user_id, date, self.writer.record(request, deadline))
            .await
    }

    async fn day_and_month(
        &self,
        user_id: &UserId,
        date: NaiveDate,
    ) -> Result<DayAndMonth, StoreError> {
        let day_id = DailyUsage::document_id(user_id, date);
        let month_id = MonthlyUsage::document_id(user_id, date.year(), date.month());
        self.with_connection(move |connection| {
            // One read transaction: both rows as of one instant.
            let transaction = connection.transaction()?;
            let read = DayAndMonth {
                day: read_day(&mut *transaction.prepare_cached(READ_DAY)?, &day_id)?,
                month: read_month(&mut *transaction.prepare_cached(READ_MONTH)?, &month_id)?,
            };
            transaction.finish()?;
            Ok(read)
        })
        .await
    }

    async fn months(&self, user_id: &UserId, limit: u32) -> Result<Vec<MonthlyUsage>, StoreError> {
        let user_id = user_id.clone();
        self.with_connection(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT * FROM token_usage_history WHERE user_id = ?1
                 ORDER BY year DESC, month DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![user_id.as_str(), limit], month_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn daily_report(
        &self,
        date: NaiveDate,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<DailyUsage>, StoreError> {
        let page = page.clone();
        self.with_connection(move |connection| {
            let (after_figure, after_user) = cursor_params(&page);
            let mut statement = connection.prepare_cached(&format!(
                "SELECT {DAY_COLUMNS} FROM daily_token_usage
                 WHERE date = ?1 AND tokens_used > 0 AND (?2 IS NULL OR user_type = ?2)
                   AND (?3 IS NULL OR tokens_used < ?3 OR (tokens_used = ?3 AND user_id > ?4))
                 ORDER BY tokens_used DESC, user_id ASC LIMIT ?5"
            ))?;
            let items = statement
                .query_map(
                    params![
                        date,
                        user_type.map(UserType::as_str),
                        after_figure,
                        after_user,
                        page.limit + 1
                    ],
                    day_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Page::from_overfetch(items, page.limit))
        })
        .await
    }

    async fn monthly_report(
        &self,
        year: i32,
        month: u32,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<MonthlyUsage>, StoreError> {
        let page = page.clone();
        self.with_connection(move |connection| {
            let (after_figure, after_user) = cursor_params(&page);
            let mut statement = connection.prepare_cached(
                "SELECT * FROM token_usage_history
                 WHERE year = ?1 AND month = ?2 AND total_monthly_tokens > 0
                   AND (?3 IS NULL OR user_type = ?3)
                   AND (?4 IS NULL OR total_monthly_tokens < ?4
                        OR (total_monthly_tokens = ?4 AND user_id > ?5))
                 ORDER BY total_monthly_tokens DESC, user_id ASC LIMIT ?6",
            )?;
            let items = statement
                .query_map(
                    params![
                        year,
                        month,
                        user_type.map(UserType::as_str),
                        after_figure,
                        after_user,
                        page.limit + 1
                    ],
                    month_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Page::from_overfetch(items, page.limit))
        })
        .await
    }

    /// One statement, so every figure is of one instant; a stored type this version does not
    /// know counts as the default type, as it reads everywhere else.
    async fn daily_summary(&self, date: NaiveDate) -> Result<DailySummary, StoreError> {
        self.with_connection(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT user_type, COUNT(*), COALESCE(SUM(tokens_used), 0)
                 FROM daily_token_usage WHERE date = ?1 AND tokens_used > 0 GROUP BY user_type",
            )?;
            let rows = statement.query_map([date], |row| {
                Ok((user_type_from(row, 0)?, totals_from(row, 1)?))
            })?;
            Ok(DailySummary::from_counts(
                rows.collect::<rusqlite::Result<Vec<_>>>()?,
            ))
        })
        .await
    }

    /// Both statements in one read transaction, so every figure is of one instant.
    async fn monthly_summary(&self, year: i32, month: u32) -> Result<MonthlySummary, StoreError> {
        let days = days_of_month(year, month)?;
        let (Some(&first), Some(&last)) = (days.first(), days.last()) else {
            return Err(StoreError::Internal(format!("{year}-{month} has no days")));
        };
        self.with_connection(move |connection| {
            let transaction = connection.transaction()?;
            let by_type = transaction
                .prepare_cached(
                    "SELECT user_type, COUNT(*), COALESCE(SUM(total_monthly_tokens), 0)
                     FROM token_usage_history
                     WHERE year = ?1 AND month = ?2 AND total_monthly_tokens > 0
                     GROUP BY user_type",
                )?
                .query_map(params![year, month], |row| {
                    Ok((user_type_from(row, 0)?, totals_from(row, 1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let by_day = transaction
                .prepare_cached(
                    "SELECT date, COUNT(*), COALESCE(SUM(tokens_used), 0)
                     FROM daily_token_usage
                     WHERE date BETWEEN ?1 AND ?2 AND tokens_used > 0
                     GROUP BY date",
                )?
                .query_map(params![SqlDate(first), SqlDate(last)], |row| {
                    Ok((row.get::<_, SqlDate>(0)?.0, totals_from(row, 1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            transaction.finish()?;
            Ok(MonthlySummary::from_counts(&days, by_type, by_day))
        })
        .await
    }

    /// One statement, so both figures are of one instant.
    async fn over_limit(
        &self,
        date: NaiveDate,
        user_type: UserType,
        limit: i64,
    ) -> Result<OverLimit, StoreError> {
        self.with_connection(move |connection| {
            let mut statement = connection.prepare_cached(
                "SELECT COUNT(*),
                        COUNT(*) FILTER (WHERE tokens_used > ?3),
                        COALESCE(SUM(tokens_used - ?3) FILTER (WHERE tokens_used > ?3), 0)
                 FROM daily_token_usage
                 WHERE date = ?1 AND user_type = ?2 AND tokens_used > 0",
            )?;
            statement.query_row(params![date, user_type.as_str(), limit], |row| {
                Ok(OverLimit {
                    active_users: row.get(0)?,
                    users_over_limit: row.get(1)?,
                    tokens_over_limit: row.get(2)?,
                })
            })
        })
        .await
    }

    async fn limit_override(&self, user_id: &UserId) -> Result<Option<LimitOverride>, StoreError> {
        let user_id = user_id.clone();
        self.with_connection(move |connection| steering::read_override(connection, &user_id))
            .await
    }

    /// On the reading connection, in a transaction of its own: an admin's change is rare, and
    /// the file's lock keeps it apart from the writer's groups.
    async fn change_limit_override(
        &self,
        change: &OverrideChange,
    ) -> Result<Option<LimitOverride>, StoreError> {
        let change = change.clone();
        self.with_connection(move |connection| steering::change_override(connection, &change))
            .await
    }

    async fn limit_overrides(
        &self,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<LimitOverride>, StoreError> {
        let after = after.cloned();
        self.with_connection(move |connection| {
            steering::read_overrides(connection, after.as_ref(), limit)
        })
        .await
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let query = query.clone();
        self.with_connection(move |connection| steering::read_audit(connection, &query))
            .await
    }

    /// Ready when the file answers a read and the writer still takes records.
    async fn ping(&self) -> Result<(), StoreError> {
        self.writer.check()?;
        self.with_connection(|connection| connection.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }

    fn day_changes(&self, user_id: &UserId, date: NaiveDate) -> DayChanges {
        self.changes.subscribe(user_id, date)
    }
}

/// The resume point of a page as SQL parameters (both NULL on the first page).
fn cursor_params(page: &PageRequest) -> (Option<i64>, Option<String>) {
    page.after
        .as_ref()
        .map(|after| (after.figure, after.user_id.to_string()))
        .unzip()
}

const DAY_COLUMNS: &str =
    "user_id, date, tokens_used, token_limit, user_type, last_updated, reset_at";

/// A day's columns with its reservations, decoded by [`stored_day_from_row`]; a macro, so that
/// the statements built of it are constants.
macro_rules! stored_day_columns {
    () => {
        "user_id, date, tokens_used, token_limit, user_type, last_updated, reset_at, reservations, \
         notified"
    };
}

const STORED_DAY_COLUMNS: &str = stored_day_columns!();

fn day_from_row(row: &Row<'_>) -> rusqlite::Result<DailyUsage> {
    Ok(DailyUsage {
        user_id: user_id_from(row, 0)?,
        date: row.get::<_, SqlDate>(1)?.0,
        tokens_used: row.get(2)?,
        token_limit: row.get(3)?,
        user_type: user_type_from(row, 4)?,
        last_updated: row.get::<_, SqlTime>(5)?.0,
        reset_at: row.get::<_, SqlTime>(6)?.0,
    })
}

/// A day row with its reservations and marks, selected by [`STORED_DAY_COLUMNS`].
fn stored_day_from_row(row: &Row<'_>) -> rusqlite::Result<StoredDay> {
    Ok(StoredDay {
        usage: day_from_row(row)?,
        reservations: json_or_default(row, 7)?,
        notified: json_or_default(row, 8)?,
    })
}

/// A JSON column; NULL is the type's default.
fn json_or_default<T: serde::de::DeserializeOwned + Default>(
    row: &Row<'_>,
    index: usize,
) -> rusqlite::Result<T> {
    match row.get::<_, Option<String>>(index)? {
        None => Ok(T::default()),
        Some(json) => serde_json::from_str(&json).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, e.into())
        }),
    }
}

const READ_DAY: &str = concat!(
    "SELECT ",
    stored_day_columns!(),
    " FROM daily_token_usage WHERE id = ?1"
);

/// Writes a day's figures and, when `?9` says so, its reservations (`?10`), and when `?11`
/// says so, its marks (`?12`), none stored as NULL; otherwise the stored ones stay.
const WRITE_DAY: &str = "INSERT INTO daily_token_usage
        (id, user_id, date, tokens_used, token_limit, user_type, last_updated, reset_at,
         reservations, notified)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?12)
    ON CONFLICT (id) DO UPDATE SET
        tokens_used = excluded.tokens_used, token_limit = excluded.token_limit,
        user_type = excluded.user_type, last_updated = excluded.last_updated,
        reset_at = excluded.reset_at,
        reservations = CASE WHEN ?9 THEN excluded.reservations ELSE reservations END,
        notified = CASE WHEN ?11 THEN excluded.notified ELSE notified END";

const READ_MONTH: &str = "SELECT * FROM token_usage_history WHERE id = ?1";

/// The month's marks, beside [`READ_MONTH`] for a record's snapshot.
const READ_MONTH_NOTIFIED: &str = "SELECT notified FROM token_usage_history WHERE id = ?1";

/// Sets a month's marks; the month row exists, as the record wrote it first.
const WRITE_MONTH_NOTIFIED: &str = "UPDATE token_usage_history SET notified = ?2 WHERE id = ?1";

/// An event waits in the outbox for its delivery; an event already there stays as it is.
const WRITE_OUTBOX: &str = "INSERT INTO notification_outbox
        (id, event_type, user_id, payload, created_at, status, attempts, next_attempt_at,
         retry_since)
    VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?5, ?5)
    ON CONFLICT (id) DO NOTHING";

const WRITE_MONTH: &str = "INSERT INTO token_usage_history
        (id, user_id, year, month, daily_usage, total_monthly_tokens, average_daily_usage,
         peak_usage_date, peak_usage_tokens, user_type, created_at, updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
    ON CONFLICT (id) DO UPDATE SET
        daily_usage = excluded.daily_usage,
        total_monthly_tokens = excluded.total_monthly_tokens,
        average_daily_usage = excluded.average_daily_usage,
        peak_usage_date = excluded.peak_usage_date,
        peak_usage_tokens = excluded.peak_usage_tokens,
        user_type = excluded.user_type, updated_at = excluded.updated_at";

const READ_IDEMPOTENCY: &str = "SELECT fingerprint, response, expires_at FROM idempotency_keys
    WHERE user_id = ?1 AND key = ?2";

const WRITE_IDEMPOTENCY: &str =
    "INSERT INTO idempotency_keys (user_id, key, fingerprint, response, expires_at)
    VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,
        response = excluded.response, expires_at = excluded.expires_at";

/// The statements of a record and of its savepoint, prepared once for the writer's connection:
/// a cached statement is looked up, and its text copied, on every use.
struct RecordStatements<'conn> {
    savepoint: Statement<'conn>,
    rollback_to_savepoint: Statement<'conn>,
    release_savepoint: Statement<'conn>,
    read_day: Statement<'conn>,
    read_month: Statement<'conn>,
    read_idempotency: Statement<'conn>,
    read_override: Statement<'conn>,
    read_month_notified: Statement<'conn>,
    write_day: Statement<'conn>,
    write_month_notified: Statement<'conn>,
    write_outbox: Statement<'conn>,
    write_month: Statement<'conn>,
    write_idempotency: Statement<'conn>,
    write_audit: Statement<'conn>,
}

impl<'conn> RecordStatements<'conn> {
    fn prepare(connection: &'conn Connection) -> rusqlite::Result<Self> {
        let prepare =
            |sql| connection.prepare_with_flags(sql, PrepFlags::SQLITE_PREPARE_PERSISTENT);
        Ok(Self {
            savepoint: prepare("SAVEPOINT record")?,
            rollback_to_savepoint: prepare("ROLLBACK TO record")?,
            release_savepoint: prepare("RELEASE record")?,
            read_day: prepare(READ_DAY)?,
            read_month: prepare(READ_MONTH)?,
            read_idempotency: prepare(READ_IDEMPOTENCY)?,
            read_override: prepare(steering::READ_OVERRIDE)?,
            read_month_notified: prepare(READ_MONTH_NOTIFIED)?,
            write_day: prepare(WRITE_DAY)?,
            write_month_notified: prepare(WRITE_MONTH_NOTIFIED)?,
            write_outbox: prepare(WRITE_OUTBOX)?,
            write_month: prepare(WRITE_MONTH)?,
            write_idempotency: prepare(WRITE_IDEMPOTENCY)?,
            write_audit: prepare(steering::WRITE_AUDIT)?,
        })
    }

    /// One record in a savepoint: kept when it succeeds, rolled back alone when it fails.
    fn apply_in_savepoint(
        &mut self,
        request: &RecordRequest,
    ) -> rusqlite::Result<Result<Recorded, StoreError>> {
        self.savepoint.execute([])?;
        let answer = self.apply(request);
        if answer.is_err() {
            self.rollback_to_savepoint.execute([])?;
        }
        self.release_savepoint.execute([])?;
        Ok(answer)
    }

    /// Reads the snapshot, plans, and writes what the plan says, inside the savepoint, which
    /// makes it all or nothing.
    fn apply(&mut self, request: &RecordRequest) -> Result<Recorded, StoreError> {
        // Built once, for the reads and the writes.
        let (day_id, month_id) = (request.day_id(), request.month_id());
        let snapshot = self.read_snapshot(request, &day_id, &month_id)?;
        let plan = request.plan(&snapshot)?;
        if let Some(writes) = &plan.writes {
            write_day(
                &mut self.write_day,
                &day_id,
                &writes.day,
                writes.reservations.as_ref(),
                writes.raised.day_marks.as_ref(),
            )
            .map_err(store_error)?;
            if let Some(month) = &writes.month {
                write_month(&mut self.write_month, &month_id, month).map_err(store_error)?;
            }
            if let Some(marks) = &writes.raised.month_marks {
                self.write_month_notified
                    .execute(params![month_id, to_json(marks).map_err(store_error)?])
                    .map_err(store_error)?;
            }
            for event in &writes.raised.events {
                self.write_outbox
                    .execute(params![
                        event.id,
                        event.kind.name(),
                        event.user_id.as_str(),
                        event.payload().to_string(),
                        SqlTime(event.occurred_at),
                    ])
                    .map_err(store_error)?;
            }
            if let (Some(key), Some(record)) = (request.idempotency_key(), &writes.idempotency) {
                write_idempotency(&mut self.write_idempotency, &request.user_id, key, record)
                    .map_err(store_error)?;
            }
            if let Some(entry) = &writes.audit {
                steering::write_audit(&mut self.write_audit, entry).map_err(store_error)?;
            }
        }
        Ok(plan.applied())
    }

    fn read_snapshot(
        &mut self,
        request: &RecordRequest,
        day_id: &str,
        month_id: &str,
    ) -> Result<Snapshot, StoreError> {
        let month = read_month(&mut self.read_month, month_id)
            .map_err(|e| row_error("token_usage_history", month_id, e))?;
        Ok(Snapshot {
            day: read_day(&mut self.read_day, day_id)
                .map_err(|e| row_error("daily_token_usage", day_id, e))?,
            month,
            idempotency: match request.idempotency_key() {
                Some(key) => read_idempotency(&mut self.read_idempotency, &request.user_id, key)
                    .map_err(|e| row_error("idempotency_keys", key.as_str(), e))?,
                None => None,
            },
            limit_override: steering::override_of(&mut self.read_override, &request.user_id)
                .map_err(|e| row_error("limit_overrides", request.user_id.as_str(), e))?,
            month_notified: if request.thresholds.is_empty() {
                Marks::default()
            } else {
                self.read_month_notified
                    .query_row([month_id], |row| json_or_default(row, 0))
                    .optional()
                    .map_err(|e| row_error("token_usage_history", month_id, e))?
                    .unwrap_or_default()
            },
        })
    }
}

/// A row that does not decode is named, so that an operator can repair it.
fn row_error(table: &str, id: &str, error: rusqlite::Error) -> StoreError {
    match error {
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(format!(
                "the stored document {table}/{id} cannot be read: {error}"
            ))
        }
        other => store_error(other),
    }
}

/// Runs [`READ_DAY`].
fn read_day(statement: &mut Statement<'_>, id: &str) -> rusqlite::Result<Option<StoredDay>> {
    statement.query_row([id], stored_day_from_row).optional()
}

/// Runs [`WRITE_DAY`]: a day's figures and, when given, its reservations and marks; without
/// them, the stored ones stay.
fn write_day(
    statement: &mut Statement<'_>,
    id: &str,
    day: &DailyUsage,
    reservations: Option<&Reservations>,
    notified: Option<&Marks>,
) -> rusqlite::Result<()> {
    let reservations_json = reservations
        .filter(|reservations| !reservations.is_empty())
        .map(to_json)
        .transpose()?;
    let notified_json = notified
        .filter(|marks| !marks.is_empty())
        .map(to_json)
        .transpose()?;
    statement
        .execute(params![
            id,
            day.user_id.as_str(),
            SqlDate(day.date),
            day.tokens_used,
            day.token_limit,
            day.user_type.as_str(),
            SqlTime(day.last_updated),
            SqlTime(day.reset_at),
            reservations.is_some(),
            reservations_json,
            notified.is_some(),
            notified_json,
        ])
        .map(drop)
}

/// Runs [`READ_MONTH`].
fn read_month(statement: &mut Statement<'_>, id: &str) -> rusqlite::Result<Option<MonthlyUsage>> {
    statement.query_row([id], month_from_row).optional()
}

/// A month row selected with `SELECT *`: columns by position, in the table's order, which
/// spares a search of the column names for every field.
fn month_from_row(row: &Row<'_>) -> rusqlite::Result<MonthlyUsage> {
    let daily_usage: String = row.get(4)?;
    Ok(MonthlyUsage {
        user_id: user_id_from(row, 1)?,
        year: row.get(2)?,
        month: row.get(3)?,
        daily_usage: serde_json::from_str(&daily_usage).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into())
        })?,
        total_monthly_tokens: row.get(5)?,
        average_daily_usage: row.get(6)?,
        peak_usage_date: row.get(7)?,
        peak_usage_tokens: row.get(8)?,
        user_type: user_type_from(row, 9)?,
        created_at: row.get::<_, SqlTime>(10)?.0,
        updated_at: row.get::<_, SqlTime>(11)?.0,
    })
}

/// Runs [`WRITE_MONTH`].
fn write_month(
    statement: &mut Statement<'_>,
    id: &str,
    month: &MonthlyUsage,
) -> rusqlite::Result<()> {
    statement
        .execute(params![
            id,
            month.user_id.as_str(),
            month.year,
            month.month,
            to_json(&month.daily_usage)?,
            month.total_monthly_tokens,
            month.average_daily_usage,
            month.peak_usage_date,
            month.peak_usage_tokens,
            month.user_type.as_str(),
            SqlTime(month.created_at),
            SqlTime(month.updated_at),
        ])
        .map(drop)
}

/// Runs [`READ_IDEMPOTENCY`].
fn read_idempotency(
    statement: &mut Statement<'_>,
    user_id: &UserId,
    key: &IdempotencyKey,
) -> rusqlite::Result<Option<IdempotencyRecord>> {
    statement
        .query_row(params![user_id.as_str(), key.as_str()], |row| {
            let response: String = row.get(1)?;
            Ok(IdempotencyRecord {
                fingerprint: Fingerprint::from_stored(row.get(0)?),
                response: answer::decode(&response).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                })?,
                expires_at: row.get::<_, SqlTime>(2)?.0,
            })
        })
        .optional()
}

/// Runs [`WRITE_IDEMPOTENCY`].
fn write_idempotency(
    statement: &mut Statement<'_>,
    user_id: &UserId,
    key: &IdempotencyKey,
    record: &IdempotencyRecord,
) -> rusqlite::Result<()> {
    statement
        .execute(params![
            user_id.as_str(),
            key.as_str(),
            record.fingerprint.as_str(),
            answer::encode(&record.response)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?,
            SqlTime(record.expires_at),
        ])
        .map(drop)
}

fn to_json(value: &impl serde::Serialize) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
}

fn user_id_from<I: rusqlite::RowIndex>(row: &Row<'_>, index: I) -> rusqlite::Result<UserId> {
    let raw: String = row.get(index)?;
    UserId::parse(&raw).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

/// A stored user type this version does not know reads as `trial`, like an unknown claim.
fn user_type_from<I: rusqlite::RowIndex>(row: &Row<'_>, index: I) -> rusqlite::Result<UserType> {
    let raw: String = row.get(index)?;
    Ok(UserType::from_claim(Some(&raw)))
}

/// A count at `index` and the tokens summed beside it.
fn totals_from(row: &Row<'_>, index: usize) -> rusqlite::Result<UsageTotals> {
    Ok(UsageTotals {
        active_users: row.get(index)?,
        total_tokens: row.get(index + 1)?,
    })
}

fn store_error(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(error.to_string())
        }
        _ => StoreError::Internal(error.to_string()),
    }
}
