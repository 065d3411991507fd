//! The audit trail: every admin change, who made it and when, what it was before and after,
//! and why. A store appends an entry in the same commit as the change it describes.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::UserId;

/// What an admin changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    OverrideSet,
    OverrideRemoved,
    UsageReset,
    /// An admin recorded tokens for another user (`POST /usage` or a reservation's commit).
    UsageRecorded,
    /// A commit of the lifecycle commands `rebuild-history`, `cleanup`, `archive`, `import`.
    HistoryRebuilt,
    DaysDeleted,
    MonthsArchived,
    DocumentsImported,
    /// An admin sent a failed or delivered threshold event again.
    NotificationRedelivered,
}

impl AuditAction {
    pub const ALL: [Self; 9] = [
        Self::OverrideSet,
        Self::OverrideRemoved,
        Self::UsageReset,
        Self::UsageRecorded,
        Self::HistoryRebuilt,
        Self::DaysDeleted,
        Self::MonthsArchived,
        Self::DocumentsImported,
        Self::NotificationRedelivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OverrideSet => "override_set",
            Self::OverrideRemoved => "override_removed",
            Self::UsageReset => "usage_reset",
            Self::UsageRecorded => "usage_recorded",
            Self::HistoryRebuilt => "history_rebuilt",
            Self::DaysDeleted => "days_deleted",
            Self::MonthsArchived => "months_archived",
            Self::DocumentsImported => "documents_imported",
            Self::NotificationRedelivered => "notification_redelivered",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.as_str() == raw)
    }
}

/// `token_limit_audit/{id}`: one admin change.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Sorts as the entries were made: the instant in milliseconds, then a random part.
    pub id: String,
    pub at: DateTime<Utc>,
    /// The admin's uid.
    pub actor: UserId,
    pub action: AuditAction,
    /// The user the change is about; `None` for a lifecycle command's batch, which may touch
    /// many users' documents (its before and after name them).
    pub user_id: Option<UserId>,
    /// The changed thing as it was, and as it became (`None`: absent).
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// The request's `Idempotency-Key`, if it had one.
    pub idempotency_key: Option<String>,
    pub reason: Option<String>,
}

impl AuditEntry {
    /// An id that sorts after every entry made at an earlier millisecond.
    pub fn new_id(at: DateTime<Utc>) -> String {
        let random = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}", Self::first_id_at(at), &random[..12])
    }

    /// The instant an id was made at, to the millisecond (the service's times have no finer
    /// part).
    pub fn instant_of_id(id: &str) -> Option<DateTime<Utc>> {
        let millis = id.split_once('-')?.0.parse().ok()?;
        DateTime::from_timestamp_millis(millis)
    }

    /// What every id of an entry made at `at` or later sorts at or after.
    pub fn first_id_at(at: DateTime<Utc>) -> String {
        format!("{:015}", at.timestamp_millis().max(0))
    }
}

/// Which entries to list, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub user_id: Option<UserId>,
    pub actor: Option<UserId>,
    /// Only entries made at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// 1 to 500.
    pub limit: u32,
    /// Resume after the entry with this id (the previous page's last).
    pub after: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_as_the_entries_were_made() {
        let earlier = DateTime::parse_from_rfc3339("2026-01-10T00:00:00.999Z").unwrap();
        let later = DateTime::parse_from_rfc3339("2026-01-10T00:00:01Z").unwrap();
        let (a, b) = (
            AuditEntry::new_id(earlier.to_utc()),
            AuditEntry::new_id(later.to_utc()),
        );
        assert!(a < b, "{a} {b}");
        assert_eq!(AuditEntry::instant_of_id(&b), Some(later.to_utc()));
        assert_eq!(AuditEntry::instant_of_id("x-1"), None);
        assert_eq!(a.len(), 28);
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()), Some(action));
        }
    }
}
