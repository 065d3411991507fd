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

    /// Answers when the store can serve requests.
    async fn ping(&self) -> Result<(), StoreError>;
}
