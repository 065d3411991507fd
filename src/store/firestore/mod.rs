//! The production store: Firestore, shared by every instance of the service.
//!
//! A record is one optimistic read-modify-write: one `BatchGetDocuments` of the day, the month
//! and the idempotency record, the pure decision, then one `Commit` whose every write carries
//! a precondition on the document as it was read (`updateTime`, or `exists: false`). If another
//! writer got there first the commit fails as a whole and the attempt is repeated with backoff.
//! That is 2 RPCs for an admitted request and 1 for a denied or replayed one, and contended
//! writers never wait on each other's locks.

mod cache;
mod client;
mod codec;
mod counters;
mod documents;
mod emulator;
mod mirror;
mod outbox;
mod record;
mod reports;
mod steering;
mod user_queue;

pub use codec::{DAY_FIELDS, MONTH_FIELDS};
pub use counters::{FirestoreCounters, OperationCounts};
pub use record::{conditional_update, unchanged_since_read};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDate;
use firestore::gcloud_sdk::google_cloud_auth::credentials::Credentials;
use firestore::{FirestoreDb, FirestoreDbOptions};

use self::cache::DocumentCache;
use self::client::{AttemptError, MAX_RPC_TIMEOUT};
use crate::store::queries::{DAILY_COLLECTION, OVERRIDES_COLLECTION};
use crate::usage::{
    AuditEntry, AuditQuery, DailySummary, DailyUsage, DayAndMonth, DayChangeHub, DayChanges,
    Deadline, LimitOverride, MonthlySummary, MonthlyUsage, OverLimit, OverrideChange, Page,
    PageRequest, RecordRequest, Recorded, StoreError, UsageStore, UserId, UserType,
};

/// How often a quiet listener on a watched day checks that its stream still answers (one
/// billed read each time).
const DAY_WATCH_REFRESH: Duration = Duration::from_secs(300);

/// Where the store connects.
#[derive(Debug, Clone)]
pub struct FirestoreSettings {
    pub project_id: String,
    pub database_id: String,
    /// `host:port` of a Firestore emulator; `None` means the real service with Application
    /// Default Credentials.
    pub emulator_host: Option<String>,
    /// About how many bytes of day and month documents to keep for committing without a
    /// read first; 0 reads before every commit.
    pub cache_bytes: u64,
}

pub struct FirestoreStore {
    db: FirestoreDb,
    /// `projects/{project}/databases/{database}`.
    database: String,
    counters: Arc<FirestoreCounters>,
    queue: user_queue::UserQueue,
    cache: DocumentCache,
    /// Every limit override, kept current over a listener: a decision finds its user's with
    /// no call to Firestore.
    overrides: mirror::CollectionMirror,
    /// The users whose day someone on this instance watches; told of this instance's own
    /// records at once.
    changes: DayChangeHub,
}

impl FirestoreStore {
    /// One client for the process. It connects now, so a Firestore that cannot be reached stops
    /// the start with an error that says so; an outage later is answered 503 until the
    /// connection is re-established by itself.
    pub async fn connect(settings: FirestoreSettings) -> Result<Self, StoreError> {
        let mut options = FirestoreDbOptions::new(settings.project_id.clone())
            .with_database_id(settings.database_id.clone());
        let db = match &settings.emulator_host {
            Some(host) => {
                options = options.with_firebase_api_url(format!("http://{host}"));
                let credentials = Credentials::from(emulator::EmulatorCredentials::new());
                FirestoreDb::with_options_auth(options, credentials).await
            }
            None => FirestoreDb::with_options(options).await,
        }
        .map_err(|e| StoreError::Unavailable(format!("cannot create the Firestore client: {e}")))?;
        let database = format!(
            "projects/{}/databases/{}",
            settings.project_id, settings.database_id
        );
        // Its background reads are billed too, and counted in the metrics, but apart from the
        // requests' own counts.
        let overrides = mirror::CollectionMirror::start(
            db.client().get(),
            database.clone(),
            OVERRIDES_COLLECTION,
            steering::OVERRIDES_REFRESH,
            Arc::default(),
        );
        Ok(Self {
            database,
            overrides,
            db,
            counters: Arc::default(),
            queue: user_queue::UserQueue::default(),
            cache: DocumentCache::with_capacity(settings.cache_bytes),
            changes: DayChangeHub::default(),
        })
    }

    /// The operations sent to Firestore so far.
    pub fn operation_counts(&self) -> OperationCounts {
        self.counters.snapshot()
    }

    /// Whether the listener-fed copy of the overrides has caught up with Firestore since
    /// start: until then, each record reads its user's override.
    pub fn overrides_ready(&self) -> bool {
        self.overrides.ready()
    }
}

/// The port, each operation in the file of its kind: the record path in `record.rs`, the reads
/// in `reports.rs`.
#[async_trait]
impl UsageStore for FirestoreStore {
    async fn record(
        &self,
        request: RecordRequest,
        deadline: Deadline,
    ) -> Result<Recorded, StoreError> {
        let (user_id, date) = (request.user_id.clone(), request.window.date);
        self.changes
            .after_record(user_id, date, self.record_within(request, deadline))
            .await
    }

    async fn day_and_month(
        &self,
        user_id: &UserId,
        date: NaiveDate,
    ) -> Result<DayAndMonth, StoreError> {
        self.read_day_and_month(user_id, date).await
    }

    async fn months(&self, user_id: &UserId, limit: u32) -> Result<Vec<MonthlyUsage>, StoreError> {
        self.read_months(user_id, limit).await
    }

    async fn daily_report(
        &self,
        date: NaiveDate,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<DailyUsage>, StoreError> {
        self.read_daily_report(date, user_type, page).await
    }

    async fn monthly_report(
        &self,
        year: i32,
        month: u32,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<MonthlyUsage>, StoreError> {
        self.read_monthly_report(year, month, user_type, page).await
    }

    async fn daily_summary(&self, date: NaiveDate) -> Result<DailySummary, StoreError> {
        self.count_daily_summary(date).await
    }

    async fn monthly_summary(&self, year: i32, month: u32) -> Result<MonthlySummary, StoreError> {
        self.count_monthly_summary(year, month).await
    }

    async fn over_limit(
        &self,
        date: NaiveDate,
        user_type: UserType,
        limit: i64,
    ) -> Result<OverLimit, StoreError> {
        self.count_over_limit(date, user_type, limit).await
    }

    async fn limit_override(&self, user_id: &UserId) -> Result<Option<LimitOverride>, StoreError> {
        self.read_override(user_id, MAX_RPC_TIMEOUT)
            .await
            .map_err(AttemptError::into_store_error)
    }

    async fn change_limit_override(
        &self,
        change: &OverrideChange,
    ) -> Result<Option<LimitOverride>, StoreError> {
        self.apply_override_change(change).await
    }

    async fn limit_overrides(
        &self,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<LimitOverride>, StoreError> {
        self.read_overrides(after, limit).await
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.read_audit(query).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.probe().await
    }

    /// One listener on the day's document per watched day, shared by its watchers; this
    /// instance's own records are told at once, without the listener's round trip.
    fn day_changes(&self, user_id: &UserId, date: NaiveDate) -> DayChanges {
        self.changes.subscribe_fed(user_id, date, |notifier| {
            let listener = mirror::CollectionMirror::start_document(
                self.db.client().get(),
                self.database.clone(),
                (DAILY_COLLECTION, &DailyUsage::document_id(user_id, date)),
                DAY_WATCH_REFRESH,
                // Background reads, counted apart from the requests' own.
                Arc::default(),
                Box::new(move || notifier.notify()),
            );
            Some(Box::new(listener))
        })
    }
}
