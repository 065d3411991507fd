//! An admitted `POST /usage` on Firestore without the service: per record the two RPCs the
//! store sends when its cache does not hold the user, one `BatchGetDocuments` of the day and
//! month documents and one `Commit` that updates both on the condition that neither changed
//! since (`updateTime`, or `exists: false`), straight from the gRPC client with no HTTP, token
//! check or decision around them. The writes and their conditions are built as the store
//! builds them. Each of `--concurrency` tasks loops over users of its own, so no two records of
//! one user overlap, as the service's per-user queue ensures; a refused commit is read and
//! tried again.
//!
//! It writes thousands of documents, so it runs against an emulator only:
//!
//!   FIRESTORE_EMULATOR_HOST=127.0.0.1:8086 cargo run --release --example firestore_raw -- \
//!     --project demo-bench --concurrency 64 --users 1000 --seconds 10
//!
//! It prints one line, `records/s p50_ms p99_ms errors`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use clap::Parser;
use firestore::gcloud_sdk::google::firestore::v1::value::ValueType;
use firestore::gcloud_sdk::google::firestore::v1::{
    BatchGetDocumentsRequest, CommitRequest, Document, MapValue, Value, Write,
    batch_get_documents_response,
};
use firestore::gcloud_sdk::prost_types::Timestamp;
use firestore::gcloud_sdk::tonic::{self, Code, Status};
use firestore::{FirestoreDb, FirestoreDbOptions};
use token_limits::store::queries::{DAILY_COLLECTION, HISTORY_COLLECTION};
use token_limits::store::{
    FIRESTORE_DAY_FIELDS as DAY_FIELDS, FIRESTORE_MONTH_FIELDS as MONTH_FIELDS,
    firestore_conditional_update, firestore_unchanged_since_read,
};
use token_limits::usage::{DailyUsage, MonthlyUsage, UserId};

/// The service's longest single call: a stalled emulator shows as errors, not as a hang.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// The service's allocator, so that the two differ only in what the service adds.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Records `POST /usage {"tokens": 1}` as the Firestore store does, for a number of seconds.
#[derive(Parser)]
struct Args {
    /// The project whose documents are written; one of its own per run keeps runs apart.
    #[arg(long)]
    project: String,
    #[arg(long, default_value = "(default)")]
    database: String,
    /// Records in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
    /// Users `bench-1` to `bench-N`, the uids of the HTTP benchmark's tokens.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    users: u32,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
}

struct Bench {
    db: FirestoreDb,
    /// `projects/{project}/databases/{database}`.
    database: String,
}

/// What one task did.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
    last_error: Option<Status>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("FIRESTORE_EMULATOR_HOST").is_none_or(|host| host.is_empty()) {
        bail!("set FIRESTORE_EMULATOR_HOST: this writes thousands of documents");
    }
    if args.users < args.concurrency {
        bail!("--users must be at least --concurrency, so that every task has a user");
    }
    let options =
        FirestoreDbOptions::new(args.project.clone()).with_database_id(args.database.clone());
    let db = FirestoreDb::with_options(options)
        .await
        .context("cannot create the Firestore client")?;
    let bench = Arc::new(Bench {
        db,
        database: format!("projects/{}/databases/{}", args.project, args.database),
    });

    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for task in 0..args.concurrency {
        let users = (1..=args.users)
            .skip(task as usize)
            .step_by(args.concurrency as usize)
            .map(|user| UserId::parse(&format!("bench-{user}")))
            .collect::<Result<Vec<_>, _>>()?;
        tasks.push(tokio::spawn(Arc::clone(&bench).run(users, until)));
    }
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.context("a task failed")?;
        total.latencies.extend(tally.latencies);
        total.errors += tally.errors;
        total.last_error = tally.last_error.or(total.last_error);
    }
    let elapsed = started.elapsed();

    if let Some(status) = &total.last_error {
        eprintln!(
            "{} records failed, the last with {:?}: {}",
            total.errors,
            status.code(),
            status.message()
        );
    }
    if total.latencies.is_empty() {
        bail!("no record was written");
    }
    total.latencies.sort_unstable();
    println!(
        "{:.2} {:.2} {:.2} {}",
        total.latencies.len() as f64 / elapsed.as_secs_f64(),
        millis(percentile(&total.latencies, 0.50)),
        millis(percentile(&total.latencies, 0.99)),
        total.errors
    );
    Ok(())
}

/// The nearest-rank percentile of sorted, non-empty `latencies`.
fn percentile(latencies: &[Duration], quantile: f64) -> Duration {
    let rank = (latencies.len() as f64 * quantile).ceil() as usize;
    latencies[rank.clamp(1, latencies.len()) - 1]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

impl Bench {
    /// Records for `users` in turn until `until`; a record under way then still finishes.
    async fn run(self: Arc<Self>, users: Vec<UserId>, until: Instant) -> Tally {
        let mut tally = Tally::default();
        for user in users.iter().cycle() {
            if Instant::now() >= until {
                break;
            }
            let started = Instant::now();
            match self.record(user).await {
                Ok(()) => tally.latencies.push(started.elapsed()),
                Err(status) => {
                    tally.errors += 1;
                    tally.last_error = Some(status);
                }
            }
        }
        tally
    }

    /// One token for `user` today, tried again with the store's backoff while another writer
    /// gets there first.
    async fn record(&self, user: &UserId) -> Result<(), Status> {
        let now = Utc::now();
        let date = now.date_naive();
        let day = self.document_name(DAILY_COLLECTION, &DailyUsage::document_id(user, date));
        let month = self.document_name(
            HISTORY_COLLECTION,
            &MonthlyUsage::document_id(user, date.year(), date.month()),
        );
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(150))
            .with_factor(1.5)
            .with_jitter()
            .with_max_times(20);
        (|| self.attempt(user, now, &day, &month))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|status| {
                matches!(
                    status.code(),
                    Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists
                )
            })
            .await
    }

    async fn attempt(
        &self,
        user: &UserId,
        now: DateTime<Utc>,
        day: &str,
        month: &str,
    ) -> Result<(), Status> {
        let read = self.batch_get(&[day, month]).await?;
        let (day_read, month_read) = (read.get(day), read.get(month));
        let date = now.date_naive();
        let tokens_used = day_read
            .and_then(|d| integer_of(d, "tokensUsed"))
            .unwrap_or(0)
            + 1;
        let day_fields = HashMap::from([
            ("userId".to_owned(), string(user.as_str())),
            (
                "date".to_owned(),
                string(&date.format("%Y-%m-%d").to_string()),
            ),
            ("tokensUsed".to_owned(), integer(tokens_used)),
            ("tokenLimit".to_owned(), integer(1_000_000_000_000)),
            ("userType".to_owned(), string("trial")),
            ("lastUpdated".to_owned(), timestamp(now)),
            ("resetAt".to_owned(), timestamp(next_midnight(date))),
        ]);

        let mut daily_usage: HashMap<String, Value> = month_read
            .and_then(|m| match m.fields.get("dailyUsage")?.value_type.as_ref()? {
                ValueType::MapValue(map) => Some(map.fields.clone()),
                _ => None,
            })
            .unwrap_or_default();
        daily_usage.insert(format!("{:02}", date.day()), integer(tokens_used));
        let days: Vec<(&String, i64)> = daily_usage
            .iter()
            .map(|(day, tokens)| match tokens.value_type {
                Some(ValueType::IntegerValue(tokens)) => (day, tokens),
                _ => (day, 0),
            })
            .collect();
        let total: i64 = days.iter().map(|(_, tokens)| tokens).sum();
        let (peak_date, peak_tokens) = days
            .iter()
            .max_by_key(|(day, tokens)| (*tokens, std::cmp::Reverse(*day)))
            .map_or((String::new(), 0), |(day, tokens)| {
                ((*day).clone(), *tokens)
            });
        let average = total as f64 / days.len() as f64;
        let created_at = month_read
            .and_then(|m| m.fields.get("createdAt").cloned())
            .unwrap_or_else(|| timestamp(now));
        let month_fields = HashMap::from([
            ("userId".to_owned(), string(user.as_str())),
            ("year".to_owned(), integer(i64::from(date.year()))),
            ("month".to_owned(), integer(i64::from(date.month()))),
            (
                "dailyUsage".to_owned(),
                value(ValueType::MapValue(MapValue {
                    fields: daily_usage,
                })),
            ),
            ("totalMonthlyTokens".to_owned(), integer(total)),
            (
                "averageDailyUsage".to_owned(),
                value(ValueType::DoubleValue(average)),
            ),
            ("peakUsageDate".to_owned(), string(&peak_date)),
            ("peakUsageTokens".to_owned(), integer(peak_tokens)),
            ("userType".to_owned(), string("trial")),
            ("createdAt".to_owned(), created_at),
            ("updatedAt".to_owned(), timestamp(now)),
        ]);

        self.commit(vec![
            firestore_conditional_update(
                day,
                day_fields,
                DAY_FIELDS,
                firestore_unchanged_since_read(day_read),
            ),
            firestore_conditional_update(
                month,
                month_fields,
                MONTH_FIELDS,
                firestore_unchanged_since_read(month_read),
            ),
        ])
        .await
    }

    fn document_name(&self, collection: &str, id: &str) -> String {
        format!("{}/documents/{collection}/{id}", self.database)
    }

    fn request<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(RPC_TIMEOUT);
        request
    }

    /// The named documents that exist, by name.
    async fn batch_get(&self, names: &[&str]) -> Result<HashMap<String, Document>, Status> {
        let request = BatchGetDocumentsRequest {
            database: self.database.clone(),
            documents: names.iter().map(|name| name.to_string()).collect(),
            ..Default::default()
        };
        let mut stream = self
            .db
            .client()
            .get()
            .batch_get_documents(Self::request(request))
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
        let request = CommitRequest {
            database: self.database.clone(),
            writes,
            ..Default::default()
        };
        self.db
            .client()
            .get()
            .commit(Self::request(request))
            .await
            .map(drop)
    }
}

fn next_midnight(date: NaiveDate) -> DateTime<Utc> {
    date.succ_opt()
        .unwrap_or(date)
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default()
        .and_utc()
}

fn integer_of(document: &Document, field: &str) -> Option<i64> {
    match document.fields.get(field)?.value_type {
        Some(ValueType::IntegerValue(number)) => Some(number),
        _ => None,
    }
}

fn value(value_type: ValueType) -> Value {
    Value {
        value_type: Some(value_type),
    }
}

fn string(text: &str) -> Value {
    value(ValueType::StringValue(text.to_owned()))
}

fn integer(number: i64) -> Value {
    value(ValueType::IntegerValue(number))
}

fn timestamp(at: DateTime<Utc>) -> Value {
    value(ValueType::TimestampValue(Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }))
}
