//! The maintenance port: what the lifecycle commands need from wherever the documents live.
//! Unlike [`UsageStore`](crate::usage::UsageStore), it sees documents as stored, including
//! those that do not decode, and writes them under explicit conditions.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};

use crate::usage::{
    AuditEntry, DailyUsage, MonthlyUsage, OutboxEntry, StoreError, StoredDay, UserId, UserType,
};

/// The schema's two collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collection {
    Daily,
    History,
}

impl Collection {
    pub const ALL: [Self; 2] = [Self::Daily, Self::History];

    pub fn name(self) -> &'static str {
        match self {
            Self::Daily => "daily_token_usage",
            Self::History => "token_usage_history",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The notification outbox, which `verify` checks beside the two collections.
pub const OUTBOX_COLLECTION: &str = "notification_outbox";

/// A document of either collection, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Day(StoredDay),
    Month(MonthlyUsage),
}

impl Document {
    pub fn collection(&self) -> Collection {
        match self {
            Self::Day(_) => Collection::Daily,
            Self::Month(_) => Collection::History,
        }
    }

    /// The id the schema gives a document with these fields.
    pub fn expected_id(&self) -> String {
        match self {
            Self::Day(day) => DailyUsage::document_id(&day.usage.user_id, day.usage.date),
            Self::Month(month) => {
                MonthlyUsage::document_id(&month.user_id, month.year, month.month)
            }
        }
    }

    /// When the document was last written, by its own timestamp.
    pub fn updated(&self) -> DateTime<Utc> {
        match self {
            Self::Day(day) => day.usage.last_updated,
            Self::Month(month) => month.updated_at,
        }
    }
}

/// The store's mark of one state of a document: a write conditioned on it is refused if the
/// document changed since (Firestore's `updateTime`; the row itself on SQLite).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

/// Where a scan resumes: after this document, in the scan's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    pub id: String,
    /// The stored `date`, for scans in date order.
    pub date: Option<String>,
}

/// One document as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub collection: Collection,
    pub id: String,
    pub version: Version,
    /// The decoded document, or why it does not decode (the field and the problem).
    pub content: Result<Document, String>,
    pub cursor: ScanCursor,
}

/// Which documents a scan visits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Every document of a collection (or only those whose `userId` is this user), by id.
    Collection {
        collection: Collection,
        user: Option<UserId>,
    },
    /// The day documents dated before this date, oldest first.
    DaysBefore(NaiveDate),
    /// The month documents of one month, by id.
    Month { year: i32, month: u32 },
}

/// A month document and the day documents of that month, read at one instant.
#[derive(Debug, Clone)]
pub struct MonthSnapshot {
    pub month: Option<Stored>,
    pub days: Vec<Stored>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Writes the schema's fields of the document (others' fields stay).
    Put(Document),
    Delete,
}

/// What must hold for a write to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The document does not exist.
    Missing,
    /// The document is as it was when read.
    Unchanged(Version),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocumentWrite {
    pub collection: Collection,
    pub id: String,
    pub change: Change,
    pub condition: Condition,
}

/// The most writes one [`DocumentStore::apply`] takes: Firestore's limit per commit, less the
/// commit's audit entry.
pub const MAX_WRITES_PER_COMMIT: usize = 499;

/// An outbox entry as stored: its id, and the entry or why it does not decode.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    pub id: String,
    pub entry: Result<OutboxEntry, String>,
}

/// Whether a batch of conditional writes was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    All,
    /// A condition did not hold: nothing was written.
    Nothing,
}

#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// Up to `limit` documents of the scan after `after`, in the scan's order.
    async fn scan(
        &self,
        scan: &Scan,
        after: Option<&ScanCursor>,
        limit: u32,
    ) -> Result<Vec<Stored>, StoreError>;

    /// The named documents that exist, read at one instant.
    async fn get(&self, collection: Collection, ids: &[String]) -> Result<Vec<Stored>, StoreError>;

    /// The user's month document and the day documents whose `date` falls in that month,
    /// read at one instant.
    async fn month_with_days(
        &self,
        user_id: &UserId,
        year: i32,
        month: u32,
    ) -> Result<MonthSnapshot, StoreError>;

    /// Applies up to [`MAX_WRITES_PER_COMMIT`] writes and appends `audit`, all of it or, when
    /// a condition does not hold, none.
    async fn apply(
        &self,
        writes: Vec<DocumentWrite>,
        audit: &AuditEntry,
    ) -> Result<Applied, StoreError>;

    /// Up to `limit` entries of the notification outbox after the id `after` (of `user`, when
    /// named), by id: each decoded, or why it does not decode.
    async fn outbox_entries(
        &self,
        user: Option<&UserId>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, StoreError>;

    /// Deletes up to `limit` idempotency records and up to `limit` settled outbox entries that
    /// expired before `now`, returning how many; `None` when the store expires them itself
    /// (Firestore's TTL policies).
    async fn delete_expired_keys(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Option<u64>, StoreError>;
}

/// A stored user type, strictly: the service reads an unknown one as the default, but a
/// check must say so.
pub fn strict_user_type(raw: &str) -> Result<UserType, String> {
    UserType::parse(raw).ok_or_else(|| {
        format!(
            "field userType holds {raw:?}, which is none of {}",
            UserType::names()
        )
    })
}
