//! The production store: Firestore, shared by every instance of the service.
//!
//! A record is one optimistic read-modify-write: one `BatchGetDocuments` of the day, the month
//! and the idempotency record, the pure decision, then one `Commit` whose every write carries
//! a precondition on the document as it was read (`updateTime`, or `exists: false`). If another
//! writer got there first the commit fails as a whole and the attempt is repeated with backoff.
//! That is 2 RPCs for an admitted request and 1 for a denied or replayed one, and contended
//! writers never wait on each other's locks.

mod cache;
mod codec;
mod counters;
mod documents;
mod emulator;
mod user_queue;

pub use codec::{DAY_FIELDS, MONTH_FIELDS};
pub use counters::{FirestoreCounters, OperationCounts};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use chrono::NaiveDate;
use firestore::gcloud_sdk::GoogleAuthMiddleware;
use firestore::gcloud_sdk::google::firestore::v1::firestore_client::FirestoreClient;
use firestore::gcloud_sdk::google::firestore::v1::precondition::ConditionType;
use firestore::gcloud_sdk::google::firestore::v1::structured_aggregation_query::{
    Aggregation, aggregation,
};
use firestore::gcloud_sdk::google::firestore::v1::structured_query::{
    CollectionSelector, CompositeFilter, Direction as OrderDirection, FieldFilter, FieldReference,
    Filter, Order, composite_filter, field_filter, filter,
};
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use firestore::gcloud_sdk::google::firestore::v1::{
    BatchGetDocumentsRequest, CommitRequest, Cursor, Document, DocumentMask, GetDocumentRequest,
    Precondition, RunAggregationQueryRequest, RunQueryRequest, StructuredAggregationQuery,
    StructuredQuery, Value, Write, WriteResult, batch_get_documents_response,
    run_aggregation_query_request, run_query_request, structured_aggregation_query, write,
};
use firestore::gcloud_sdk::google_cloud_auth::credentials::Credentials;
use firestore::gcloud_sdk::prost_types::Timestamp;
use firestore::gcloud_sdk::tonic::{self, Code, Status};
use firestore::{FirestoreDb, FirestoreDbOptions};

use self::cache::{CachedDocument, DocumentCache};
use super::queries::{self, DAILY_COLLECTION, Direction, HISTORY_COLLECTION, QueryShape};
use crate::usage::{
    DailySummary, DailyUsage, Deadline, IdempotencyKey, MonthlyUsage, Page, PageCursor,
    PageRequest, Plan, RecordRequest, Recorded, Snapshot, StoreError, StoredDay, UsageStore,
    UsageTotals, UserId, UserType, Writes,
};

/// The service's own collection: idempotency records, deleted by a TTL policy on `expiresAt`.
const IDEMPOTENCY: &str = "idempotency_keys";

/// The longest one call to Firestore may take.
const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// The least time worth giving a call: with less left, the call is not made.
const MIN_RPC_TIMEOUT: Duration = Duration::from_millis(5);

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
}

/// Why one attempt of a record did not finish.
#[derive(Debug)]
enum AttemptError {
    /// Another writer changed a document since it was read: nothing was written; try again.
    Contention,
    /// The request's time for writes ended before the commit could be sent: nothing was
    /// written.
    TooLate,
    /// Firestore could not answer now and nothing was written: try again.
    Transient(Status),
    /// The commit may or may not have been applied, and reading back could not tell:
    /// retrying could count twice.
    Ambiguous(String),
    /// Retrying will not help.
    Permanent(StoreError),
}

impl AttemptError {
    fn retryable(&self) -> bool {
        matches!(self, Self::Contention | Self::Transient(_))
    }

    fn into_store_error(self) -> StoreError {
        match self {
            Self::Contention => StoreError::Unavailable("contention: out of retries".to_owned()),
            Self::TooLate => StoreError::Unavailable(
                "the request's deadline came before its write could begin".to_owned(),
            ),
            Self::Transient(status) => StoreError::Unavailable(describe(&status)),
            Self::Ambiguous(detail) => StoreError::OutcomeUnknown(detail),
            Self::Permanent(error) => error,
        }
    }
}

impl From<codec::DecodeError> for AttemptError {
    fn from(error: codec::DecodeError) -> Self {
        Self::Permanent(error.into())
    }
}

impl From<codec::DecodeError> for StoreError {
    fn from(error: codec::DecodeError) -> Self {
        Self::Corrupt(error.to_string())
    }
}

/// Sorts a failed read (safe to repeat) by whether repeating can help.
fn read_failure(status: Status) -> AttemptError {
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Internal
        | Code::Unknown => AttemptError::Transient(status),
        _ => AttemptError::Permanent(permanent_error(&status)),
    }
}

/// What settling a lost commit found.
enum Settled {
    /// The commit was applied, once.
    Applied,
    /// Whether it was applied cannot be told, and why.
    Unknown(&'static str),
}

/// How a commit failed: a failed precondition or an abort wrote nothing; a lost answer may
/// have written everything.
enum CommitFailure {
    Refused(AttemptError),
    AnswerLost(Status),
}

fn commit_failure(status: Status) -> CommitFailure {
    match status.code() {
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => {
            CommitFailure::Refused(AttemptError::Contention)
        }
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Cancelled
        | Code::Internal
        | Code::Unknown => CommitFailure::AnswerLost(status),
        _ => CommitFailure::Refused(AttemptError::Permanent(permanent_error(&status))),
    }
}

/// Credentials or permission problems are an outage to clients (503), not a bug (500).
fn permanent_error(status: &Status) -> StoreError {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => StoreError::Unavailable(describe(status)),
        _ => StoreError::Internal(describe(status)),
    }
}

fn describe(status: &Status) -> String {
    format!("firestore {:?}: {}", status.code(), status.message())
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
        Ok(Self {
            database: format!(
                "projects/{}/databases/{}",
                settings.project_id, settings.database_id
            ),
            db,
            counters: Arc::default(),
            queue: user_queue::UserQueue::default(),
            cache: DocumentCache::with_capacity(settings.cache_bytes),
        })
    }

    /// The operations sent to Firestore so far.
    pub fn operation_counts(&self) -> OperationCounts {
        self.counters.snapshot()
    }

    fn client(&self) -> FirestoreClient<GoogleAuthMiddleware> {
        self.db.client().get()
    }

    fn document_name(&self, collection: &str, id: &str) -> String {
        format!("{}/documents/{collection}/{id}", self.database)
    }

    /// A call that may take at most `timeout`, so that a slow Firestore is answered in time.
    fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout.clamp(MIN_RPC_TIMEOUT, MAX_RPC_TIMEOUT));
        request
    }

    /// Reads the named documents at one consistent time, within `timeout`; missing ones are
    /// absent.
    async fn batch_get(
        &self,
        names: &[&str],
        timeout: Duration,
    ) -> Result<HashMap<String, Document>, Status> {
        self.batch_get_at(names, timeout)
            .await
            .map(|(found, _)| found)
    }

    /// [`Self::batch_get`], with the time the documents were read at.
    async fn batch_get_at(
        &self,
        names: &[&str],
        timeout: Duration,
    ) -> Result<(HashMap<String, Document>, Option<Timestamp>), Status> {
        self.counters.rpc();
        self.counters.reads(names.len() as u64);
        let request = BatchGetDocumentsRequest {
            database: self.database.clone(),
            documents: names.iter().map(|name| name.to_string()).collect(),
            ..Default::default()
        };
        let mut stream = self
            .client()
            .batch_get_documents(Self::request(request, timeout))
            .await?
            .into_inner();
        let (mut found, mut read_time) = (HashMap::new(), None);
        while let Some(response) = stream.message().await? {
            read_time = response.read_time.or(read_time);
            if let Some(batch_get_documents_response::Result::Found(document)) = response.result {
                found.insert(document.name.clone(), document);
            }
        }
        Ok((found, read_time))
    }

    /// Applies all `writes` or none, within `timeout`; the results are in the order of the
    /// writes.
    async fn commit(
        &self,
        writes: Vec<Write>,
        timeout: Duration,
    ) -> Result<Vec<WriteResult>, Status> {
        self.counters.commit_attempt();
        let count = writes.len() as u64;
        let request = CommitRequest {
            database: self.database.clone(),
            writes,
            ..Default::default()
        };
        let response = self
            .client()
            .commit(Self::request(request, timeout))
            .await?;
        self.counters.committed(count);
        Ok(response.into_inner().write_results)
    }

    /// One try of a record: straight from cached documents when this instance has them all,
    /// else from a fresh read.
    async fn attempt(
        &self,
        request: &RecordRequest,
        names: &RecordNames,
        deadline: Deadline,
    ) -> Result<Recorded, AttemptError> {
        if let Some(cached) = self.cached_snapshot(names).await {
            let plan = request
                .plan(&cached.snapshot)
                .map_err(|error| AttemptError::Permanent(error.into()))?;
            // A decision that writes nothing (a denial, a refusal) is only as true as the copy
            // it came from: it is taken again from a fresh read.
            if plan.writes.is_some() {
                self.counters.cached_commit();
                match self
                    .commit_plan(
                        request,
                        names,
                        &cached.snapshot,
                        plan,
                        &cached.conditions,
                        deadline,
                    )
                    .await
                {
                    Err(AttemptError::Contention) => self.counters.stale_cached_commit(),
                    answer => return answer,
                }
            }
        }
        let read = self
            .batch_get(&names.all(), deadline.time_left())
            .await
            .map_err(read_failure)?;
        let snapshot = names.snapshot(&read)?;
        let plan = request
            .plan(&snapshot)
            .map_err(|error| AttemptError::Permanent(error.into()))?;
        // A commit caches what it wrote, or forgets the copies: only a decision that writes
        // nothing keeps what was read.
        if plan.writes.is_none() {
            self.remember_read(names, &read, &snapshot).await;
            return Ok(plan.applied());
        }
        let conditions = Conditions::as_read(names, &read);
        self.commit_plan(request, names, &snapshot, plan, &conditions, deadline)
            .await
    }

    /// The record's documents from the cache, when it has every one the request reads. An
    /// idempotency record is taken not to exist: its write requires that.
    async fn cached_snapshot(&self, names: &RecordNames) -> Option<CachedRecord> {
        let day = self.cache.get(&names.day).await?;
        let CachedDocument::Day(stored_day) = &day.document else {
            return None;
        };
        let (month, month_time) = match &names.month {
            Some(name) => {
                let month = self.cache.get(name).await?;
                let CachedDocument::Month(stored_month) = &month.document else {
                    return None;
                };
                (Some(stored_month.clone()), Some(month.update_time))
            }
            None => (None, None),
        };
        Some(CachedRecord {
            snapshot: Snapshot {
                day: Some(stored_day.clone()),
                month,
                idempotency: None,
            },
            conditions: Conditions {
                day: ConditionType::UpdateTime(day.update_time),
                month: month_time.map(ConditionType::UpdateTime),
                idempotency: ConditionType::Exists(false),
            },
        })
    }

    async fn remember_read(
        &self,
        names: &RecordNames,
        read: &HashMap<String, Document>,
        snapshot: &Snapshot,
    ) {
        let update_time = |name: &str| read.get(name).and_then(|document| document.update_time);
        if let (Some(day), Some(update_time)) = (&snapshot.day, update_time(&names.day)) {
            self.cache
                .put_day(&names.day, update_time, day.clone())
                .await;
        }
        if let (Some(name), Some(month)) = (&names.month, &snapshot.month)
            && let Some(update_time) = update_time(name)
        {
            self.cache.put_month(name, update_time, month.clone()).await;
        }
    }

    /// Commits a plan's writes on `conditions`. Applied, the documents as written are cached;
    /// refused or lost, the record's cached documents are forgotten.
    async fn commit_plan(
        &self,
        request: &RecordRequest,
        names: &RecordNames,
        snapshot: &Snapshot,
        plan: Plan,
        conditions: &Conditions,
        deadline: Deadline,
    ) -> Result<Recorded, AttemptError> {
        let Some(writes) = &plan.writes else {
            return Ok(plan.applied());
        };
        if !deadline.may_write() {
            return Err(AttemptError::TooLate);
        }
        let written_day = StoredDay {
            usage: writes.day.clone(),
            reservations: writes.reservations.clone().unwrap_or_else(|| {
                snapshot
                    .day
                    .as_ref()
                    .map(|day| day.reservations.clone())
                    .unwrap_or_default()
            }),
        };
        let write_id = uuid::Uuid::new_v4().to_string();
        let commit = names.conditional_writes(request, writes, conditions, &write_id);
        // Half the time left, so that a lost answer can still be settled in the other half.
        match self.commit(commit.clone(), deadline.time_left() / 2).await {
            Ok(results) => {
                let mut update_times = results.into_iter().map(|result| result.update_time);
                if let Some(Some(update_time)) = update_times.next() {
                    self.cache
                        .put_day(&names.day, update_time, written_day)
                        .await;
                }
                if let (Some(name), Some(month), Some(Some(update_time))) =
                    (&names.month, &writes.month, update_times.next())
                {
                    self.cache.put_month(name, update_time, month.clone()).await;
                }
                Ok(plan.applied())
            }
            Err(status) => {
                self.cache.forget(&names.cached()).await;
                match commit_failure(status) {
                    CommitFailure::Refused(error) => Err(error),
                    CommitFailure::AnswerLost(status) => {
                        self.counters.lost_answer();
                        self.settle_lost_commit(names, commit, &write_id, status, deadline)
                            .await
                            .map(|()| plan.applied())
                    }
                }
            }
        }
    }

    /// A commit whose answer was lost wrote everything or nothing, and may still be on its way:
    /// a read cannot rule out that it lands later. So the very same commit, with the same
    /// preconditions, is sent again; at most one of the two can ever apply. Applied: done.
    /// Refused: the day changed since it was read, and reading it back tells whether this
    /// commit did it, for the day then carries this commit's `writeId`. Only when the request's
    /// time runs out, or another writer changed the day since, is the outcome unknown.
    async fn settle_lost_commit(
        &self,
        names: &RecordNames,
        commit: Vec<Write>,
        write_id: &str,
        status: Status,
        deadline: Deadline,
    ) -> Result<(), AttemptError> {
        let settled = tokio::time::timeout_at(
            deadline.work_until().into(),
            self.resend_or_read_back(names, commit, write_id, deadline),
        )
        .await;
        let why = match settled {
            Ok(Ok(Settled::Applied)) => return Ok(()),
            Ok(Ok(Settled::Unknown(why))) => why,
            Ok(Err(error)) => return Err(error),
            Err(_) => "no answer came before the deadline",
        };
        tracing::warn!(error = %describe(&status), why, "a commit's outcome is unknown");
        self.counters.unknown_outcome();
        Err(AttemptError::Ambiguous(format!(
            "{}; {why}",
            describe(&status)
        )))
    }

    /// The steps of [`Self::settle_lost_commit`], each call within the time left.
    async fn resend_or_read_back(
        &self,
        names: &RecordNames,
        commit: Vec<Write>,
        write_id: &str,
        deadline: Deadline,
    ) -> Result<Settled, AttemptError> {
        let time_left = || deadline.time_left() >= MIN_RPC_TIMEOUT;
        let resend = (|| async {
            match self.commit(commit.clone(), deadline.time_left()).await {
                Ok(_) => Ok(true),
                Err(status) => match commit_failure(status) {
                    CommitFailure::Refused(AttemptError::Contention) => Ok(false),
                    CommitFailure::Refused(error) => Err(Some(error)),
                    CommitFailure::AnswerLost(_) => Err(None),
                },
            }
        })
        .retry(Self::settle_backoff())
        .sleep(tokio::time::sleep)
        .when(|lost| lost.is_none() && time_left())
        .await;
        match resend {
            Ok(true) => return Ok(Settled::Applied),
            Ok(false) => {}
            Err(None) => return Ok(Settled::Unknown("it could not be sent again")),
            Err(Some(error)) => return Err(error),
        }
        let day_only = [names.day.as_str()];
        let read_back = (|| self.batch_get(&day_only, deadline.time_left()))
            .retry(Self::settle_backoff())
            .sleep(tokio::time::sleep)
            .when(|_| time_left())
            .await;
        let Ok(now) = read_back else {
            return Ok(Settled::Unknown("the day could not be read back"));
        };
        let written_by = now
            .get(&names.day)
            .and_then(|day| day.fields.get(codec::WRITE_ID_FIELD))
            .and_then(|value| match &value.value_type {
                Some(ValueType::StringValue(id)) => Some(id.as_str()),
                _ => None,
            });
        Ok(if written_by == Some(write_id) {
            Settled::Applied
        } else {
            Settled::Unknown("the day was changed by another writer since")
        })
    }

    fn settle_backoff() -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(200))
            .without_max_times()
    }

    /// One document by name; `None` when it does not exist.
    async fn get(&self, name: String) -> Result<Option<Document>, StoreError> {
        self.counters.rpc();
        self.counters.reads(1);
        let request = GetDocumentRequest {
            name,
            ..Default::default()
        };
        match self
            .client()
            .get_document(Self::request(request, MAX_RPC_TIMEOUT))
            .await
        {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(read_failure(status).into_store_error()),
        }
    }

    /// Counts the documents of a query and sums their `tokensUsed`, in Firestore.
    /// Counts at `read_time` when given, else now; returns the time it counted at.
    async fn totals(
        &self,
        shape: &QueryShape,
        equals: &[Value],
        read_time: Option<Timestamp>,
    ) -> Result<(UsageTotals, Timestamp), StoreError> {
        let field = FieldReference {
            field_path: "tokensUsed".to_owned(),
        };
        let aggregations = vec![
            Aggregation {
                alias: "users".to_owned(),
                operator: Some(aggregation::Operator::Count(aggregation::Count {
                    up_to: None,
                })),
            },
            Aggregation {
                alias: "tokens".to_owned(),
                operator: Some(aggregation::Operator::Sum(aggregation::Sum {
                    field: Some(field),
                })),
            },
        ];
        let request = RunAggregationQueryRequest {
            parent: format!("{}/documents", self.database),
            query_type: Some(
                run_aggregation_query_request::QueryType::StructuredAggregationQuery(
                    StructuredAggregationQuery {
                        aggregations,
                        query_type: Some(structured_aggregation_query::QueryType::StructuredQuery(
                            structured_query(shape, equals),
                        )),
                    },
                ),
            ),
            consistency_selector: read_time
                .map(run_aggregation_query_request::ConsistencySelector::ReadTime),
            ..Default::default()
        };
        self.counters.rpc();
        let read = async {
            let mut stream = self
                .client()
                .run_aggregation_query(Self::request(request, MAX_RPC_TIMEOUT))
                .await?
                .into_inner();
            let mut fields = HashMap::new();
            let mut counted_at = None;
            while let Some(response) = stream.message().await? {
                counted_at = response.read_time.or(counted_at);
                fields.extend(
                    response
                        .result
                        .map(|result| result.aggregate_fields)
                        .unwrap_or_default(),
                );
            }
            Ok::<_, Status>((fields, counted_at))
        };
        let (fields, counted_at) = read
            .await
            .map_err(|status| read_failure(status).into_store_error())?;
        let counted_at = counted_at.ok_or_else(|| {
            StoreError::Internal("an aggregation came without its read time".to_owned())
        })?;
        // An aggregation is billed one read per 1,000 index entries it scans, and at least one.
        self.counters.reads(1);
        let number = |alias: &str| match fields
            .get(alias)
            .and_then(|value| value.value_type.as_ref())
        {
            Some(ValueType::IntegerValue(number)) => Ok(*number),
            Some(ValueType::DoubleValue(number)) => Ok(*number as i64),
            _ => Err(StoreError::Internal(format!(
                "aggregation result {alias} is missing"
            ))),
        };
        let totals = UsageTotals {
            active_users: number("users")?,
            total_tokens: number("tokens")?,
        };
        Ok((totals, counted_at))
    }

    /// Runs a query of a declared shape with the given equality values, in its order.
    async fn query(
        &self,
        shape: &QueryShape,
        equals: &[Value],
        limit: u32,
        start_after: Option<&PageCursor>,
    ) -> Result<Vec<Document>, StoreError> {
        let mut query = structured_query(shape, equals);
        query.limit = Some(i32::try_from(limit).unwrap_or(i32::MAX));
        // The order is (figure desc, userId asc): resume after the last item's values.
        query.start_at = start_after.map(|after| Cursor {
            values: vec![
                codec::integer(after.figure),
                string_value(after.user_id.as_str()),
            ],
            before: false,
        });
        self.run_query(query, None).await
    }

    /// Runs one query, at `read_time` when given, else now.
    async fn run_query(
        &self,
        query: StructuredQuery,
        read_time: Option<Timestamp>,
    ) -> Result<Vec<Document>, StoreError> {
        self.counters.rpc();
        let request = RunQueryRequest {
            parent: format!("{}/documents", self.database),
            query_type: Some(run_query_request::QueryType::StructuredQuery(query)),
            consistency_selector: read_time.map(run_query_request::ConsistencySelector::ReadTime),
            ..Default::default()
        };
        let read = async {
            let mut stream = self
                .client()
                .run_query(Self::request(request, MAX_RPC_TIMEOUT))
                .await?
                .into_inner();
            let mut documents = Vec::new();
            while let Some(response) = stream.message().await? {
                documents.extend(response.document);
            }
            Ok::<_, Status>(documents)
        };
        let documents = read
            .await
            .map_err(|status| read_failure(status).into_store_error())?;
        // A query is billed one read per document, and at least one.
        self.counters.reads(documents.len().max(1) as u64);
        Ok(documents)
    }
}

fn decode_all<T>(
    documents: &[Document],
    decode: impl Fn(&Document) -> Result<T, codec::DecodeError>,
) -> Result<Vec<T>, StoreError> {
    documents
        .iter()
        .map(|document| decode(document).map_err(StoreError::from))
        .collect()
}

/// The documents one record touches.
struct RecordNames {
    day: String,
    /// Only when the request can change the month.
    month: Option<String>,
    idempotency: Option<String>,
}

impl RecordNames {
    fn all(&self) -> Vec<&str> {
        let mut names = vec![self.day.as_str()];
        names.extend(self.month.as_deref());
        names.extend(self.idempotency.as_deref());
        names
    }

    fn snapshot(&self, read: &HashMap<String, Document>) -> Result<Snapshot, codec::DecodeError> {
        Ok(Snapshot {
            day: read
                .get(&self.day)
                .map(codec::stored_day_from)
                .transpose()?,
            month: self
                .month
                .as_ref()
                .and_then(|name| read.get(name))
                .map(codec::month_from)
                .transpose()?,
            idempotency: self
                .idempotency
                .as_ref()
                .and_then(|name| read.get(name))
                .map(codec::idempotency_from)
                .transpose()?,
        })
    }

    /// The documents a record may have cached.
    fn cached(&self) -> Vec<&str> {
        let mut names = vec![self.day.as_str()];
        names.extend(self.month.as_deref());
        names
    }

    /// The plan's writes, day first, then the month, then the idempotency record, each on
    /// its condition; the day carries `write_id`.
    fn conditional_writes(
        &self,
        request: &RecordRequest,
        writes: &Writes,
        conditions: &Conditions,
        write_id: &str,
    ) -> Vec<Write> {
        // Reservations that changed are written whole (none left removes the field); others
        // stay as stored.
        let (mut day_fields, mut day_mask) = match &writes.reservations {
            Some(reservations) => (
                codec::stored_day_fields(&writes.day, reservations),
                codec::stored_day_mask(),
            ),
            None => (codec::day_fields(&writes.day), codec::DAY_FIELDS.to_vec()),
        };
        day_fields.insert(codec::WRITE_ID_FIELD.to_owned(), string_value(write_id));
        day_mask.push(codec::WRITE_ID_FIELD);
        let mut conditional = vec![conditional_update(
            &self.day,
            day_fields,
            &day_mask,
            conditions.day,
        )];
        if let (Some(name), Some(month), Some(condition)) =
            (&self.month, &writes.month, &conditions.month)
        {
            conditional.push(conditional_update(
                name,
                codec::month_fields(month),
                codec::MONTH_FIELDS,
                *condition,
            ));
        }
        if let (Some(name), Some(key), Some(record)) = (
            &self.idempotency,
            request.idempotency_key(),
            &writes.idempotency,
        ) {
            let fields =
                codec::idempotency_fields(&request.user_id, key.as_str(), record, request.now);
            conditional.push(conditional_update(
                name,
                fields,
                codec::IDEMPOTENCY_FIELDS,
                conditions.idempotency,
            ));
        }
        conditional
    }
}

/// What each write of a record requires of its document: to be as it was read, or as cached.
struct Conditions {
    day: ConditionType,
    /// `None` when the month is not part of the record.
    month: Option<ConditionType>,
    idempotency: ConditionType,
}

impl Conditions {
    fn as_read(names: &RecordNames, read: &HashMap<String, Document>) -> Self {
        Self {
            day: unchanged_since_read(read.get(&names.day)),
            month: names
                .month
                .as_ref()
                .map(|name| unchanged_since_read(read.get(name))),
            idempotency: unchanged_since_read(
                names.idempotency.as_ref().and_then(|name| read.get(name)),
            ),
        }
    }
}

/// A record's documents as cached, and the conditions that they are still so.
struct CachedRecord {
    snapshot: Snapshot,
    conditions: Conditions,
}

/// The document is still as read: at the same update time, or still missing.
pub fn unchanged_since_read(as_read: Option<&Document>) -> ConditionType {
    match as_read.and_then(|document| document.update_time) {
        Some(update_time) => ConditionType::UpdateTime(update_time),
        None if as_read.is_some() => ConditionType::Exists(true),
        None => ConditionType::Exists(false),
    }
}

/// An update of the fields this service owns, on `condition`. Fields written by others stay
/// as they are.
pub fn conditional_update(
    name: &str,
    fields: codec::Fields,
    owned_fields: &[&str],
    condition: ConditionType,
) -> Write {
    Write {
        operation: Some(write::Operation::Update(Document {
            name: name.to_owned(),
            fields,
            ..Default::default()
        })),
        update_mask: Some(DocumentMask {
            field_paths: owned_fields.iter().map(|field| field.to_string()).collect(),
        }),
        current_document: Some(Precondition {
            condition_type: Some(condition),
        }),
        ..Default::default()
    }
}

fn structured_query(shape: &QueryShape, equals: &[Value]) -> StructuredQuery {
    let above_zero = shape
        .positive
        .map(|path| field_condition(path, field_filter::Operator::GreaterThan, codec::integer(0)));
    let filters = shape
        .equality
        .iter()
        .zip(equals)
        .map(|(path, value)| field_condition(path, field_filter::Operator::Equal, value.clone()))
        .chain(above_zero)
        .collect();
    let field = |path: &str| {
        Some(FieldReference {
            field_path: path.to_owned(),
        })
    };
    let order_by = shape
        .order
        .iter()
        .map(|(path, direction)| Order {
            field: field(path),
            direction: match direction {
                Direction::Ascending => OrderDirection::Ascending,
                Direction::Descending => OrderDirection::Descending,
            } as i32,
        })
        .collect();
    StructuredQuery {
        from: vec![CollectionSelector {
            collection_id: shape.collection.to_owned(),
            all_descendants: false,
        }],
        r#where: all_of(filters),
        order_by,
        ..Default::default()
    }
}

/// One condition on a field.
fn field_condition(path: &str, op: field_filter::Operator, value: Value) -> Filter {
    Filter {
        filter_type: Some(filter::FilterType::FieldFilter(FieldFilter {
            field: Some(FieldReference {
                field_path: path.to_owned(),
            }),
            op: op as i32,
            value: Some(value),
        })),
    }
}

/// All of `filters`, as a query's `where`: none, the one, or their conjunction.
fn all_of(mut filters: Vec<Filter>) -> Option<Filter> {
    match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Filter {
            filter_type: Some(filter::FilterType::CompositeFilter(CompositeFilter {
                op: composite_filter::Operator::And as i32,
                filters,
            })),
        }),
    }
}

fn string_value(text: &str) -> Value {
    Value {
        value_type: Some(ValueType::StringValue(text.to_owned())),
    }
}

/// Document ids cannot hold `/` and keys may: the key is spelled in hex.
fn idempotency_document_id(user_id: &UserId, key: &IdempotencyKey) -> String {
    let hex: String = key.as_str().bytes().map(|b| format!("{b:02x}")).collect();
    format!("{user_id}_k{hex}")
}

#[async_trait]
impl UsageStore for FirestoreStore {
    async fn record(
        &self,
        request: RecordRequest,
        deadline: Deadline,
    ) -> Result<Recorded, StoreError> {
        let names = RecordNames {
            day: self.document_name(DAILY_COLLECTION, &request.day_id()),
            month: request
                .reads_month()
                .then(|| self.document_name(HISTORY_COLLECTION, &request.month_id())),
            idempotency: request.idempotency_key().map(|key| {
                self.document_name(IDEMPOTENCY, &idempotency_document_id(&request.user_id, key))
            }),
        };
        // No commit is sent after the time for writes; one under way ends by the deadline.
        let _turn = tokio::time::timeout_at(
            deadline.writes_until().into(),
            self.queue.turn(request.user_id.as_str()),
        )
        .await
        .map_err(|_| StoreError::Unavailable("too many requests queued for one user".to_owned()))?;
        // Contenders for one user back off briefly and at random, so that each round has a
        // winner rather than everyone colliding again.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(150))
            .with_factor(1.5)
            .with_jitter()
            .without_max_times();
        (|| self.attempt(&request, &names, deadline))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|error| error.retryable() && deadline.may_write())
            .notify(|error, _| match error {
                AttemptError::Contention => self.counters.contention_retry(),
                _ => self.counters.transient_retry(),
            })
            .await
            .map_err(AttemptError::into_store_error)
    }

    async fn day(
        &self,
        user_id: &UserId,
        date: NaiveDate,
    ) -> Result<Option<StoredDay>, StoreError> {
        let name = self.document_name(DAILY_COLLECTION, &DailyUsage::document_id(user_id, date));
        self.get(name)
            .await?
            .map(|document| codec::stored_day_from(&document))
            .transpose()
            .map_err(StoreError::from)
    }

    async fn months(&self, user_id: &UserId, limit: u32) -> Result<Vec<MonthlyUsage>, StoreError> {
        let equals = [string_value(user_id.as_str())];
        let documents = self
            .query(&queries::USER_HISTORY, &equals, limit, None)
            .await?;
        decode_all(&documents, codec::month_from)
    }

    async fn daily_report(
        &self,
        date: NaiveDate,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<DailyUsage>, StoreError> {
        let mut equals = vec![string_value(&date.format("%Y-%m-%d").to_string())];
        let shape = match user_type {
            Some(user_type) => {
                equals.push(string_value(user_type.as_str()));
                &queries::DAILY_REPORT_BY_TYPE
            }
            None => &queries::DAILY_REPORT,
        };
        let documents = self
            .query(shape, &equals, page.limit + 1, page.after.as_ref())
            .await?;
        let items = decode_all(&documents, codec::day_from)?;
        Ok(Page::from_overfetch(items, page.limit))
    }

    async fn monthly_report(
        &self,
        year: i32,
        month: u32,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<MonthlyUsage>, StoreError> {
        let mut equals = vec![
            codec::integer(i64::from(year)),
            codec::integer(i64::from(month)),
        ];
        let shape = match user_type {
            Some(user_type) => {
                equals.push(string_value(user_type.as_str()));
                &queries::MONTHLY_REPORT_BY_TYPE
            }
            None => &queries::MONTHLY_REPORT,
        };
        let documents = self
            .query(shape, &equals, page.limit + 1, page.after.as_ref())
            .await?;
        let items = decode_all(&documents, codec::month_from)?;
        Ok(Page::from_overfetch(items, page.limit))
    }

    /// One aggregation query per user type, each counting its own type; the first one's read
    /// time is every other one's, so that the answer is one instant even while users upgrade.
    async fn daily_summary(&self, date: NaiveDate) -> Result<DailySummary, StoreError> {
        let day = string_value(&date.format("%Y-%m-%d").to_string());
        let of_type = |user_type: UserType| [day.clone(), string_value(user_type.as_str())];
        let [first, rest @ ..] = UserType::ALL;
        let (first_totals, read_time) = self
            .totals(&queries::DAILY_SUMMARY_BY_TYPE, &of_type(first), None)
            .await?;
        let rest = futures_util::future::try_join_all(rest.map(|user_type| async move {
            let (totals, _) = self
                .totals(
                    &queries::DAILY_SUMMARY_BY_TYPE,
                    &of_type(user_type),
                    Some(read_time),
                )
                .await?;
            Ok::<_, StoreError>((user_type, totals))
        }))
        .await?;
        Ok(DailySummary::from_counts(
            std::iter::once((first, first_totals)).chain(rest),
        ))
    }

    /// Reads a document that never exists: an answer, even "not found", means reachable.
    async fn ping(&self) -> Result<(), StoreError> {
        self.get(self.document_name(DAILY_COLLECTION, "readiness-probe"))
            .await
            .map(drop)
    }
}
