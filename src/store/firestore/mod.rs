//! The production store: Firestore, shared by every instance of the service.
//!
//! A record is one optimistic read-modify-write: one `BatchGetDocuments` of the day, the month
//! and the idempotency record, the pure decision, then one `Commit` whose every write carries
//! a precondition on the document as it was read (`updateTime`, or `exists: false`). If another
//! writer got there first the commit fails as a whole and the attempt is repeated with backoff.
//! That is 2 RPCs for an admitted request and 1 for a denied or replayed one, and contended
//! writers never wait on each other's locks.

mod codec;
mod counters;
mod emulator;
mod user_queue;

pub use counters::{FirestoreCounters, OperationCounts};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    StructuredQuery, Value, Write, batch_get_documents_response, run_aggregation_query_request,
    run_query_request, structured_aggregation_query, write,
};
use firestore::gcloud_sdk::google_cloud_auth::credentials::Credentials;
use firestore::gcloud_sdk::tonic::{self, Code, Status};
use firestore::{FirestoreDb, FirestoreDbOptions};

use super::queries::{self, DAILY_COLLECTION, Direction, HISTORY_COLLECTION, QueryShape};
use super::{
    DailySummary, Page, PageCursor, PageRequest, RecordOutcome, RecordRequest, StoreError,
    UsageStore, UsageTotals,
};
use crate::usage::{
    DailyUsage, Decision, DecisionInput, IdempotencyCheck, IdempotencyKey, IdempotencyRecord,
    MonthlyUsage, UserId, UserType, decide,
};

/// The service's own collection: idempotency records, deleted by a TTL policy on `expiresAt`.
const IDEMPOTENCY: &str = "idempotency_keys";

/// The longest one call to Firestore may take.
const MAX_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the store connects, and how long one request may keep trying.
#[derive(Debug, Clone)]
pub struct FirestoreSettings {
    pub project_id: String,
    pub database_id: String,
    /// `host:port` of a Firestore emulator; `None` means the real service with Application
    /// Default Credentials.
    pub emulator_host: Option<String>,
    /// The longest a record may keep retrying before it answers 503.
    pub deadline: Duration,
}

pub struct FirestoreStore {
    db: FirestoreDb,
    /// `projects/{project}/databases/{database}`.
    database: String,
    deadline: Duration,
    counters: Arc<FirestoreCounters>,
    queue: user_queue::UserQueue,
}

/// Why one attempt of a record did not finish.
#[derive(Debug)]
enum AttemptError {
    /// Another writer changed a document since it was read: nothing was written; try again.
    Contention,
    /// Firestore could not answer now and nothing was written: try again.
    Transient(Status),
    /// The commit may or may not have been applied: retrying could count twice.
    Ambiguous(Status),
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
            Self::Transient(status) => StoreError::Unavailable(describe(&status)),
            Self::Ambiguous(status) => {
                StoreError::Unavailable(format!("commit outcome unknown: {}", describe(&status)))
            }
            Self::Permanent(error) => error,
        }
    }
}

impl From<codec::DecodeError> for AttemptError {
    fn from(error: codec::DecodeError) -> Self {
        Self::Permanent(StoreError::Internal(error.to_string()))
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

/// Sorts a failed commit: a failed precondition or an abort wrote nothing; a lost answer may
/// have written everything.
fn commit_failure(status: Status) -> AttemptError {
    match status.code() {
        Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => AttemptError::Contention,
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Cancelled
        | Code::Internal
        | Code::Unknown => AttemptError::Ambiguous(status),
        _ => AttemptError::Permanent(permanent_error(&status)),
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
            deadline: settings.deadline,
            counters: Arc::default(),
            queue: user_queue::UserQueue::default(),
        })
    }

    fn client(&self) -> FirestoreClient<GoogleAuthMiddleware> {
        self.db.client().get()
    }

    fn document_name(&self, collection: &str, id: &str) -> String {
        format!("{}/documents/{collection}/{id}", self.database)
    }

    /// A request with its own timeout, so that a slow Firestore answers 503 in time.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.rpc_timeout());
        request
    }

    /// Short enough that an attempt begun just before the deadline (a read and a commit)
    /// still ends within the request timeout, of which the deadline is half: a commit is
    /// never cut off by the request timeout, where its outcome would be unknown.
    fn rpc_timeout(&self) -> Duration {
        (self.deadline / 2).min(MAX_RPC_TIMEOUT)
    }

    /// Reads the named documents at one consistent time; missing ones are absent.
    async fn batch_get(&self, names: &[&str]) -> Result<HashMap<String, Document>, Status> {
        self.counters.rpc();
        self.counters.reads(names.len() as u64);
        let request = BatchGetDocumentsRequest {
            database: self.database.clone(),
            documents: names.iter().map(|name| name.to_string()).collect(),
            ..Default::default()
        };
        let mut stream = self
            .client()
            .batch_get_documents(self.request(request))
            .await?
            .into_inner();
        let mut found = HashMap::new();
        while let Some(response) = stream.message().await? {
            if let Some(batch_get_documents_response::Result::Found(document)) = response.result {
                found.insert(document.name.clone(), document);
            }
        }
        Ok(found)
    }

    async fn commit(&self, writes: Vec<Write>) -> Result<(), Status> {
        self.counters.commit_attempt();
        let count = writes.len() as u64;
        let request = CommitRequest {
            database: self.database.clone(),
            writes,
            ..Default::default()
        };
        self.client().commit(self.request(request)).await?;
        self.counters.committed(count);
        Ok(())
    }

    async fn attempt(
        &self,
        request: &RecordRequest,
        names: &RecordNames,
    ) -> Result<RecordOutcome, AttemptError> {
        let mut wanted = vec![names.day.as_str(), names.month.as_str()];
        wanted.extend(names.idempotency.as_deref());
        let snapshot = self.batch_get(&wanted).await.map_err(read_failure)?;

        let stored_key = names
            .idempotency
            .as_ref()
            .and_then(|name| snapshot.get(name));
        if let Some((_, fingerprint)) = &request.idempotency {
            let stored = stored_key.map(codec::idempotency_from).transpose()?;
            match IdempotencyCheck::of(stored.as_ref(), fingerprint, request.now) {
                IdempotencyCheck::Replay(day) => return Ok(RecordOutcome::Replayed(day)),
                IdempotencyCheck::Reused => return Ok(RecordOutcome::KeyReused),
                IdempotencyCheck::New => {}
            }
        }

        let day_document = snapshot.get(&names.day);
        let month_document = snapshot.get(&names.month);
        let current_day = day_document.map(codec::day_from).transpose()?;
        let current_month = month_document.map(codec::month_from).transpose()?;
        let input = DecisionInput {
            user_id: &request.user_id,
            tokens: request.tokens,
            user_type: request.user_type,
            window: &request.window,
            limits: &request.limits,
            now: request.now,
        };
        let (day, month) = match decide(current_day.as_ref(), current_month.as_ref(), input) {
            Decision::Denied { day } => return Ok(RecordOutcome::Denied(day)),
            Decision::Admitted { day, month } => (day, month),
        };

        let mut writes = vec![
            update(
                &names.day,
                codec::day_fields(&day),
                codec::DAY_FIELDS,
                day_document,
            ),
            update(
                &names.month,
                codec::month_fields(&month),
                codec::MONTH_FIELDS,
                month_document,
            ),
        ];
        if let (Some(name), Some((key, fingerprint))) = (&names.idempotency, &request.idempotency) {
            let record = IdempotencyRecord {
                fingerprint: fingerprint.clone(),
                response: day.clone(),
                expires_at: request.now + IdempotencyKey::LIFETIME,
            };
            let fields =
                codec::idempotency_fields(&request.user_id, key.as_str(), &record, request.now);
            writes.push(update(name, fields, codec::IDEMPOTENCY_FIELDS, stored_key));
        }
        self.commit(writes).await.map_err(commit_failure)?;
        Ok(RecordOutcome::Admitted(day))
    }

    /// One document by name; `None` when it does not exist.
    async fn get(&self, name: String) -> Result<Option<Document>, StoreError> {
        self.counters.rpc();
        self.counters.reads(1);
        let request = GetDocumentRequest {
            name,
            ..Default::default()
        };
        match self.client().get_document(self.request(request)).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(read_failure(status).into_store_error()),
        }
    }

    /// Counts the documents of a query and sums their `tokensUsed`, in Firestore.
    async fn totals(
        &self,
        shape: &QueryShape,
        equals: &[Value],
    ) -> Result<UsageTotals, StoreError> {
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
            ..Default::default()
        };
        self.counters.rpc();
        let read = async {
            let mut stream = self
                .client()
                .run_aggregation_query(self.request(request))
                .await?
                .into_inner();
            let mut fields = HashMap::new();
            while let Some(response) = stream.message().await? {
                fields.extend(
                    response
                        .result
                        .map(|result| result.aggregate_fields)
                        .unwrap_or_default(),
                );
            }
            Ok::<_, Status>(fields)
        };
        let fields = read
            .await
            .map_err(|status| read_failure(status).into_store_error())?;
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
        Ok(UsageTotals {
            active_users: number("users")?,
            total_tokens: number("tokens")?,
        })
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
        self.counters.rpc();
        let request = RunQueryRequest {
            parent: format!("{}/documents", self.database),
            query_type: Some(run_query_request::QueryType::StructuredQuery(query)),
            ..Default::default()
        };
        let read = async {
            let mut stream = self
                .client()
                .run_query(self.request(request))
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
        .map(|document| decode(document).map_err(|e| StoreError::Internal(e.to_string())))
        .collect()
}

/// The documents one record touches.
struct RecordNames {
    day: String,
    month: String,
    idempotency: Option<String>,
}

/// An update of the fields this service owns, on the condition that the document is still as
/// it was read. Fields written by others stay as they are.
fn update(
    name: &str,
    fields: codec::Fields,
    owned_fields: &[&str],
    as_read: Option<&Document>,
) -> Write {
    let condition = match as_read.and_then(|document| document.update_time) {
        Some(update_time) => ConditionType::UpdateTime(update_time),
        None if as_read.is_some() => ConditionType::Exists(true),
        None => ConditionType::Exists(false),
    };
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
    let field = |path: &str| {
        Some(FieldReference {
            field_path: path.to_owned(),
        })
    };
    let mut filters: Vec<Filter> = shape
        .equality
        .iter()
        .zip(equals)
        .map(|(path, value)| Filter {
            filter_type: Some(filter::FilterType::FieldFilter(FieldFilter {
                field: field(path),
                op: field_filter::Operator::Equal as i32,
                value: Some(value.clone()),
            })),
        })
        .collect();
    let r#where = match filters.len() {
        0 => None,
        1 => filters.pop(),
        _ => Some(Filter {
            filter_type: Some(filter::FilterType::CompositeFilter(CompositeFilter {
                op: composite_filter::Operator::And as i32,
                filters,
            })),
        }),
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
        r#where,
        order_by,
        ..Default::default()
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
    async fn record(&self, request: RecordRequest) -> Result<RecordOutcome, StoreError> {
        let window = &request.window;
        let names = RecordNames {
            day: self.document_name(
                DAILY_COLLECTION,
                &DailyUsage::document_id(&request.user_id, window.date),
            ),
            month: self.document_name(
                HISTORY_COLLECTION,
                &MonthlyUsage::document_id(&request.user_id, window.year(), window.month()),
            ),
            idempotency: request.idempotency.as_ref().map(|(key, _)| {
                self.document_name(IDEMPOTENCY, &idempotency_document_id(&request.user_id, key))
            }),
        };
        // No attempt starts after the deadline; one under way may finish (see `rpc_timeout`).
        let deadline = Instant::now() + self.deadline;
        let _turn =
            tokio::time::timeout_at(deadline.into(), self.queue.turn(request.user_id.as_str()))
                .await
                .map_err(|_| {
                    StoreError::Unavailable("too many requests queued for one user".to_owned())
                })?;
        // Contenders for one user back off briefly and at random, so that each round has a
        // winner rather than everyone colliding again.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(150))
            .with_factor(1.5)
            .with_jitter()
            .without_max_times();
        (|| self.attempt(&request, &names))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|error| error.retryable() && Instant::now() < deadline)
            .notify(|error, _| match error {
                AttemptError::Contention => self.counters.contention_retry(),
                _ => self.counters.transient_retry(),
            })
            .await
            .map_err(|error| {
                if let AttemptError::Ambiguous(status) = &error {
                    tracing::warn!(error = %describe(status), "a commit's outcome is unknown");
                }
                error.into_store_error()
            })
    }

    async fn day(
        &self,
        user_id: &UserId,
        date: NaiveDate,
    ) -> Result<Option<DailyUsage>, StoreError> {
        let name = self.document_name(DAILY_COLLECTION, &DailyUsage::document_id(user_id, date));
        self.get(name)
            .await?
            .map(|document| codec::day_from(&document))
            .transpose()
            .map_err(|e| StoreError::Internal(e.to_string()))
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

    /// Two aggregation queries: all users, and the subscribed ones; the rest are trial, as
    /// an unknown stored user type reads everywhere else.
    async fn daily_summary(&self, date: NaiveDate) -> Result<DailySummary, StoreError> {
        let day = string_value(&date.format("%Y-%m-%d").to_string());
        let subscribed_day = [day.clone(), string_value(UserType::Subscribed.as_str())];
        let (all, subscribed) = tokio::try_join!(
            self.totals(&queries::DAILY_SUMMARY, std::slice::from_ref(&day)),
            self.totals(&queries::DAILY_SUMMARY_BY_TYPE, &subscribed_day),
        )?;
        Ok(DailySummary {
            trial: UsageTotals {
                active_users: all.active_users - subscribed.active_users,
                total_tokens: all.total_tokens - subscribed.total_tokens,
            },
            subscribed,
        })
    }

    fn operation_counts(&self) -> Option<OperationCounts> {
        Some(self.counters.snapshot())
    }

    /// Reads a document that never exists: an answer, even "not found", means reachable.
    async fn ping(&self) -> Result<(), StoreError> {
        self.get(self.document_name(DAILY_COLLECTION, "readiness-probe"))
            .await
            .map(drop)
    }
}
