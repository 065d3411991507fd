//! Where usage documents live. The trait speaks the domain; each store runs one transaction
//! per request and calls the pure decision inside it.

mod firestore;
pub mod queries;
mod sqlite;

pub use self::firestore::{FirestoreSettings, FirestoreStore, OperationCounts};
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::usage::{
    DailyUsage, DayWindow, Fingerprint, IdempotencyKey, Limits, MonthlyUsage, UserId, UserType,
};

/// One `POST /usage`, ready for a store to decide and record atomically.
#[derive(Debug, Clone)]
pub struct RecordRequest {
    pub user_id: UserId,
    pub tokens: i64,
    /// The caller's user type; `None` keeps the stored one (an admin acting for a user).
    pub user_type: Option<UserType>,
    pub window: DayWindow,
    pub limits: Limits,
    pub now: DateTime<Utc>,
    pub idempotency: Option<(IdempotencyKey, Fingerprint)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RecordOutcome {
    /// Counted; the day as it now stands.
    Admitted(DailyUsage),
    /// Over the limit, nothing written; the day as it stands.
    Denied(DailyUsage),
    /// The idempotency key was seen with this body: the first answer, nothing written.
    Replayed(DailyUsage),
    /// The idempotency key was seen with another body: nothing written.
    KeyReused,
}

/// Where a page of a report resumes: just after the item with this figure and user. Reports
/// are ordered by their figure, largest first, then by user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub figure: i64,
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// 1 to 500 items.
    pub limit: u32,
    /// `None` for the first page.
    pub after: Option<PageCursor>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageCursor>,
}

/// An item of a report: where a page that ends with it resumes.
pub trait ReportItem {
    fn cursor(&self) -> PageCursor;
}

/// The daily report is ordered by `tokensUsed`.
impl ReportItem for DailyUsage {
    fn cursor(&self) -> PageCursor {
        PageCursor {
            figure: self.tokens_used,
            user_id: self.user_id.clone(),
        }
    }
}

/// The monthly report is ordered by `totalMonthlyTokens`.
impl ReportItem for MonthlyUsage {
    fn cursor(&self) -> PageCursor {
        PageCursor {
            figure: self.total_monthly_tokens,
            user_id: self.user_id.clone(),
        }
    }
}

impl<T: ReportItem> Page<T> {
    /// A page from up to `limit + 1` items in report order: the extra one only says that
    /// another page follows.
    pub fn from_overfetch(mut items: Vec<T>, limit: u32) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next = if more {
            items.last().map(T::cursor)
        } else {
            None
        };
        Self { items, next }
    }
}

/// How many users used tokens on a day, and how many tokens, for one user type or all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub active_users: i64,
    pub total_tokens: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DailySummary {
    pub trial: UsageTotals,
    pub subscribed: UsageTotals,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying later: the store is unreachable, busy or contended (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A fault that a retry will not cure (500; the detail is logged, never returned).
    #[error("store failure: {0}")]
    Internal(String),
}

#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Decides and records one request in a single transaction: usage is counted exactly once
    /// and never over the limit, however many requests and instances run at once.
    async fn record(&self, request: RecordRequest) -> Result<RecordOutcome, StoreError>;

    /// The user's day document, if it exists. Never creates one.
    async fn day(
        &self,
        user_id: &UserId,
        date: NaiveDate,
    ) -> Result<Option<DailyUsage>, StoreError>;

    /// The user's month documents, newest first, at most `limit`.
    async fn months(&self, user_id: &UserId, limit: u32) -> Result<Vec<MonthlyUsage>, StoreError>;

    /// One day's documents, most tokens first (ties by user id), optionally of one user type.
    async fn daily_report(
        &self,
        date: NaiveDate,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<DailyUsage>, StoreError>;

    /// One month's aggregates, most tokens first (ties by user id), optionally of one type.
    async fn monthly_report(
        &self,
        year: i32,
        month: u32,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<MonthlyUsage>, StoreError>;

    /// Active users and tokens of one day per user type, counted by the store (aggregation
    /// queries), never by reading every document.
    async fn daily_summary(&self, date: NaiveDate) -> Result<DailySummary, StoreError>;

    /// Answers when the store can serve requests.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Operations sent to a metered backend so far (Firestore); `None` for the embedded store.
    fn operation_counts(&self) -> Option<OperationCounts> {
        None
    }
}
