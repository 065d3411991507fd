//! `cargo bench --bench firestore_load`: what one usage record costs in Firestore operations,
//! and how fast the stores answer alone, under load and under contention. Prints Markdown
//! tables for the README and the release notes.
//!
//! Firestore figures come from the local emulator, a JVM sharing this machine's cores with the
//! bench: operation counts are exact, latencies and rates are orders of magnitude only.

#[path = "../tests/support/emulator.rs"]
mod emulator;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use token_limits::store::{FirestoreSettings, FirestoreStore, OperationCounts, SqliteStore};
use token_limits::usage::{
    Action, DayWindow, Deadline, Fingerprint, IdempotencyKey, Limits, RecordOutcome, RecordRequest,
    ReservationId, StoreError, Tokens, UsageStore, UserId, UserType,
};
use tokio::task::JoinSet;

use emulator::Emulator;

/// The service's default limits.
const LIMITS: Limits = Limits::daily(10_000, 100_000);

/// The production request timeout, `REQUEST_TIMEOUT_SECS`'s default.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The service's default document cache.
const CACHE_BYTES: u64 = 32 << 20;

/// Tokens of one ordinary record: small enough that no load scenario reaches the limit.
const SMALL_RECORD: i64 = 10;

/// Scenario 1: requests of each kind, over a few users so that most update existing days.
const COST_REQUESTS: usize = 200;
const COST_USERS: usize = 20;

/// Scenario 2: records one after another, each for a user of its own.
const SEQUENTIAL_RECORDS: usize = 500;

/// No scenario that runs a series of records starts one after this long.
const TIME_CAP: Duration = Duration::from_secs(60);

/// Scenario 3: records spread over many users by concurrent workers.
const LOAD: Load = Load {
    workers: 32,
    users: 1_000,
    records: 5_000,
};

/// Scenario 6: passes over the users after the first, each record from cached documents.
const WARM_PASSES: usize = 4;

/// Instances of the service sharing one Firestore in scenarios 4, 5 and 6.
const INSTANCES: usize = 3;

/// Scenario 4: bursts of records for one user over all instances, none reaching the limit.
const CONTENTION_ROUNDS: usize = 20;
const CONTENTION_RECORDS: usize = 24;
const CONTENTION_TOKENS: i64 = 100;

/// Scenario 5: a burst for one user that the trial limit cuts short.
const PRESSURE_ROUNDS: usize = 5;
const PRESSURE_RECORDS: usize = 60;
const PRESSURE_TOKENS: i64 = 300;
/// The most records of `PRESSURE_TOKENS` the trial limit lets through.
const PRESSURE_MOST_ADMITTED: usize = (LIMITS.trial.daily_limit / PRESSURE_TOKENS) as usize;

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# token-limits load figures\n");
    println!(
        "{cores} cores. Firestore figures come from the local Firestore emulator, a JVM sharing \
         these cores with the bench: operation counts are exact, latencies and rates are \
         orders of magnitude, not production latencies (production adds a network round trip \
         per RPC). SQLite uses a temporary file.\n"
    );

    let emulator = Emulator::start_on(emulator::free_port()).await;
    let moment = Moment::now();
    warm_up(&emulator, moment).await;

    let sqlite_dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let sqlite: Arc<dyn UsageStore> = Arc::new(open_sqlite(&sqlite_dir.path().join("bench.db")));

    let mut sound = cost_per_request(&emulator, moment).await;
    sequential_latency(&emulator, &sqlite, moment).await;
    throughput(&emulator, &sqlite, moment).await;
    document_cache(&emulator, moment).await;
    sound &= contention(&emulator, moment).await;
    sound &= limit_pressure(&emulator, moment).await;

    if sound {
        ExitCode::SUCCESS
    } else {
        eprintln!("a consistency check failed: see the ✗ above");
        ExitCode::FAILURE
    }
}

/// The time of every record of the run, so that all of them fall in one day window even if the
/// run straddles midnight, and the day read back is the one written.
#[derive(Clone, Copy)]
struct Moment {
    now: DateTime<Utc>,
    window: DayWindow,
}

impl Moment {
    fn now() -> Self {
        let now = Utc::now();
        Self {
            now,
            window: DayWindow::containing(now, Tz::UTC),
        }
    }

    /// A record from a trial user, as `POST /usage` makes it.
    fn request(&self, user: &UserId, tokens: i64) -> RecordRequest {
        RecordRequest {
            user_id: user.clone(),
            action: Action::Spend {
                tokens: Self::tokens(tokens),
                user_type: UserType::Trial,
            },
            window: self.window,
            limits: LIMITS,
            commit_grace: chrono::Duration::zero(),
            now: self.now,
            idempotency: None,
            audit_actor: None,
            thresholds: Default::default(),
        }
    }

    fn tokens(tokens: i64) -> Tokens {
        Tokens::bounded(tokens, i64::MAX).expect("a positive token count")
    }

    /// A reservation of `tokens` for ten minutes, on the run's day.
    fn reserve(&self, user: &UserId, tokens: i64) -> RecordRequest {
        RecordRequest {
            action: Action::Reserve {
                id: ReservationId::new(self.window.date, self.now + chrono::Duration::minutes(10)),
                tokens: Self::tokens(tokens),
                user_type: UserType::Trial,
            },
            ..self.request(user, tokens)
        }
    }

    fn settle(&self, user: &UserId, action: Action) -> RecordRequest {
        RecordRequest {
            action,
            ..self.request(user, 1)
        }
    }

    fn keyed_request(&self, user: &UserId, tokens: i64, key: &str) -> RecordRequest {
        let key = IdempotencyKey::parse(key).expect("a valid idempotency key");
        RecordRequest {
            idempotency: Some((key, Fingerprint::of(user, Self::tokens(tokens), None))),
            ..self.request(user, tokens)
        }
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("a valid user id")
}

fn open_sqlite(path: &Path) -> SqliteStore {
    SqliteStore::open(path).expect("cannot open the SQLite file")
}

/// A new instance's store: a client of its own, as each instance of the service has. The client
/// connects lazily: a ping opens the connection, so that no timed record pays for it.
async fn connect(emulator: &Emulator, project: &str) -> Arc<FirestoreStore> {
    connect_with_cache(emulator, project, CACHE_BYTES).await
}

async fn connect_with_cache(
    emulator: &Emulator,
    project: &str,
    cache_bytes: u64,
) -> Arc<FirestoreStore> {
    let store = FirestoreStore::connect(FirestoreSettings {
        project_id: project.to_owned(),
        database_id: "(default)".to_owned(),
        emulator_host: Some(emulator.host()),
        cache_bytes,
    })
    .await
    .expect("cannot connect to the emulator");
    store.ping().await.expect("the emulator does not answer");
    Arc::new(store)
}

async fn instances(emulator: &Emulator, project: &str) -> Vec<Arc<FirestoreStore>> {
    let mut stores = Vec::with_capacity(INSTANCES);
    for _ in 0..INSTANCES {
        stores.push(connect(emulator, project).await);
    }
    stores
}

/// The operations one instance has sent so far.
fn counts(store: &FirestoreStore) -> OperationCounts {
    store.operation_counts()
}

/// The operations of all instances together.
fn total_counts(stores: &[Arc<FirestoreStore>]) -> OperationCounts {
    stores
        .iter()
        .map(|store| counts(store))
        .fold(OperationCounts::default(), |sum, counts| sum + counts)
}

/// The emulator's JVM compiles its hot paths during the first few hundred calls: make them
/// before anything is timed, on every path the scenarios take (many users, contention).
async fn warm_up(emulator: &Emulator, moment: Moment) {
    let project = emulator::unique_project("bench-warm-up");
    let stores = instances(emulator, &project).await;
    let warm_load = Load {
        workers: 16,
        users: 100,
        records: 400,
    };
    concurrent(
        stores[0].clone(),
        moment,
        "warm-load",
        warm_load,
        Work::Record,
    )
    .await;
    for round in 0..3 {
        let user = user(&format!("warm-contended-{round}"));
        burst(
            &stores,
            moment,
            &user,
            CONTENTION_RECORDS,
            CONTENTION_TOKENS,
        )
        .await;
    }
    emulator.clear(&project).await;
}

type Answer = Result<RecordOutcome, StoreError>;

/// One record's latency and answer.
type Sample = (Duration, Answer);

/// A streamed reply's pair: reserve, then commit the same tokens. The sample is the pair's
/// time and the commit's answer.
async fn timed_pair(store: &dyn UsageStore, moment: &Moment, user: &UserId) -> Sample {
    let started = Instant::now();
    let (_, reserved) = timed_record(store, moment.reserve(user, SMALL_RECORD)).await;
    let id = match reserved {
        Ok(RecordOutcome::Reserved(reservation, _)) => reservation.id,
        other => return (started.elapsed(), other),
    };
    let commit = Action::Commit {
        id,
        tokens: Moment::tokens(SMALL_RECORD),
    };
    let (_, committed) = timed_record(store, moment.settle(user, commit)).await;
    (started.elapsed(), committed)
}

async fn timed_record(store: &dyn UsageStore, request: RecordRequest) -> Sample {
    let started = Instant::now();
    let answer = store
        .record(request, Deadline::from_now(REQUEST_TIMEOUT))
        .await;
    (started.elapsed(), answer.map(|recorded| recorded.outcome))
}

/// The answers of a run: the definitive ones, and errors by message, to tell why an answer
/// was not definitive.
#[derive(Default)]
struct Tally {
    admitted: usize,
    denied: usize,
    errors: BTreeMap<String, usize>,
}

impl Tally {
    fn of(samples: &[Sample]) -> Self {
        let mut tally = Self::default();
        for (_, answer) in samples {
            match answer {
                Ok(RecordOutcome::Admitted(_)) => tally.admitted += 1,
                Ok(RecordOutcome::Denied(_)) => tally.denied += 1,
                Ok(_) => {}
                Err(error) => *tally.errors.entry(error.to_string()).or_default() += 1,
            }
        }
        tally
    }

    fn failed(&self) -> usize {
        self.errors.values().sum()
    }
}

/// Latencies of a run, sorted.
struct Latencies(Vec<Duration>);

impl Latencies {
    fn of(samples: &[Sample]) -> Self {
        let mut durations: Vec<Duration> = samples.iter().map(|(took, _)| *took).collect();
        durations.sort();
        Self(durations)
    }

    /// Nearest rank: the smallest latency that `percent` % of the records did not exceed.
    fn percentile(&self, percent: f64) -> Duration {
        let rank = (percent / 100.0 * self.0.len() as f64).ceil() as usize;
        self.0
            .get(rank.clamp(1, self.0.len().max(1)) - 1)
            .copied()
            .unwrap_or_default()
    }

    fn mean(&self) -> Duration {
        let total: Duration = self.0.iter().sum();
        total / self.0.len().max(1) as u32
    }

    fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

/// A run's samples and how long it took from first call to last answer.
struct Run {
    samples: Vec<Sample>,
    elapsed: Duration,
}

impl Run {
    fn latencies(&self) -> Latencies {
        Latencies::of(&self.samples)
    }

    fn tally(&self) -> Tally {
        Tally::of(&self.samples)
    }

    fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Operation counts per record, as table cells: RPCs, reads, writes, commits, retries.
fn per_record(counts: OperationCounts, records: usize) -> [String; 5] {
    let average = |count: u64| format!("{:.2}", count as f64 / records.max(1) as f64);
    [
        average(counts.rpcs),
        average(counts.document_reads),
        average(counts.document_writes),
        average(counts.commit_attempts),
        average(counts.contention_retries + counts.transient_retries),
    ]
}

fn millis(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    match ms {
        ms if ms < 1.0 => format!("{ms:.3}"),
        ms if ms < 100.0 => format!("{ms:.1}"),
        ms => format!("{ms:.0}"),
    }
}

fn check_mark(ok: bool) -> String {
    if ok { "✓" } else { "✗" }.to_owned()
}

/// A Markdown table, padded so it also reads well on a terminal.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().collect());
    }

    fn print(&self) {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .chain([self.header[column].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: Vec<String>| println!("| {} |", cells.join(" | "));
        // The first column names the row; the others are figures, aligned right.
        let pad = |column: usize, text: &str| {
            let width = widths[column];
            if column == 0 {
                format!("{text:<width$}")
            } else {
                format!("{text:>width$}")
            }
        };
        line(
            self.header
                .iter()
                .enumerate()
                .map(|(column, title)| pad(column, title))
                .collect(),
        );
        line(
            widths
                .iter()
                .enumerate()
                .map(|(column, &width)| {
                    let dashes = "-".repeat(width.saturating_sub(1));
                    if column == 0 {
                        format!("{dashes}-")
                    } else {
                        format!("{dashes}:")
                    }
                })
                .collect(),
        );
        for row in &self.rows {
            line(
                row.iter()
                    .enumerate()
                    .map(|(column, cell)| pad(column, cell))
                    .collect(),
            );
        }
        println!();
    }
}

/// Lists why answers were not definitive, if any were not.
fn print_errors(tally: &Tally) {
    for (message, count) in &tally.errors {
        println!("- {count} × `{message}`");
    }
    if !tally.errors.is_empty() {
        println!();
    }
}

#[derive(Clone, Copy)]
enum CostCase {
    Admitted,
    Denied,
    KeyedAdmitted,
    Replayed,
}

impl CostCase {
    /// In this order: the replays repeat the keyed records.
    const ALL: [Self; 4] = [
        Self::Admitted,
        Self::Denied,
        Self::KeyedAdmitted,
        Self::Replayed,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::Denied => "denied",
            Self::KeyedAdmitted => "admitted, with idempotency key",
            Self::Replayed => "replayed (same key again)",
        }
    }

    fn request(self, moment: &Moment, users: &[UserId], index: usize) -> RecordRequest {
        let user = &users[index % users.len()];
        match self {
            Self::Admitted => moment.request(user, SMALL_RECORD),
            // More than the whole day allows: denied whatever was used before.
            Self::Denied => moment.request(user, LIMITS.trial.daily_limit + 1),
            Self::KeyedAdmitted | Self::Replayed => {
                moment.keyed_request(user, SMALL_RECORD, &format!("cost-{index}"))
            }
        }
    }

    fn expects(self, answer: &Answer) -> bool {
        matches!(
            (self, answer),
            (
                Self::Admitted | Self::KeyedAdmitted,
                Ok(RecordOutcome::Admitted(_))
            ) | (Self::Denied, Ok(RecordOutcome::Denied(_)))
                | (Self::Replayed, Ok(RecordOutcome::Replayed(_)))
        )
    }
}

/// Scenario 1. Sequential, so that no retry blurs the cost of the record itself.
async fn cost_per_request(emulator: &Emulator, moment: Moment) -> bool {
    println!("## 1. Firestore operations per request\n");
    println!(
        "{COST_REQUESTS} sequential records of each kind over {COST_USERS} users; averages per \
         request.\n"
    );
    let project = emulator::unique_project("bench-cost");
    let store = connect(emulator, &project).await;
    let users: Vec<UserId> = (0..COST_USERS)
        .map(|i| user(&format!("cost-{i}")))
        .collect();
    let mut table = Table::new(&[
        "record",
        "as expected",
        "RPCs",
        "doc reads",
        "doc writes",
        "commits",
        "retries",
        "mean ms",
    ]);
    let mut sound = true;
    for case in CostCase::ALL {
        let before = counts(&store);
        let mut samples = Vec::with_capacity(COST_REQUESTS);
        for index in 0..COST_REQUESTS {
            let request = case.request(&moment, &users, index);
            samples.push(timed_record(store.as_ref(), request).await);
        }
        let counts = counts(&store) - before;
        let expected = samples
            .iter()
            .filter(|(_, answer)| case.expects(answer))
            .count();
        sound &= expected == COST_REQUESTS;
        table.row(
            [
                case.label().to_owned(),
                format!(
                    "{expected}/{COST_REQUESTS} {}",
                    check_mark(expected == COST_REQUESTS)
                ),
            ]
            .into_iter()
            .chain(per_record(counts, COST_REQUESTS))
            .chain([millis(Latencies::of(&samples).mean())]),
        );
    }
    sound &= reservation_costs(&store, &moment, &users, &mut table).await;
    table.print();
    emulator.clear(&project).await;
    sound
}

/// Rows of the cost table for reservations: reserve, then commit (or release) each.
async fn reservation_costs(
    store: &Arc<FirestoreStore>,
    moment: &Moment,
    users: &[UserId],
    table: &mut Table,
) -> bool {
    let mut sound = true;
    for settle in ["commit", "release"] {
        let mut row = |label: &str, samples: &[Sample], counts: OperationCounts, ok: usize| {
            sound &= ok == COST_REQUESTS;
            table.row(
                [
                    label.to_owned(),
                    format!("{ok}/{COST_REQUESTS} {}", check_mark(ok == COST_REQUESTS)),
                ]
                .into_iter()
                .chain(per_record(counts, COST_REQUESTS))
                .chain([millis(Latencies::of(samples).mean())]),
            );
        };
        let before = counts(store);
        let mut held = Vec::with_capacity(COST_REQUESTS);
        let mut samples = Vec::with_capacity(COST_REQUESTS);
        for index in 0..COST_REQUESTS {
            let user = &users[index % users.len()];
            let (took, answer) = timed_record(store.as_ref(), moment.reserve(user, 1)).await;
            if let Ok(RecordOutcome::Reserved(reservation, _)) = &answer {
                held.push((user.clone(), reservation.id.clone()));
            }
            samples.push((took, answer));
        }
        row(
            &format!("reserve (then {settle})"),
            &samples,
            counts(store) - before,
            held.len(),
        );
        let before = counts(store);
        let mut samples = Vec::with_capacity(COST_REQUESTS);
        for (user, id) in held {
            let action = match settle {
                "commit" => Action::Commit {
                    id,
                    tokens: Moment::tokens(1),
                },
                _ => Action::Release { id },
            };
            samples.push(timed_record(store.as_ref(), moment.settle(&user, action)).await);
        }
        let settled = samples
            .iter()
            .filter(|(_, answer)| {
                matches!(
                    answer,
                    Ok(RecordOutcome::Settled {
                        replayed: false,
                        ..
                    })
                )
            })
            .count();
        row(settle, &samples, counts(store) - before, settled);
    }
    sound
}

/// Scenario 2.
async fn sequential_latency(emulator: &Emulator, sqlite: &Arc<dyn UsageStore>, moment: Moment) {
    println!("## 2. Sequential latency\n");
    println!(
        "{SEQUENTIAL_RECORDS} admitted records one after another, each for a user of its own.\n"
    );
    let project = emulator::unique_project("bench-sequential");
    let firestore: Arc<dyn UsageStore> = connect(emulator, &project).await;
    let mut table = Table::new(&[
        "store",
        "records",
        "errors",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "records/s",
    ]);
    let mut all_samples = Vec::new();
    for (label, store) in [("Firestore (emulator)", &firestore), ("SQLite", sqlite)] {
        let run = sequential(store.as_ref(), moment, "sequential").await;
        let latencies = run.latencies();
        table.row([
            label.to_owned(),
            run.samples.len().to_string(),
            run.tally().failed().to_string(),
            millis(latencies.percentile(50.0)),
            millis(latencies.percentile(95.0)),
            millis(latencies.percentile(99.0)),
            format!("{:.0}", run.per_second()),
        ]);
        all_samples.extend(run.samples);
    }
    table.print();
    print_errors(&Tally::of(&all_samples));
    emulator.clear(&project).await;
}

async fn sequential(store: &dyn UsageStore, moment: Moment, label: &str) -> Run {
    let started = Instant::now();
    let mut samples = Vec::with_capacity(SEQUENTIAL_RECORDS);
    for index in (0..SEQUENTIAL_RECORDS).take_while(|_| started.elapsed() < TIME_CAP) {
        let request = moment.request(&user(&format!("{label}-{index}")), SMALL_RECORD);
        samples.push(timed_record(store, request).await);
    }
    Run {
        samples,
        elapsed: started.elapsed(),
    }
}

/// Records spread round-robin over users by concurrent workers.
#[derive(Clone, Copy)]
struct Load {
    workers: usize,
    users: usize,
    records: usize,
}

/// Scenario 3.
async fn throughput(emulator: &Emulator, sqlite: &Arc<dyn UsageStore>, moment: Moment) {
    println!("## 3. Throughput, many users\n");
    println!(
        "{} concurrent workers, {} records over {} users (round-robin, so no two records for \
         one user overlap); Firestore on one client.\n",
        LOAD.workers, LOAD.records, LOAD.users
    );
    let project = emulator::unique_project("bench-load");
    let firestore = connect(emulator, &project).await;
    let mut table = load_table("store");

    let before = counts(&firestore);
    let on_firestore = concurrent(firestore.clone(), moment, "load", LOAD, Work::Record).await;
    let records = on_firestore.samples.len();
    let record_counts = per_record(counts(&firestore) - before, records);
    table.row(
        load_row("Firestore (emulator)", &on_firestore)
            .into_iter()
            .chain(record_counts),
    );

    let before = counts(&firestore);
    let pairs_on_firestore = concurrent(firestore.clone(), moment, "pairs", LOAD, Work::Pair).await;
    let pair_counts = per_record(
        counts(&firestore) - before,
        pairs_on_firestore.samples.len(),
    );
    table.row(
        load_row(
            "Firestore (emulator), reserve+commit pairs",
            &pairs_on_firestore,
        )
        .into_iter()
        .chain(pair_counts),
    );

    let no_counts = || std::iter::repeat_n("–".to_owned(), 5);
    let on_sqlite = concurrent(sqlite.clone(), moment, "load", LOAD, Work::Record).await;
    table.row(
        load_row("SQLite", &on_sqlite)
            .into_iter()
            .chain(no_counts()),
    );
    let pairs_on_sqlite = concurrent(sqlite.clone(), moment, "pairs", LOAD, Work::Pair).await;
    table.row(
        load_row("SQLite, reserve+commit pairs", &pairs_on_sqlite)
            .into_iter()
            .chain(no_counts()),
    );

    table.print();
    let mut all_samples = on_firestore.samples;
    all_samples.extend(on_sqlite.samples);
    all_samples.extend(pairs_on_firestore.samples);
    all_samples.extend(pairs_on_sqlite.samples);
    print_errors(&Tally::of(&all_samples));
    emulator.clear(&project).await;
}

/// Scenario 6. The same load without the cache, with it cold and warm, and over three
/// instances sharing the users.
async fn document_cache(emulator: &Emulator, moment: Moment) {
    println!("## 6. Committing from cached documents\n");
    println!(
        "{} concurrent workers over {} users, `POST /usage` records; \"cold\" is each user's \
         first record, \"warm\" the next {} passes over the users. With users moving on, each \
         pass goes to the next instance: no record of a user reaches the instance that served \
         the previous one.\n",
        LOAD.workers, LOAD.users, WARM_PASSES
    );
    let first_pass = Load {
        records: LOAD.users,
        ..LOAD
    };
    let warm_passes = Load {
        records: LOAD.users * WARM_PASSES,
        ..LOAD
    };
    let mut table = load_table("instances and cache");
    let mut all_samples = Vec::new();
    // (label, instances, cache bytes, whether each pass goes to the next instance)
    let cases = [
        ("1, no cache", 1, 0, false),
        ("1, cache", 1, CACHE_BYTES, false),
        ("3, cache, each user on one", INSTANCES, CACHE_BYTES, false),
        ("3, cache, users moving on", INSTANCES, CACHE_BYTES, true),
    ];
    for (label, instances, cache_bytes, moving) in cases {
        let project = emulator::unique_project("bench-cache");
        let mut stores = Vec::with_capacity(instances);
        for _ in 0..instances {
            stores.push(connect_with_cache(emulator, &project, cache_bytes).await);
        }
        let as_usage_stores = || {
            stores
                .iter()
                .map(|store| store.clone() as Arc<dyn UsageStore>)
                .collect::<Vec<_>>()
        };
        for (phase, load, passes_before) in [("cold", first_pass, 0), ("warm", warm_passes, 1)] {
            let route = if moving {
                Route::Rotating { passes_before }
            } else {
                Route::Pinned
            };
            let before = total_counts(&stores);
            let run = concurrent_over(
                as_usage_stores(),
                route,
                moment,
                "cache",
                load,
                Work::Record,
            )
            .await;
            let cost = per_record(total_counts(&stores) - before, run.samples.len());
            table.row(
                load_row(&format!("{label}: {phase}"), &run)
                    .into_iter()
                    .chain(cost),
            );
            all_samples.extend(run.samples);
        }
        emulator.clear(&project).await;
    }
    table.print();
    print_errors(&Tally::of(&all_samples));
}

/// A table of load runs: the run, its rates and latencies, and its operations per record.
fn load_table(first_column: &'static str) -> Table {
    Table::new(&[
        first_column,
        "records",
        "errors",
        "records/s",
        "p50 ms",
        "p99 ms",
        "RPCs/rec",
        "reads/rec",
        "writes/rec",
        "commits/rec",
        "retries/rec",
    ])
}

fn load_row(label: &str, run: &Run) -> [String; 6] {
    let latencies = run.latencies();
    [
        label.to_owned(),
        run.samples.len().to_string(),
        run.tally().failed().to_string(),
        format!("{:.0}", run.per_second()),
        millis(latencies.percentile(50.0)),
        millis(latencies.percentile(99.0)),
    ]
}

/// What each step of a concurrent run does.
#[derive(Clone, Copy)]
enum Work {
    /// One `POST /usage`.
    Record,
    /// A reservation, then its commit.
    Pair,
}

/// Which instance a record goes to, when there are several.
#[derive(Clone, Copy)]
enum Route {
    /// Each user's records to one instance, as with session affinity.
    Pinned,
    /// Each pass over the users to the next instance, after `passes_before` passes: no
    /// record of a user reaches the instance that served the user's previous one.
    Rotating { passes_before: usize },
}

impl Route {
    fn instance(self, index: usize, users: usize, instances: usize) -> usize {
        match self {
            Self::Pinned => index % users % instances,
            Self::Rotating { passes_before } => {
                (index % users + index / users + passes_before) % instances
            }
        }
    }
}

async fn concurrent(
    store: Arc<dyn UsageStore>,
    moment: Moment,
    label: &str,
    load: Load,
    work: Work,
) -> Run {
    concurrent_over(vec![store], Route::Pinned, moment, label, load, work).await
}

/// `load` over `stores`, each record sent to the instance `route` picks.
async fn concurrent_over(
    stores: Vec<Arc<dyn UsageStore>>,
    route: Route,
    moment: Moment,
    label: &str,
    load: Load,
    work: Work,
) -> Run {
    let stores = Arc::new(stores);
    let users: Arc<Vec<UserId>> = Arc::new(
        (0..load.users)
            .map(|i| user(&format!("{label}-{i}")))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop_at = started + TIME_CAP;
    let mut workers = JoinSet::new();
    for _ in 0..load.workers {
        let (stores, users, next) = (stores.clone(), users.clone(), next.clone());
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= load.records || Instant::now() >= stop_at {
                    return samples;
                }
                let user = &users[index % users.len()];
                let store = &stores[route.instance(index, users.len(), stores.len())];
                samples.push(match work {
                    Work::Record => {
                        timed_record(store.as_ref(), moment.request(user, SMALL_RECORD)).await
                    }
                    Work::Pair => timed_pair(store.as_ref(), &moment, user).await,
                });
            }
        });
    }
    let samples = workers.join_all().await.into_iter().flatten().collect();
    Run {
        samples,
        elapsed: started.elapsed(),
    }
}

/// Sends `count` records of `tokens` for `user` at once, round-robin over `stores`.
async fn burst(
    stores: &[Arc<FirestoreStore>],
    moment: Moment,
    user: &UserId,
    count: usize,
    tokens: i64,
) -> Run {
    let started = Instant::now();
    let mut records = JoinSet::new();
    for index in 0..count {
        let store = stores[index % stores.len()].clone();
        let request = moment.request(user, tokens);
        records.spawn(async move { timed_record(store.as_ref(), request).await });
    }
    let samples = records.join_all().await;
    Run {
        samples,
        elapsed: started.elapsed(),
    }
}

/// Whether the day and month documents hold exactly the admitted tokens, read through another
/// instance than most writers.
async fn stored_matches(
    stores: &[Arc<FirestoreStore>],
    moment: Moment,
    user: &UserId,
    admitted_tokens: i64,
) -> bool {
    let reader = &stores[stores.len() - 1];
    let day = reader
        .day_and_month(user, moment.window.date)
        .await
        .expect("cannot read the day back")
        .day;
    let months = reader
        .months(user, 1)
        .await
        .expect("cannot read the month back");
    let day_tokens = day.map_or(0, |day| day.usage.tokens_used);
    let month_tokens = months.first().map_or(0, |month| month.total_monthly_tokens);
    day_tokens == admitted_tokens && month_tokens == admitted_tokens
}

/// Scenario 4.
async fn contention(emulator: &Emulator, moment: Moment) -> bool {
    println!("## 4. Contention: one user, {INSTANCES} instances\n");
    println!(
        "Per round, {CONTENTION_RECORDS} records of {CONTENTION_TOKENS} tokens at once for one \
         new user, round-robin over {INSTANCES} instances (a client each), request timeout \
         {REQUEST_TIMEOUT:?}. Definitive = admitted or denied; an error is what the service answers \
         503. Stored = the day and month documents hold exactly the admitted tokens.\n"
    );
    let project = emulator::unique_project("bench-contention");
    let stores = instances(emulator, &project).await;
    let mut table = Table::new(&[
        "round",
        "admitted",
        "denied",
        "503",
        "definitive",
        "mean ms",
        "max ms",
        "retries/rec",
        "stored",
    ]);
    let mut all_samples = Vec::new();
    let mut all_counts = OperationCounts::default();
    let mut sound = true;
    for round in 1..=CONTENTION_ROUNDS {
        let user = user(&format!("contended-{round}"));
        let before = total_counts(&stores);
        let run = burst(
            &stores,
            moment,
            &user,
            CONTENTION_RECORDS,
            CONTENTION_TOKENS,
        )
        .await;
        let counts = total_counts(&stores) - before;
        let tally = run.tally();
        let stored_ok = stored_matches(
            &stores,
            moment,
            &user,
            tally.admitted as i64 * CONTENTION_TOKENS,
        )
        .await;
        sound &= stored_ok;
        let stored = check_mark(stored_ok);
        table.row(contention_row(
            &round.to_string(),
            &run.samples,
            counts,
            &stored,
        ));
        all_counts = all_counts + counts;
        all_samples.extend(run.samples);
    }
    let overall = if sound { "all ✓" } else { "✗" };
    table.row(contention_row("all", &all_samples, all_counts, overall));
    table.print();
    print_errors(&Tally::of(&all_samples));
    emulator.clear(&project).await;
    sound
}

fn contention_row(
    label: &str,
    samples: &[Sample],
    counts: OperationCounts,
    stored: &str,
) -> [String; 9] {
    let tally = Tally::of(samples);
    let records = samples.len();
    let definitive = tally.admitted + tally.denied;
    let latencies = Latencies::of(samples);
    let [.., retries] = per_record(counts, records);
    [
        label.to_owned(),
        tally.admitted.to_string(),
        tally.denied.to_string(),
        tally.failed().to_string(),
        format!("{:.0} %", 100.0 * definitive as f64 / records.max(1) as f64),
        millis(latencies.mean()),
        millis(latencies.max()),
        retries,
        stored.to_owned(),
    ]
}

/// Scenario 5.
async fn limit_pressure(emulator: &Emulator, moment: Moment) -> bool {
    println!("## 5. Contention at the limit\n");
    println!(
        "Per round, {PRESSURE_RECORDS} records of {PRESSURE_TOKENS} tokens at once for one new \
         trial user (limit {}), round-robin over {INSTANCES} instances. Check: at most \
         {PRESSURE_MOST_ADMITTED} admitted, exactly {PRESSURE_MOST_ADMITTED} when every answer \
         is definitive, and the day and month documents hold exactly the admitted tokens. \
         Drain = first call to last answer.\n",
        LIMITS.trial.daily_limit
    );
    let project = emulator::unique_project("bench-pressure");
    let stores = instances(emulator, &project).await;
    let mut table = Table::new(&[
        "round",
        "admitted",
        "denied",
        "503",
        "drain ms",
        "retries/rec",
        "check",
    ]);
    let mut sound = true;
    let mut all_samples = Vec::new();
    for round in 1..=PRESSURE_ROUNDS {
        let user = user(&format!("pressured-{round}"));
        let before = total_counts(&stores);
        let run = burst(&stores, moment, &user, PRESSURE_RECORDS, PRESSURE_TOKENS).await;
        let counts = total_counts(&stores) - before;
        let tally = run.tally();
        let admitted_ok = tally.admitted <= PRESSURE_MOST_ADMITTED
            && (tally.failed() > 0 || tally.admitted == PRESSURE_MOST_ADMITTED);
        let stored_ok = stored_matches(
            &stores,
            moment,
            &user,
            tally.admitted as i64 * PRESSURE_TOKENS,
        )
        .await;
        sound &= admitted_ok && stored_ok;
        let [.., retries] = per_record(counts, run.samples.len());
        table.row([
            round.to_string(),
            tally.admitted.to_string(),
            tally.denied.to_string(),
            tally.failed().to_string(),
            millis(run.elapsed),
            retries,
            check_mark(admitted_ok && stored_ok),
        ]);
        all_samples.extend(run.samples);
    }
    table.print();
    print_errors(&Tally::of(&all_samples));
    emulator.clear(&project).await;
    sound
}
