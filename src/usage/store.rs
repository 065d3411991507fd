//! The storage port: what the domain needs from wherever usage documents live. The adapters
//! (`crate::store`) implement it; both pass one conformance suite.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::NaiveDate;

use super::{
    AuditEntry, AuditQuery, DailyUsage, DayChanges, Deadline, DecisionError, LimitOverride,
    MonthlyUsage, OverLimit, OverrideChange, RecordRequest, Recorded, StoredDay, UserId, UserType,
    month_dates,
};

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
    pub fn from_overfetch(items: Vec<T>, limit: u32) -> Self {
        let (items, next) = split_overfetch(items, limit, T::cursor);
        Self { items, next }
    }
}

/// The first `limit` of up to `limit + 1` items, and the `key` of the last one kept when the
/// extra one says that another page follows.
pub fn split_overfetch<T, K>(
    mut items: Vec<T>,
    limit: u32,
    key: impl FnOnce(&T) -> K,
) -> (Vec<T>, Option<K>) {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = items.last().filter(|_| more).map(key);
    (items, next)
}

/// How many users used tokens on a day, and how many tokens, for one user type or all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub active_users: i64,
    pub total_tokens: i64,
}

impl std::ops::Add for UsageTotals {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            active_users: self.active_users + other.active_users,
            total_tokens: self.total_tokens + other.total_tokens,
        }
    }
}

/// One day's totals per user type, every type present, all read at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailySummary {
    pub by_type: BTreeMap<UserType, UsageTotals>,
}

impl DailySummary {
    /// A summary from the totals a store counted; types it did not see count zero.
    pub fn from_counts(counts: impl IntoIterator<Item = (UserType, UsageTotals)>) -> Self {
        Self {
            by_type: every_type(counts),
        }
    }

    pub fn all(&self) -> UsageTotals {
        sum_of(self.by_type.values())
    }
}

/// One month's totals per user type from its month documents (active: a total above 0), every
/// type present, and per day the totals of its day documents across all users, every day of
/// the month present; all read at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonthlySummary {
    pub by_type: BTreeMap<UserType, UsageTotals>,
    pub days: BTreeMap<NaiveDate, UsageTotals>,
}

impl MonthlySummary {
    /// A summary from the totals a store counted over `days` (the month's, in order); types
    /// and days it did not see count zero.
    pub fn from_counts(
        days: &[NaiveDate],
        type_counts: impl IntoIterator<Item = (UserType, UsageTotals)>,
        day_counts: impl IntoIterator<Item = (NaiveDate, UsageTotals)>,
    ) -> Self {
        let mut by_day: BTreeMap<NaiveDate, UsageTotals> = days
            .iter()
            .map(|date| (*date, UsageTotals::default()))
            .collect();
        for (date, totals) in day_counts {
            let entry = by_day.entry(date).or_default();
            *entry = *entry + totals;
        }
        Self {
            by_type: every_type(type_counts),
            days: by_day,
        }
    }

    pub fn all(&self) -> UsageTotals {
        sum_of(self.by_type.values())
    }
}

/// Every day of a month, in order; a month that is none is a fault of the caller's.
pub fn days_of_month(year: i32, month: u32) -> Result<Vec<NaiveDate>, StoreError> {
    let (first, last) = month_dates(year, month)
        .ok_or_else(|| StoreError::Internal(format!("{year}-{month} is no month")))?;
    Ok(first.iter_days().take_while(|date| *date <= last).collect())
}

/// Totals per type, summed, every type present.
fn every_type(
    counts: impl IntoIterator<Item = (UserType, UsageTotals)>,
) -> BTreeMap<UserType, UsageTotals> {
    let mut by_type: BTreeMap<UserType, UsageTotals> = UserType::ALL
        .into_iter()
        .map(|user_type| (user_type, UsageTotals::default()))
        .collect();
    for (user_type, totals) in counts {
        let entry = by_type.entry(user_type).or_default();
        *entry = *entry + totals;
    }
    by_type
}

fn sum_of<'a>(totals: impl Iterator<Item = &'a UsageTotals>) -> UsageTotals {
    totals.fold(UsageTotals::default(), |sum, totals| sum + *totals)
}

/// A user's day and the month it counts in, as read together; absent when they do not exist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayAndMonth {
    pub day: Option<StoredDay>,
    pub month: Option<MonthlyUsage>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying later: the store is unreachable, busy or contended, and nothing was
    /// written (503).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A write may or may not have been applied, and no read could tell which (503, saying
    /// so).
    #[error("store outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A stored document that the service cannot use; the message names it (500).
    #[error("{0}")]
    Corrupt(String),
    /// A fault that a retry will not cure (500; the detail is logged, never returned).
    #[error("store failure: {0}")]
    Internal(String),
}

/// A month the plan cannot continue is a stored document to repair, named in the message.
impl From<DecisionError> for StoreError {
    fn from(error: DecisionError) -> Self {
        Self::Corrupt(error.to_string())
    }
}

#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Reads the request's documents as one snapshot, runs [`RecordRequest::plan`] on them and
    /// applies its writes atomically, on the condition that nothing changed since the read:
    /// usage is counted exactly once and never over the limit, however many requests and
    /// instances run at once.
    ///
    /// No write begins after `deadline.writes_until()`, and the answer comes by
    /// `deadline.work_until()`: [`StoreError::Unavailable`] only when nothing was written,
    /// [`StoreError::OutcomeUnknown`] when a write may have been applied and its outcome could
    /// not be learned in time.
    async fn record(
        &self,
        request: RecordRequest,
        deadline: Deadline,
    ) -> Result<Recorded, StoreError>;

    /// The user's day document with its reservations and the month document it counts in,
    /// those that exist, as of one instant. Never creates one.
    async fn day_and_month(
        &self,
        user_id: &UserId,
        date: NaiveDate,
    ) -> Result<DayAndMonth, StoreError>;

    /// The user's month documents, newest first, at most `limit`.
    async fn months(&self, user_id: &UserId, limit: u32) -> Result<Vec<MonthlyUsage>, StoreError>;

    /// One day's documents with tokens used (above 0), most first (ties by user id),
    /// optionally of one user type: a day that only held reservations is left out.
    async fn daily_report(
        &self,
        date: NaiveDate,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<DailyUsage>, StoreError>;

    /// One month's aggregates with tokens used (above 0), most first (ties by user id),
    /// optionally of one type.
    async fn monthly_report(
        &self,
        year: i32,
        month: u32,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<MonthlyUsage>, StoreError>;

    /// Active users (those with tokens used above 0) and tokens of one day per user type,
    /// counted by the store (aggregation queries), never by reading every document, and every
    /// figure as of one instant.
    async fn daily_summary(&self, date: NaiveDate) -> Result<DailySummary, StoreError>;

    /// One month's active users (month documents with a total above 0) and tokens per user
    /// type, and each of its days' active users and tokens across all users (day documents
    /// with tokens used above 0), counted by the store (aggregation queries), never by reading
    /// every document, and every figure as of one instant.
    async fn monthly_summary(&self, year: i32, month: u32) -> Result<MonthlySummary, StoreError>;

    /// One day's documents of `user_type` against `limit`: those with tokens used above 0,
    /// and the number and tokens above it of those with tokens used above `limit`. Counted by
    /// the store (aggregation queries), never by reading every document, both as of one
    /// instant.
    async fn over_limit(
        &self,
        date: NaiveDate,
        user_type: UserType,
        limit: i64,
    ) -> Result<OverLimit, StoreError>;

    /// The user's limit override, active or expired, if one is stored.
    async fn limit_override(&self, user_id: &UserId) -> Result<Option<LimitOverride>, StoreError>;

    /// Sets or removes the user's override and appends the change's audit entry
    /// ([`OverrideChange::audit`] of the override replaced), in one commit: both or neither.
    /// Returns the override replaced.
    async fn change_limit_override(
        &self,
        change: &OverrideChange,
    ) -> Result<Option<LimitOverride>, StoreError>;

    /// Up to `limit + 1` stored overrides, expired or not, by user id after `after`.
    async fn limit_overrides(
        &self,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<LimitOverride>, StoreError>;

    /// Up to `query.limit + 1` audit entries that match it, newest first.
    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;

    /// Answers when the store can serve requests.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Notices that the user's day `date` changed, by a record on any instance that shares
    /// the store (SQLite: this process alone), from now on; a notice says only that the day
    /// should be read again.
    fn day_changes(&self, user_id: &UserId, date: NaiveDate) -> DayChanges;
}
