//! The usage domain: who is counted, the documents that count them, the pure decision and
//! record plan, and the ports the adapters implement (the store, the user directory).

mod audit;
mod changes;
mod clock;
mod deadline;
mod decision;
mod directory;
mod idempotency;
mod month;
mod notice;
mod outbox;
mod overrides;
mod policy;
mod record;
mod reservation;
mod service;
mod store;
mod user_type;
mod what_if;
mod window;

pub use audit::{AuditAction, AuditEntry, AuditQuery};
pub use changes::{DayChangeHub, DayChanges, DayNotifier};
pub use clock::{Clock, SystemClock};
pub use deadline::Deadline;
pub use decision::{Decision, DecisionError, DecisionInput, decide};
pub use directory::{DirectoryError, OfflineDirectory, UserDirectory};
pub use idempotency::{
    Fingerprint, IdempotencyCheck, IdempotencyKey, IdempotencyRecord, InvalidIdempotencyKey,
    StoredAnswer,
};
pub use month::{MonthFigures, MonthOf, month_dates, month_start};
pub use notice::{
    EVENT_TYPES, EventKind, InvalidMark, Mark, Marks, Raised, Thresholds, UsageEvent,
};
pub use outbox::{
    DeliveryOutcome, Outbox, OutboxCursor, OutboxEntry, OutboxStatus, Pending, Redelivery,
    SETTLED_RETENTION,
};
pub use overrides::{
    InvalidOverride, LimitOverride, MAX_OVERRIDE_LIMIT, OverrideChange, OverrideRequest, limits_for,
};
pub use policy::{
    Enforcement, InvalidFraction, LimitWindow, Limits, OnStoreUnavailable, Policy, Share,
    UnknownEnforcement, UnknownOutagePolicy, fits,
};
pub use record::{
    Action, Plan, RecordOutcome, RecordRequest, Recorded, ReservationRefusal, Snapshot, Writes,
};
pub use reservation::{
    MAX_ENTRIES_PER_DAY, Reservation, ReservationEntry, ReservationId, ReservationRules,
    Reservations, Settlement, StoredEntry, UnknownReservationId,
};
pub use service::{
    AdminAct, Admission, MaybeRecorded, PlanSource, Subject, TypeSource, UsageError, UsageService,
    UsageSettings, UserReport,
};
pub use store::{
    DailySummary, DayAndMonth, MonthlySummary, Page, PageCursor, PageRequest, ReportItem,
    StoreError, UsageStore, UsageTotals, days_of_month, split_overfetch,
};
pub use user_type::UserType;
pub use what_if::{DayRange, InvalidDayRange, OverLimit, WhatIf};
pub use window::{DayWindow, seconds_until};

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// A Firebase uid that can name a Firestore document (`{uid}_{date}`, `{uid}_{yyyy}_{mm}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

/// Why a string is not a usable [`UserId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUserId {
    #[error("a user id must be 1 to 128 characters long")]
    Length,
    #[error("a user id cannot contain '/', be '.' or '..', or look like '__name__'")]
    NotADocumentName,
}

impl UserId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, InvalidUserId> {
        let chars = raw.chars().count();
        if chars == 0 || chars > Self::MAX_CHARS {
            return Err(InvalidUserId::Length);
        }
        let reserved = raw.len() >= 4 && raw.starts_with("__") && raw.ends_with("__");
        if raw.contains('/') || raw == "." || raw == ".." || reserved {
            return Err(InvalidUserId::NotADocumentName);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidUserId;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> Self {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A number of tokens to spend: at least 1, so no request can lower a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tokens(i64);

/// Why a number is not a usable [`Tokens`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tokens must be an integer from 1 to {max}")]
pub struct InvalidTokens {
    pub max: i64,
}

impl Tokens {
    /// `raw` tokens, if it is from 1 to `max`.
    pub fn bounded(raw: i64, max: i64) -> Result<Self, InvalidTokens> {
        if (1..=max).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(InvalidTokens { max })
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// `daily_token_usage/{userId}_{date}`. Its serde shape is the schema's document, as the
/// lifecycle commands export and import it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DailyUsage {
    pub user_id: UserId,
    pub date: NaiveDate,
    pub tokens_used: i64,
    pub token_limit: i64,
    pub user_type: UserType,
    pub last_updated: DateTime<Utc>,
    pub reset_at: DateTime<Utc>,
}

impl DailyUsage {
    pub fn document_id(user_id: &UserId, date: NaiveDate) -> String {
        // `Display` is `%Y-%m-%d`, without interpreting a pattern.
        format!("{user_id}_{date}")
    }

    /// `token_usage_history/{id}` of the month this day belongs to.
    pub fn month_document_id(&self) -> String {
        MonthlyUsage::document_id(&self.user_id, self.date.year(), self.date.month())
    }

    pub fn remaining(&self) -> i64 {
        self.token_limit.saturating_sub(self.tokens_used).max(0)
    }
}

/// A day document as stored: the usage figures, the reservations it keeps (the
/// `reservations` field) and the events it raised (`notified`), each absent when empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDay {
    #[serde(flatten)]
    pub usage: DailyUsage,
    #[serde(default, skip_serializing_if = "Reservations::is_empty")]
    pub reservations: Reservations,
    #[serde(default, skip_serializing_if = "Marks::is_empty")]
    pub notified: Marks,
}

/// A user's day as an answer shows it: the stored figures, the tokens held right now, the
/// month so far, and how the limits are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub day: DailyUsage,
    /// The estimates of reservations neither settled nor expired.
    pub reserved_tokens: i64,
    pub month: MonthStanding,
    pub enforcement: Enforcement,
    /// The window the request went over: the one that refused it, or in `shadow` and `off`
    /// the one `enforce` would have refused it on.
    pub exceeds: Option<LimitWindow>,
}

/// The month of a [`Standing`]: its tokens so far (the day's included), its cap, its reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonthStanding {
    pub tokens_used: i64,
    /// `None`: no monthly cap.
    pub limit: Option<i64>,
    /// The first instant of the next month in `RESET_TIMEZONE`.
    pub reset_at: DateTime<Utc>,
}

impl MonthStanding {
    /// What an answer remembered before answers showed the month is read with: the day's
    /// tokens (the least the month held), no cap, and the day's reset.
    pub fn before_months_for(day: &DailyUsage) -> Self {
        Self {
            tokens_used: day.tokens_used,
            limit: None,
            reset_at: day.reset_at,
        }
    }
}

impl Standing {
    /// What the next request may still spend: the smaller of the day's
    /// `max(0, tokenLimit - tokensUsed - reserved)` and, under a cap, the month's.
    pub fn remaining(&self) -> i64 {
        let daily = self.window_remaining(LimitWindow::Daily);
        match self.month.limit {
            Some(_) => daily.min(self.window_remaining(LimitWindow::Monthly)),
            None => daily,
        }
    }

    /// The window whose remainder is the smaller: the one the next refusal would name. On a
    /// tie, the month, which resets later.
    pub fn binding(&self) -> LimitWindow {
        match self.month.limit {
            Some(_)
                if self.window_remaining(LimitWindow::Monthly)
                    <= self.window_remaining(LimitWindow::Daily) =>
            {
                LimitWindow::Monthly
            }
            _ => LimitWindow::Daily,
        }
    }

    /// The limit of `window` (`i64::MAX` for an uncapped month).
    pub fn limit(&self, window: LimitWindow) -> i64 {
        match window {
            LimitWindow::Daily => self.day.token_limit,
            LimitWindow::Monthly => self.month.limit.unwrap_or(i64::MAX),
        }
    }

    /// Tokens used and held in `window`.
    pub fn spent(&self, window: LimitWindow) -> i64 {
        let used = match window {
            LimitWindow::Daily => self.day.tokens_used,
            LimitWindow::Monthly => self.month.tokens_used,
        };
        used.saturating_add(self.reserved_tokens)
    }

    pub fn window_remaining(&self, window: LimitWindow) -> i64 {
        self.limit(window).saturating_sub(self.spent(window)).max(0)
    }

    /// When `window` starts over.
    pub fn reset_at(&self, window: LimitWindow) -> DateTime<Utc> {
        match window {
            LimitWindow::Daily => self.day.reset_at,
            LimitWindow::Monthly => self.month.reset_at,
        }
    }

    /// Whole seconds until `window` resets, at least 1: the `Retry-After` of a refusal.
    pub fn retry_after(&self, window: LimitWindow, now: DateTime<Utc>) -> i64 {
        seconds_until(self.reset_at(window), now).max(1)
    }

    /// Whether used and held tokens reach the soft share of the binding limit.
    pub fn approaching_limit(&self, soft: Share) -> bool {
        let window = self.binding();
        soft.reached(self.spent(window), self.limit(window))
    }
}

/// `token_usage_history/{userId}_{yyyy}_{mm}`: one user's month, aggregated from the days.
/// Its serde shape is the schema's document, as the lifecycle commands export and import it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonthlyUsage {
    pub user_id: UserId,
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
    /// Day of month as `"DD"` -> tokens; every day from the first used to the latest.
    pub daily_usage: BTreeMap<String, i64>,
    pub total_monthly_tokens: i64,
    pub average_daily_usage: f64,
    /// The day (`"DD"`) with the most tokens; the earliest on a tie.
    pub peak_usage_date: String,
    pub peak_usage_tokens: i64,
    pub user_type: UserType,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl MonthlyUsage {
    pub fn document_id(user_id: &UserId, year: i32, month: u32) -> String {
        format!("{user_id}_{year:04}_{month:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_that_cannot_name_a_document_are_refused() {
        for bad in ["", ".", "..", "a/b", "__x__", "____"] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(UserId::parse(&"é".repeat(129)).is_err());
        for good in ["abc123", "__x", "x__", "__", "___", "a.b", &"é".repeat(128)] {
            assert!(UserId::parse(good).is_ok(), "{good:?} was refused");
        }
    }

    #[test]
    fn document_ids_follow_the_schema() {
        let uid = UserId::parse("user123").unwrap();
        let date = NaiveDate::from_ymd_opt(2024, 1, 15).unwrap();
        assert_eq!(DailyUsage::document_id(&uid, date), "user123_2024-01-15");
        assert_eq!(MonthlyUsage::document_id(&uid, 2024, 1), "user123_2024_01");
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// Alice's 15 January 2024 with these figures.
    fn day(tokens_used: i64, token_limit: i64) -> DailyUsage {
        DailyUsage {
            user_id: UserId::parse("alice").unwrap(),
            date: NaiveDate::from_ymd_opt(2024, 1, 15).unwrap(),
            tokens_used,
            token_limit,
            user_type: UserType::Trial,
            last_updated: at("2024-01-15T00:00:00Z"),
            reset_at: at("2024-01-16T00:00:00Z"),
        }
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        let day = day(0, 1);
        let standing = Standing {
            month: MonthStanding::before_months_for(&day),
            day,
            reserved_tokens: 0,
            enforcement: Enforcement::Enforce,
            exceeds: None,
        };
        let retry_after = |now| standing.retry_after(LimitWindow::Daily, at(now));
        assert_eq!(retry_after("2024-01-15T23:59:59.200Z"), 1);
        assert_eq!(retry_after("2024-01-15T23:00:00Z"), 3600);
        assert_eq!(retry_after("2024-01-16T00:00:01Z"), 1);
    }

    /// A stored day whose figures no write of the service makes still has an answer.
    #[test]
    fn remaining_does_not_overflow_on_extreme_stored_figures() {
        assert_eq!(day(1, i64::MIN).remaining(), 0);
        assert_eq!(day(i64::MIN, 1).remaining(), i64::MAX);
    }

    #[test]
    fn tokens_are_positive_and_bounded() {
        assert_eq!(Tokens::bounded(1, 10).unwrap().get(), 1);
        assert_eq!(Tokens::bounded(10, 10).unwrap().get(), 10);
        for bad in [i64::MIN, -1, 0, 11] {
            assert_eq!(Tokens::bounded(bad, 10), Err(InvalidTokens { max: 10 }));
        }
    }
}
