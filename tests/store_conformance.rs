//! One suite of store behaviour, written once and run against every store: the embedded
//! SQLite file and Firestore on the real emulator.

#[path = "support/emulator.rs"]
mod emulator;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};
use token_limits::store::{FirestoreSettings, FirestoreStore, SqliteStore};
use token_limits::usage::{
    Action, DailyUsage, DayWindow, Deadline, Fingerprint, IdempotencyKey, Limits, MonthlyUsage,
    OverLimit, PageRequest, RecordOutcome, RecordRequest, ReservationId, StoredAnswer, Tokens,
    UsageStore, UsageTotals, UserId, UserType,
};

const LIMITS: Limits = Limits::daily(1_000, 5_000);

/// A store under test, and a way to place a document as another writer (a backfill) would.
trait Harness {
    fn store(&self) -> Arc<dyn UsageStore>;
    async fn put_month(&self, month: &MonthlyUsage);
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn user(uid: &str) -> UserId {
    UserId::parse(uid).unwrap()
}

fn request(uid: &str, tokens: i64, user_type: UserType, now: &str) -> RecordRequest {
    let tokens = Tokens::bounded(tokens, i64::MAX).unwrap();
    action(uid, Action::Spend { tokens, user_type }, now)
}

fn action(uid: &str, action: Action, now: &str) -> RecordRequest {
    let now = at(now);
    let window = match &action {
        Action::Commit { id, .. } | Action::Release { id } => {
            DayWindow::of_date(id.date(), Tz::UTC)
        }
        Action::Spend { .. } | Action::Reserve { .. } | Action::Reset { .. } => {
            DayWindow::containing(now, Tz::UTC)
        }
    };
    RecordRequest {
        user_id: user(uid),
        action,
        window,
        limits: LIMITS,
        commit_grace: chrono::Duration::seconds(30),
        now,
        idempotency: None,
        audit_actor: None,
        thresholds: Default::default(),
    }
}

fn keyed(mut request: RecordRequest, key: &str) -> RecordRequest {
    let Action::Spend { tokens, .. } = request.action else {
        panic!("only records are keyed here")
    };
    let fingerprint = Fingerprint::of(&request.user_id, tokens, None);
    request.idempotency = Some((IdempotencyKey::parse(key).unwrap(), fingerprint));
    request
}

async fn record(store: &dyn UsageStore, request: RecordRequest) -> RecordOutcome {
    let deadline = Deadline::from_now(Duration::from_secs(5));
    store.record(request, deadline).await.unwrap().outcome
}

fn admitted(outcome: RecordOutcome) -> DailyUsage {
    match outcome {
        RecordOutcome::Admitted(standing) => standing.day,
        other => panic!("not admitted: {other:?}"),
    }
}

/// The stored day's figures, without its reservations.
async fn stored_day(
    store: &dyn UsageStore,
    user_id: &UserId,
    date: chrono::NaiveDate,
) -> Option<DailyUsage> {
    store
        .day_and_month(user_id, date)
        .await
        .unwrap()
        .day
        .map(|stored| stored.usage)
}

async fn first_use_creates_the_day_and_the_month(h: &impl Harness) {
    let store = h.store();
    let now = "2024-01-15T14:30:00Z";
    let day = admitted(record(&*store, request("alice", 250, UserType::Trial, now)).await);
    assert_eq!(
        (day.tokens_used, day.token_limit, day.user_type),
        (250, 1_000, UserType::Trial)
    );
    assert_eq!(day.last_updated, at(now));
    assert_eq!(day.reset_at, at("2024-01-16T00:00:00Z"));
    assert_eq!(
        stored_day(&*store, &user("alice"), day.date).await,
        Some(day)
    );
    let months = store.months(&user("alice"), 12).await.unwrap();
    assert_eq!(months.len(), 1);
    assert_eq!(
        months[0].daily_usage,
        BTreeMap::from([("15".to_owned(), 250)])
    );
    assert_eq!(
        (months[0].created_at, months[0].updated_at),
        (at(now), at(now))
    );
}

async fn usage_accumulates(h: &impl Harness) {
    let store = h.store();
    for (tokens, now) in [
        (100, "2024-01-15T01:00:00Z"),
        (200, "2024-01-15T02:00:00Z"),
        (300, "2024-01-15T03:00:00Z"),
    ] {
        record(&*store, request("alice", tokens, UserType::Trial, now)).await;
    }
    let day = stored_day(
        &*store,
        &user("alice"),
        at("2024-01-15T00:00:00Z").date_naive(),
    )
    .await
    .unwrap();
    assert_eq!(
        (day.tokens_used, day.last_updated),
        (600, at("2024-01-15T03:00:00Z"))
    );
    let month = &store.months(&user("alice"), 1).await.unwrap()[0];
    assert_eq!(month.total_monthly_tokens, 600);
    assert_eq!(month.created_at, at("2024-01-15T01:00:00Z"));
    assert!(stored_day(&*store, &user("bob"), day.date).await.is_none());
}

async fn the_limit_is_exact_and_a_denial_writes_nothing(h: &impl Harness) {
    let store = h.store();
    let now = "2024-01-15T10:00:00Z";
    let date = at(now).date_naive();
    match record(&*store, request("alice", 1_001, UserType::Trial, now)).await {
        RecordOutcome::Denied(s) => assert_eq!((s.day.tokens_used, s.day.token_limit), (0, 1_000)),
        other => panic!("{other:?}"),
    }
    assert!(stored_day(&*store, &user("alice"), date).await.is_none());
    assert!(store.months(&user("alice"), 12).await.unwrap().is_empty());

    admitted(record(&*store, request("alice", 999, UserType::Trial, now)).await);
    let full = admitted(record(&*store, request("alice", 1, UserType::Trial, now)).await);
    assert_eq!(full.tokens_used, 1_000);
    let later = "2024-01-15T11:00:00Z";
    match record(&*store, request("alice", 1, UserType::Trial, later)).await {
        RecordOutcome::Denied(standing) => assert_eq!(standing.day, full),
        other => panic!("{other:?}"),
    }
    assert_eq!(stored_day(&*store, &user("alice"), date).await, Some(full));
    assert_eq!(
        store.months(&user("alice"), 1).await.unwrap()[0].total_monthly_tokens,
        1_000
    );
}

async fn an_upgrade_mid_day_raises_the_stored_limit(h: &impl Harness) {
    let store = h.store();
    let now = "2024-01-15T10:00:00Z";
    admitted(record(&*store, request("alice", 1_000, UserType::Trial, now)).await);
    assert!(matches!(
        record(&*store, request("alice", 10, UserType::Trial, now)).await,
        RecordOutcome::Denied(_)
    ));
    let day = admitted(record(&*store, request("alice", 10, UserType::Subscribed, now)).await);
    assert_eq!(
        (day.tokens_used, day.token_limit, day.user_type),
        (1_010, 5_000, UserType::Subscribed)
    );
    let stored = stored_day(&*store, &user("alice"), day.date).await.unwrap();
    assert_eq!(stored.user_type, UserType::Subscribed);
    // The plan of the request applies, whatever the stored day says.
    let day = admitted(record(&*store, request("alice", 2_000, UserType::Subscribed, now)).await);
    assert_eq!(day.token_limit, 5_000);
    match record(&*store, request("alice", 1, UserType::Trial, now)).await {
        RecordOutcome::Denied(standing) => {
            let day = standing.day;
            assert_eq!((day.token_limit, day.user_type), (1_000, UserType::Trial))
        }
        other => panic!("a downgrade kept the stored plan: {other:?}"),
    }
}

async fn an_idempotency_key_replays_and_refuses_reuse(h: &impl Harness) {
    let store = h.store();
    let now = "2024-01-15T10:00:00Z";
    let first = admitted(
        record(
            &*store,
            keyed(request("alice", 300, UserType::Trial, now), "k1"),
        )
        .await,
    );
    let later = "2024-01-15T10:05:00Z";
    let again = record(
        &*store,
        keyed(request("alice", 300, UserType::Trial, later), "k1"),
    )
    .await;
    let RecordOutcome::Replayed(StoredAnswer::Recorded(replayed)) = again else {
        panic!("not replayed: {again:?}")
    };
    assert_eq!(replayed.day, first);
    let reused = record(
        &*store,
        keyed(request("alice", 301, UserType::Trial, later), "k1"),
    )
    .await;
    assert_eq!(reused, RecordOutcome::KeyReused);
    assert_eq!(
        stored_day(&*store, &user("alice"), first.date).await,
        Some(first.clone())
    );
    // Another user's key space is their own.
    admitted(
        record(
            &*store,
            keyed(request("bob", 300, UserType::Trial, later), "k1"),
        )
        .await,
    );
    // A day later the key is forgotten.
    let tomorrow = "2024-01-16T10:00:01Z";
    let fresh = admitted(
        record(
            &*store,
            keyed(request("alice", 300, UserType::Trial, tomorrow), "k1"),
        )
        .await,
    );
    assert_eq!(fresh.tokens_used, 300);
    assert_eq!(
        store.months(&user("alice"), 1).await.unwrap()[0].total_monthly_tokens,
        600
    );
}

async fn a_pre_existing_month_document_is_continued(h: &impl Harness) {
    let store = h.store();
    let created = at("2023-12-20T08:00:00Z");
    let backfilled = MonthlyUsage {
        user_id: user("alice"),
        year: 2024,
        month: 1,
        daily_usage: BTreeMap::from([("02".to_owned(), 700), ("03".to_owned(), 100)]),
        total_monthly_tokens: 800,
        average_daily_usage: 400.0,
        peak_usage_date: "02".to_owned(),
        peak_usage_tokens: 700,
        user_type: UserType::Trial,
        created_at: created,
        updated_at: created,
    };
    h.put_month(&backfilled).await;
    let now = "2024-01-06T12:00:00Z";
    admitted(record(&*store, request("alice", 900, UserType::Trial, now)).await);
    let month = &store.months(&user("alice"), 1).await.unwrap()[0];
    let days: Vec<(&str, i64)> = month
        .daily_usage
        .iter()
        .map(|(d, t)| (d.as_str(), *t))
        .collect();
    assert_eq!(
        days,
        [("02", 700), ("03", 100), ("04", 0), ("05", 0), ("06", 900)]
    );
    assert_eq!(month.total_monthly_tokens, 1_700);
    assert_eq!(month.average_daily_usage, 340.0);
    assert_eq!(
        (month.peak_usage_date.as_str(), month.peak_usage_tokens),
        ("06", 900)
    );
    assert_eq!((month.created_at, month.updated_at), (created, at(now)));
}

async fn history_is_newest_first_and_limited(h: &impl Harness) {
    let store = h.store();
    for now in [
        "2023-11-05T10:00:00Z",
        "2024-01-05T10:00:00Z",
        "2023-12-05T10:00:00Z",
        "2024-02-05T10:00:00Z",
    ] {
        admitted(record(&*store, request("alice", 10, UserType::Trial, now)).await);
    }
    admitted(
        record(
            &*store,
            request("bob", 10, UserType::Trial, "2024-03-05T10:00:00Z"),
        )
        .await,
    );
    let months: Vec<(i32, u32)> = store
        .months(&user("alice"), 3)
        .await
        .unwrap()
        .iter()
        .map(|m| (m.year, m.month))
        .collect();
    assert_eq!(months, [(2024, 2), (2024, 1), (2023, 12)]);
    assert_eq!(store.months(&user("alice"), 24).await.unwrap().len(), 4);
    assert!(store.months(&user("carol"), 24).await.unwrap().is_empty());
}

/// How many users [`observe_while_users_upgrade`] upgrades.
const UPGRADING: i64 = 30;

/// Users upgrading on one day, all at once: `UPGRADING` trial users with 100 tokens on
/// 2024-01-15, each then recording 100 more as subscribed. `observe` runs over and over until
/// every upgrade is in, and once more after; its answers, in order.
async fn observe_while_users_upgrade<T>(
    store: &Arc<dyn UsageStore>,
    observe: impl AsyncFn(chrono::NaiveDate) -> T,
) -> Vec<T> {
    let now = "2024-01-15T10:00:00Z";
    let users: Vec<String> = (0..UPGRADING).map(|i| format!("user-{i}")).collect();
    for uid in &users {
        admitted(record(&**store, request(uid, 100, UserType::Trial, now)).await);
    }
    let upgrades = tokio::spawn({
        let store = store.clone();
        async move {
            let mut running = tokio::task::JoinSet::new();
            for uid in users {
                let store = store.clone();
                running.spawn(async move {
                    let upgrade = request(&uid, 100, UserType::Subscribed, now);
                    admitted(record(&*store, upgrade).await);
                });
            }
            running.join_all().await;
        }
    });
    let date = at(now).date_naive();
    let mut answers = Vec::new();
    while !upgrades.is_finished() {
        answers.push(observe(date).await);
    }
    upgrades.await.unwrap();
    answers.push(observe(date).await);
    answers
}

/// Totals taken while every user upgrades from 100 trial tokens to 200 subscribed ones (see
/// [`observe_while_users_upgrade`]): each user counted once, with the tokens of their side.
fn assert_each_user_once_on_one_side(
    by_type: &BTreeMap<UserType, UsageTotals>,
    answer: &impl std::fmt::Debug,
) {
    let trial = by_type[&UserType::Trial];
    let subscribed = by_type[&UserType::Subscribed];
    assert_eq!(
        trial.active_users + subscribed.active_users,
        UPGRADING,
        "{answer:?}"
    );
    assert_eq!(trial.total_tokens, 100 * trial.active_users, "{answer:?}");
    assert_eq!(
        subscribed.total_tokens,
        200 * subscribed.active_users,
        "{answer:?}"
    );
}

/// Every figure of a summary is of one instant: while users upgrade, each summary shows each
/// user once, on one side, with the tokens of that side.
async fn a_summary_is_one_instant_while_users_upgrade(h: &impl Harness) {
    let store = h.store();
    let summaries = observe_while_users_upgrade(&store, async |date| {
        store.daily_summary(date).await.unwrap()
    })
    .await;
    for summary in &summaries {
        assert_each_user_once_on_one_side(&summary.by_type, summary);
    }
    let last = summaries.last().unwrap();
    assert_eq!(last.by_type[&UserType::Subscribed].active_users, UPGRADING);
    assert_eq!(last.all().total_tokens, 200 * UPGRADING);
}

/// A month's summary counts its month documents per type and its days across all types; a
/// user only in the month before or after is not in it, and each month has every day.
async fn a_month_summary_counts_the_month_by_type_and_by_day(h: &impl Harness) {
    let store = h.store();
    let records = [
        ("alice", 100, UserType::Trial, "2024-01-15T09:00:00Z"),
        ("alice", 50, UserType::Trial, "2024-01-20T09:00:00Z"),
        ("bob", 200, UserType::Subscribed, "2024-01-15T10:00:00Z"),
        ("carol", 25, UserType::Trial, "2024-01-31T23:59:00Z"),
        ("dave", 500, UserType::Trial, "2023-12-31T23:59:00Z"),
        ("erin", 400, UserType::Subscribed, "2024-02-01T00:00:00Z"),
    ];
    for (uid, tokens, user_type, now) in records {
        admitted(record(&*store, request(uid, tokens, user_type, now)).await);
    }
    let totals = |active_users, total_tokens| UsageTotals {
        active_users,
        total_tokens,
    };
    let date = |text: &str| text.parse::<chrono::NaiveDate>().unwrap();

    let january = store.monthly_summary(2024, 1).await.unwrap();
    assert_eq!(january.by_type[&UserType::Trial], totals(2, 175));
    assert_eq!(january.by_type[&UserType::Subscribed], totals(1, 200));
    assert_eq!(january.all(), totals(3, 375));
    assert_eq!(january.days.len(), 31);
    let used: Vec<_> = january
        .days
        .iter()
        .filter(|(_, day)| day.active_users > 0)
        .map(|(date, day)| (date.to_string(), *day))
        .collect();
    assert_eq!(
        used,
        [
            ("2024-01-15".to_owned(), totals(2, 300)),
            ("2024-01-20".to_owned(), totals(1, 50)),
            ("2024-01-31".to_owned(), totals(1, 25)),
        ]
    );
    assert_eq!(january.days[&date("2024-01-01")], totals(0, 0));

    let december = store.monthly_summary(2023, 12).await.unwrap();
    assert_eq!(december.by_type[&UserType::Trial], totals(1, 500));
    assert_eq!(december.by_type[&UserType::Subscribed], totals(0, 0));
    assert_eq!(december.days[&date("2023-12-31")], totals(1, 500));

    let february = store.monthly_summary(2024, 2).await.unwrap();
    assert_eq!(february.all(), totals(1, 400));
    assert_eq!(february.by_type[&UserType::Subscribed], totals(1, 400));
    assert_eq!(february.days.len(), 29, "2024 is a leap year");
    assert_eq!(february.days[&date("2024-02-01")], totals(1, 400));

    let empty = store.monthly_summary(2001, 1).await.unwrap();
    assert_eq!(empty.all(), totals(0, 0));
    assert!(empty.days.values().all(|day| *day == totals(0, 0)));
}

/// Every figure of a month's summary is of one instant: while users upgrade, its types count
/// each user once, with the tokens of that side, and its day counts the same tokens.
async fn a_month_summary_is_one_instant_while_users_upgrade(h: &impl Harness) {
    let store = h.store();
    let summaries = observe_while_users_upgrade(&store, async |date| {
        let summary = store.monthly_summary(2024, 1).await.unwrap();
        (summary.days[&date], summary)
    })
    .await;
    for (day, summary) in &summaries {
        assert_each_user_once_on_one_side(&summary.by_type, summary);
        assert_eq!(*day, summary.all(), "{summary:?}");
    }
    let (_, last) = summaries.last().unwrap();
    assert_eq!(last.by_type[&UserType::Subscribed].active_users, UPGRADING);
}

async fn it_answers_ping(h: &impl Harness) {
    h.store().ping().await.unwrap();
}

/// Runs every case of the suite against a fresh harness each.
fn reserve(uid: &str, tokens: i64, now: &str, expires: &str) -> RecordRequest {
    let expires = at(expires);
    let date = DayWindow::containing(at(now), Tz::UTC).date;
    let reserve = Action::Reserve {
        id: ReservationId::new(date, expires),
        tokens: Tokens::bounded(tokens, i64::MAX).unwrap(),
        user_type: UserType::Trial,
    };
    action(uid, reserve, now)
}

/// Reserves and returns the reservation's id.
async fn held(store: &dyn UsageStore, request: RecordRequest) -> ReservationId {
    match record(store, request).await {
        RecordOutcome::Reserved(reservation, _) => reservation.id,
        other => panic!("not reserved: {other:?}"),
    }
}

fn commit(uid: &str, id: &ReservationId, tokens: i64, now: &str) -> RecordRequest {
    let tokens = Tokens::bounded(tokens, i64::MAX).unwrap();
    action(
        uid,
        Action::Commit {
            id: id.clone(),
            tokens,
        },
        now,
    )
}

async fn a_hold_is_stored_and_frees_its_tokens_when_it_expires(h: &impl Harness) {
    let store = h.store();
    let date = at("2024-01-15T10:00:00Z").date_naive();
    let id = held(
        &*store,
        reserve("alice", 900, "2024-01-15T10:00:00Z", "2024-01-15T10:10:00Z"),
    )
    .await;
    let stored = store
        .day_and_month(&user("alice"), date)
        .await
        .unwrap()
        .day
        .unwrap();
    assert_eq!(stored.usage.tokens_used, 0);
    let entry = stored.reservations.get(&id).expect("the hold is stored");
    assert_eq!((entry.tokens, entry.settlement), (900, None));
    assert!(store.months(&user("alice"), 1).await.unwrap().is_empty());

    let before = request("alice", 101, UserType::Trial, "2024-01-15T10:09:59.999Z");
    assert!(matches!(
        record(&*store, before).await,
        RecordOutcome::Denied(_)
    ));
    let at_expiry = request("alice", 101, UserType::Trial, "2024-01-15T10:10:00Z");
    admitted(record(&*store, at_expiry).await);
    assert!(
        !store
            .day_and_month(&user("alice"), date)
            .await
            .unwrap()
            .day
            .unwrap()
            .reservations
            .is_empty()
    );
    // Past the commit grace, the next write of the day drops it and says so.
    let deadline = Deadline::from_now(Duration::from_secs(5));
    let dropping = request("alice", 1, UserType::Trial, "2024-01-15T10:10:30Z");
    let recorded = store.record(dropping, deadline).await.unwrap();
    assert_eq!(recorded.expired_holds.len(), 1);
    let stored = store
        .day_and_month(&user("alice"), date)
        .await
        .unwrap()
        .day
        .unwrap();
    assert!(stored.reservations.is_empty());
    assert_eq!(stored.usage.tokens_used, 102);
}

async fn a_commit_after_midnight_lands_on_the_reserved_day(h: &impl Harness) {
    let store = h.store();
    let id = held(
        &*store,
        reserve("alice", 300, "2024-01-15T23:59:59Z", "2024-01-16T00:09:59Z"),
    )
    .await;
    let committed = record(&*store, commit("alice", &id, 450, "2024-01-16T00:00:05Z")).await;
    let RecordOutcome::Settled {
        standing,
        replayed: false,
        ..
    } = committed
    else {
        panic!("not committed: {committed:?}")
    };
    assert_eq!(
        (standing.day.tokens_used, standing.reserved_tokens),
        (450, 0)
    );
    let the_15th = at("2024-01-15T12:00:00Z").date_naive();
    let stored = store
        .day_and_month(&user("alice"), the_15th)
        .await
        .unwrap()
        .day
        .unwrap();
    assert_eq!(stored.usage.tokens_used, 450);
    assert_eq!(stored.usage.last_updated, at("2024-01-16T00:00:05Z"));
    assert!(
        stored_day(
            &*store,
            &user("alice"),
            at("2024-01-16T01:00:00Z").date_naive()
        )
        .await
        .is_none()
    );
    let month = &store.months(&user("alice"), 1).await.unwrap()[0];
    assert_eq!(month.daily_usage, BTreeMap::from([("15".to_owned(), 450)]));

    let again = record(&*store, commit("alice", &id, 450, "2024-01-16T00:00:06Z")).await;
    assert!(matches!(
        again,
        RecordOutcome::Settled { replayed: true, .. }
    ));
    assert_eq!(
        store.months(&user("alice"), 1).await.unwrap()[0].total_monthly_tokens,
        450
    );
}

async fn a_release_changes_only_the_reservations(h: &impl Harness) {
    let store = h.store();
    let now = "2024-01-15T10:00:00Z";
    let day = admitted(record(&*store, request("alice", 100, UserType::Trial, now)).await);
    let id = held(
        &*store,
        reserve("alice", 900, "2024-01-15T10:01:00Z", "2024-01-15T10:11:00Z"),
    )
    .await;
    let release = action(
        "alice",
        Action::Release { id: id.clone() },
        "2024-01-15T10:02:00Z",
    );
    assert!(matches!(
        record(&*store, release).await,
        RecordOutcome::Settled {
            replayed: false,
            ..
        }
    ));
    let stored = store
        .day_and_month(&user("alice"), day.date)
        .await
        .unwrap()
        .day
        .unwrap();
    assert_eq!(stored.usage, day, "a release records nothing");
    assert!(stored.reservations.get(&id).unwrap().settlement.is_some());
    admitted(
        record(
            &*store,
            request("alice", 900, UserType::Trial, "2024-01-15T10:03:00Z"),
        )
        .await,
    );
}

/// Active means tokens used: a day that only held a reservation, and a month placed with a
/// total of 0, are in no report and no summary, though their documents exist.
async fn only_days_and_months_with_tokens_are_reported(h: &impl Harness) {
    let store = h.store();
    let now = "2024-01-15T10:00:00Z";
    let date = at(now).date_naive();
    let first_page = PageRequest {
        limit: 10,
        after: None,
    };
    admitted(record(&*store, request("bob", 40, UserType::Trial, now)).await);
    let summary = store.daily_summary(date).await.unwrap();
    assert_eq!(
        summary.all(),
        UsageTotals {
            active_users: 1,
            total_tokens: 40
        }
    );

    let id = held(
        &*store,
        reserve("alice", 300, "2024-01-15T10:01:00Z", "2024-01-15T10:11:00Z"),
    )
    .await;
    let release = action("alice", Action::Release { id }, "2024-01-15T10:02:00Z");
    assert!(matches!(
        record(&*store, release).await,
        RecordOutcome::Settled {
            replayed: false,
            ..
        }
    ));
    let alices_day = stored_day(&*store, &user("alice"), date).await.unwrap();
    assert_eq!(alices_day.tokens_used, 0);

    assert_eq!(store.daily_summary(date).await.unwrap(), summary);
    for user_type in [None, Some(UserType::Trial)] {
        let report = store
            .daily_report(date, user_type, &first_page)
            .await
            .unwrap();
        let users: Vec<&str> = report.items.iter().map(|d| d.user_id.as_str()).collect();
        assert_eq!(users, ["bob"], "{user_type:?}");
    }

    let placed = at("2024-01-02T08:00:00Z");
    h.put_month(&MonthlyUsage {
        user_id: user("carol"),
        year: 2024,
        month: 1,
        daily_usage: BTreeMap::from([("02".to_owned(), 0)]),
        total_monthly_tokens: 0,
        average_daily_usage: 0.0,
        peak_usage_date: "02".to_owned(),
        peak_usage_tokens: 0,
        user_type: UserType::Trial,
        created_at: placed,
        updated_at: placed,
    })
    .await;
    for user_type in [None, Some(UserType::Trial)] {
        let report = store
            .monthly_report(2024, 1, user_type, &first_page)
            .await
            .unwrap();
        let users: Vec<&str> = report.items.iter().map(|m| m.user_id.as_str()).collect();
        assert_eq!(users, ["bob"], "{user_type:?}");
    }
}

/// A limit tried against stored days agrees with a count over the stored documents
/// themselves, for limits below, at and above the users' figures: at the limit is not over
/// it, a day that only held a reservation is no activity, and each type counts its own.
async fn a_limit_tried_counts_the_days_documents_above_it(h: &impl Harness) {
    let store = h.store();
    let (trial, subscribed) = (UserType::Trial, UserType::Subscribed);
    let spent = [
        ("ann", 1_000, trial, "2024-03-04T09:00:00Z"),
        ("ben", 501, trial, "2024-03-04T09:01:00Z"),
        ("cat", 500, trial, "2024-03-04T09:02:00Z"),
        ("dan", 1, trial, "2024-03-04T09:03:00Z"),
        ("fox", 5_000, subscribed, "2024-03-04T09:04:00Z"),
        ("gil", 2_500, subscribed, "2024-03-04T09:05:00Z"),
        // Upgraded mid-day: the day is subscribed's, with all 1,000 tokens.
        ("hal", 400, trial, "2024-03-04T09:06:00Z"),
        ("hal", 600, subscribed, "2024-03-04T09:07:00Z"),
        ("fox", 700, subscribed, "2024-03-05T12:00:00Z"),
        ("ann", 999, trial, "2024-03-07T08:00:00Z"),
        ("ben", 1_000, trial, "2024-03-07T08:01:00Z"),
    ];
    for (uid, tokens, user_type, now) in spent {
        admitted(record(&*store, request(uid, tokens, user_type, now)).await);
    }
    // eve's days hold reservations only: released on the 4th, still open on the 5th.
    let id = held(
        &*store,
        reserve("eve", 300, "2024-03-04T10:00:00Z", "2024-03-04T10:10:00Z"),
    )
    .await;
    let release = action("eve", Action::Release { id }, "2024-03-04T10:01:00Z");
    record(&*store, release).await;
    held(
        &*store,
        reserve("eve", 300, "2024-03-05T10:00:00Z", "2024-03-05T10:10:00Z"),
    )
    .await;

    // The 6th has nothing stored.
    let days: Vec<chrono::NaiveDate> = (4..=7)
        .map(|day| chrono::NaiveDate::from_ymd_opt(2024, 3, day).unwrap())
        .collect();
    let mut stored = Vec::new();
    for uid in ["ann", "ben", "cat", "dan", "eve", "fox", "gil", "hal"] {
        for date in &days {
            stored.extend(stored_day(&*store, &user(uid), *date).await);
        }
    }
    assert_eq!(stored.len(), 12, "{stored:?}");
    assert!(
        stored
            .iter()
            .any(|day| day.user_id == user("eve") && day.tokens_used == 0)
    );

    for date in &days {
        for user_type in UserType::ALL {
            for limit in [0, 1, 499, 500, 501, 999, 1_000, 2_500, 5_000, 10_000] {
                let of_day: Vec<&DailyUsage> = stored
                    .iter()
                    .filter(|day| day.date == *date && day.user_type == user_type)
                    .collect();
                let above: Vec<i64> = of_day
                    .iter()
                    .map(|day| day.tokens_used)
                    .filter(|tokens| *tokens > limit)
                    .collect();
                let counted = OverLimit {
                    active_users: of_day.iter().filter(|day| day.tokens_used > 0).count() as i64,
                    users_over_limit: above.len() as i64,
                    tokens_over_limit: above.iter().map(|tokens| tokens - limit).sum(),
                };
                let answer = store.over_limit(*date, user_type, limit).await.unwrap();
                assert_eq!(answer, counted, "{date} {user_type} limit {limit}");
            }
        }
    }
    let figures = |active_users, users_over_limit, tokens_over_limit| OverLimit {
        active_users,
        users_over_limit,
        tokens_over_limit,
    };
    let answer = |date: usize, user_type, limit| {
        let store = store.clone();
        let date = days[date];
        async move { store.over_limit(date, user_type, limit).await.unwrap() }
    };
    assert_eq!(answer(0, trial, 500).await, figures(4, 2, 501));
    assert_eq!(answer(0, trial, 1_000).await, figures(4, 0, 0));
    assert_eq!(answer(0, subscribed, 999).await, figures(3, 3, 5_503));
    assert_eq!(answer(1, trial, 0).await, figures(0, 0, 0));
    assert_eq!(answer(2, subscribed, 0).await, figures(0, 0, 0));
}

/// Both figures of a tried limit are of one instant: while users upgrade (each day going
/// from 100 tokens to 200, above the limit tried), every subscribed user counted is above it.
async fn a_limit_tried_is_one_instant_while_users_upgrade(h: &impl Harness) {
    let store = h.store();
    let answers = observe_while_users_upgrade(&store, async |date| {
        let answer = store.over_limit(date, UserType::Subscribed, 150).await;
        answer.unwrap()
    })
    .await;
    for answer in &answers {
        assert_eq!(answer.users_over_limit, answer.active_users, "{answer:?}");
        assert_eq!(
            answer.tokens_over_limit,
            50 * answer.active_users,
            "{answer:?}"
        );
    }
    assert_eq!(answers.last().unwrap().active_users, UPGRADING);
}

macro_rules! conformance_suite {
    ($store:ident, $harness:expr) => {
        mod $store {
            use super::*;

            conformance_suite!(@cases $harness;
                first_use_creates_the_day_and_the_month,
                usage_accumulates,
                the_limit_is_exact_and_a_denial_writes_nothing,
                an_upgrade_mid_day_raises_the_stored_limit,
                an_idempotency_key_replays_and_refuses_reuse,
                a_pre_existing_month_document_is_continued,
                history_is_newest_first_and_limited,
                a_summary_is_one_instant_while_users_upgrade,
                a_hold_is_stored_and_frees_its_tokens_when_it_expires,
                a_commit_after_midnight_lands_on_the_reserved_day,
                a_release_changes_only_the_reservations,
                only_days_and_months_with_tokens_are_reported,
                a_limit_tried_counts_the_days_documents_above_it,
                a_limit_tried_is_one_instant_while_users_upgrade,
                a_month_summary_counts_the_month_by_type_and_by_day,
                a_month_summary_is_one_instant_while_users_upgrade,
                it_answers_ping,
            );
        }
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let harness = $harness.await;
                super::$case(&harness).await;
            }
        )*
    };
}

struct Sqlite {
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
}

impl Sqlite {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("usage.db")).unwrap());
        Self { dir, store }
    }
}

impl Harness for Sqlite {
    fn store(&self) -> Arc<dyn UsageStore> {
        self.store.clone()
    }

    /// Writes the row with a connection of its own, as another process would.
    async fn put_month(&self, month: &MonthlyUsage) {
        let connection = rusqlite::Connection::open(self.dir.path().join("usage.db")).unwrap();
        connection
            .execute(
                "INSERT INTO token_usage_history VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, NULL)",
                rusqlite::params![
                    MonthlyUsage::document_id(&month.user_id, month.year, month.month),
                    month.user_id.as_str(),
                    month.year,
                    month.month,
                    serde_json::to_string(&month.daily_usage).unwrap(),
                    month.total_monthly_tokens,
                    month.average_daily_usage,
                    month.peak_usage_date,
                    month.peak_usage_tokens,
                    month.user_type.as_str(),
                    month.created_at,
                    month.updated_at,
                ],
            )
            .unwrap();
    }
}

conformance_suite!(sqlite, Sqlite::new());

/// `FIRESTORE_CACHE_MIB`'s default.
const DEFAULT_CACHE_BYTES: u64 = 32 << 20;

/// A Firestore store on the shared emulator, in a project of its own.
struct Firestore {
    emulator: &'static emulator::Emulator,
    project: String,
    store: Arc<FirestoreStore>,
}

impl Firestore {
    /// A store with the service's default document cache.
    async fn new() -> Self {
        let emulator = emulator::shared().await;
        let project = emulator::unique_project("store");
        emulator.clear(&project).await;
        let store = Self::connect(emulator, &project, DEFAULT_CACHE_BYTES).await;
        Self {
            emulator,
            project,
            store: Arc::new(store),
        }
    }

    async fn connect(
        emulator: &emulator::Emulator,
        project: &str,
        cache_bytes: u64,
    ) -> FirestoreStore {
        FirestoreStore::connect(FirestoreSettings {
            project_id: project.to_owned(),
            database_id: "(default)".to_owned(),
            emulator_host: Some(emulator.host()),
            cache_bytes,
        })
        .await
        .unwrap()
    }

    /// Another instance of the service on the same database, with a client of its own.
    async fn instance(&self, cache_bytes: u64) -> FirestoreStore {
        Self::connect(self.emulator, &self.project, cache_bytes).await
    }

    /// Writes a document through the emulator's REST API: another client than ours.
    async fn put_raw(&self, path: &str, fields: Value) {
        let response = reqwest::Client::new()
            .patch(self.emulator.document_url(&self.project, path))
            .bearer_auth("owner")
            .json(&json!({ "fields": fields }))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap()
        );
    }

    /// Reads a document through the emulator's REST API: its fields as Firestore sees them.
    async fn get_raw(&self, path: &str) -> serde_json::Map<String, Value> {
        let response = reqwest::Client::new()
            .get(self.emulator.document_url(&self.project, path))
            .bearer_auth("owner")
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        let document: Value = response.json().await.unwrap();
        document["fields"].as_object().unwrap().clone()
    }
}

fn rest_timestamp(at: DateTime<Utc>) -> Value {
    json!({ "timestampValue": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true) })
}

impl Harness for Firestore {
    fn store(&self) -> Arc<dyn UsageStore> {
        self.store.clone()
    }

    async fn put_month(&self, month: &MonthlyUsage) {
        let days: serde_json::Map<String, Value> = month
            .daily_usage
            .iter()
            .map(|(day, tokens)| (day.clone(), json!({ "integerValue": tokens.to_string() })))
            .collect();
        let id = MonthlyUsage::document_id(&month.user_id, month.year, month.month);
        let fields = json!({
            "userId": { "stringValue": month.user_id.as_str() },
            "year": { "integerValue": month.year.to_string() },
            "month": { "integerValue": month.month.to_string() },
            "dailyUsage": { "mapValue": { "fields": days } },
            "totalMonthlyTokens": { "integerValue": month.total_monthly_tokens.to_string() },
            "averageDailyUsage": { "doubleValue": month.average_daily_usage },
            "peakUsageDate": { "stringValue": month.peak_usage_date },
            "peakUsageTokens": { "integerValue": month.peak_usage_tokens.to_string() },
            "userType": { "stringValue": month.user_type.as_str() },
            "createdAt": rest_timestamp(month.created_at),
            "updatedAt": rest_timestamp(month.updated_at),
        });
        self.put_raw(&format!("token_usage_history/{id}"), fields)
            .await;
    }
}

conformance_suite!(firestore, Firestore::new());

/// Firestore-only checks: the raw documents, others' fields, the cost of a request, and
/// commits from cached documents.
mod firestore_documents {
    use super::*;

    /// Each field's Firestore value type, as the REST API names it (`integerValue`, ...).
    fn field_types(fields: &serde_json::Map<String, Value>) -> BTreeMap<&str, &str> {
        fields
            .iter()
            .map(|(name, field)| {
                let value_type = field.as_object().unwrap().keys().next().unwrap();
                (name.as_str(), value_type.as_str())
            })
            .collect()
    }

    #[tokio::test]
    async fn raw_documents_carry_exactly_the_schema_fields_and_types() {
        let h = Firestore::new().await;
        let now = "2024-01-15T14:30:00.250Z";
        admitted(record(&*h.store, request("alice", 250, UserType::Trial, now)).await);

        let day = h.get_raw("daily_token_usage/alice_2024-01-15").await;
        assert_eq!(
            field_types(&day),
            BTreeMap::from([
                ("userId", "stringValue"),
                ("date", "stringValue"),
                ("tokensUsed", "integerValue"),
                ("tokenLimit", "integerValue"),
                ("userType", "stringValue"),
                ("lastUpdated", "timestampValue"),
                ("resetAt", "timestampValue"),
                // Beyond the schema: the marker by which a lost commit knows its own write.
                ("writeId", "stringValue"),
            ])
        );
        assert_eq!(day["date"]["stringValue"], "2024-01-15");
        assert_eq!(day["tokensUsed"]["integerValue"], "250");
        assert_eq!(day["resetAt"]["timestampValue"], "2024-01-16T00:00:00Z");
        assert_eq!(
            day["lastUpdated"]["timestampValue"],
            "2024-01-15T14:30:00.250Z"
        );

        let month = h.get_raw("token_usage_history/alice_2024_01").await;
        assert_eq!(
            field_types(&month),
            BTreeMap::from([
                ("userId", "stringValue"),
                ("year", "integerValue"),
                ("month", "integerValue"),
                ("dailyUsage", "mapValue"),
                ("totalMonthlyTokens", "integerValue"),
                ("averageDailyUsage", "doubleValue"),
                ("peakUsageDate", "stringValue"),
                ("peakUsageTokens", "integerValue"),
                ("userType", "stringValue"),
                ("createdAt", "timestampValue"),
                ("updatedAt", "timestampValue"),
            ])
        );
        assert_eq!(
            month["dailyUsage"]["mapValue"]["fields"]["15"]["integerValue"],
            "250"
        );
        assert_eq!(month["averageDailyUsage"]["doubleValue"], 250.0);
        assert_eq!(month["peakUsageDate"]["stringValue"], "15");
    }

    #[tokio::test]
    async fn fields_written_by_others_are_kept() {
        let h = Firestore::new().await;
        h.put_raw(
            "daily_token_usage/alice_2024-01-15",
            json!({
                "userId": { "stringValue": "alice" },
                "date": { "stringValue": "2024-01-15" },
                "tokensUsed": { "integerValue": "400" },
                "tokenLimit": { "integerValue": "1000" },
                "userType": { "stringValue": "trial" },
                "lastUpdated": { "timestampValue": "2024-01-15T08:00:00Z" },
                "resetAt": { "timestampValue": "2024-01-16T00:00:00Z" },
                "clientPlatform": { "stringValue": "flutter" },
            }),
        )
        .await;
        let now = "2024-01-15T14:30:00Z";
        let day = admitted(record(&*h.store, request("alice", 100, UserType::Trial, now)).await);
        assert_eq!(day.tokens_used, 500);
        let raw = h.get_raw("daily_token_usage/alice_2024-01-15").await;
        assert_eq!(raw["clientPlatform"]["stringValue"], "flutter");
        assert_eq!(raw["tokensUsed"]["integerValue"], "500");
    }

    /// RPCs, document reads and document writes of one record, once the store's copy of the
    /// overrides has caught up (before that, a record also reads its user's override).
    async fn cost(store: &FirestoreStore, request: RecordRequest) -> (RecordOutcome, [u64; 3]) {
        let start = std::time::Instant::now();
        while !store.overrides_ready() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the overrides' listener never caught up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = store.operation_counts();
        let outcome = record(store, request).await;
        let cost = store.operation_counts() - before;
        let figures = [cost.rpcs, cost.document_reads, cost.document_writes];
        (outcome, figures)
    }

    #[tokio::test]
    async fn a_record_costs_two_rpcs_cold_and_one_from_the_cache() {
        let h = Firestore::new().await;
        let now = "2024-01-15T10:00:00Z";
        let store = &*h.store;

        let (first, figures) = cost(store, request("alice", 600, UserType::Trial, now)).await;
        admitted(first);
        assert_eq!(figures, [2, 2, 2], "a first record reads, then commits");

        let (second, figures) = cost(store, request("alice", 100, UserType::Trial, now)).await;
        assert_eq!(admitted(second).tokens_used, 700);
        assert_eq!(
            figures,
            [1, 0, 2],
            "the next commits from the cached day and month"
        );

        // A denial from a cached copy could be out of date: it is taken from a fresh read.
        let (denied, figures) = cost(store, request("alice", 600, UserType::Trial, now)).await;
        assert!(matches!(denied, RecordOutcome::Denied(_)));
        assert_eq!(
            figures,
            [1, 2, 0],
            "nothing sent on the copy's word: one read decides"
        );

        let key = || keyed(request("alice", 10, UserType::Trial, now), "k");
        let (first, figures) = cost(store, key()).await;
        assert_eq!(admitted(first).tokens_used, 710);
        assert_eq!(
            figures,
            [1, 0, 3],
            "a new key is written on `exists: false`"
        );

        // A retry finds its key taken: the commit is refused, and the read replays.
        let (replayed, figures) = cost(store, key()).await;
        assert!(matches!(replayed, RecordOutcome::Replayed(_)));
        assert_eq!(figures, [2, 3, 0]);

        let counts = store.operation_counts();
        assert_eq!((counts.cached_commits, counts.stale_cached_commits), (3, 1));
        let stored = store
            .day_and_month(&user("alice"), "2024-01-15".parse().unwrap())
            .await
            .unwrap()
            .day;
        assert_eq!(stored.unwrap().usage.tokens_used, 710);
    }

    #[tokio::test]
    async fn without_a_cache_every_record_reads_first() {
        let h = Firestore::new().await;
        let now = "2024-01-15T10:00:00Z";
        let store = h.instance(0).await;
        for expected in [100, 200] {
            let (outcome, figures) =
                cost(&store, request("alice", 100, UserType::Trial, now)).await;
            assert_eq!(admitted(outcome).tokens_used, expected);
            assert_eq!(figures, [2, 2, 2]);
        }
        assert_eq!(store.operation_counts().cached_commits, 0);
    }

    #[tokio::test]
    async fn a_copy_another_writer_changed_is_refused_and_read_again() {
        let h = Firestore::new().await;
        let now = "2024-01-15T10:00:00Z";
        let (a, b) = (&*h.store, h.instance(DEFAULT_CACHE_BYTES).await);
        admitted(record(a, request("alice", 300, UserType::Trial, now)).await);
        admitted(record(&b, request("alice", 300, UserType::Trial, now)).await);

        // `a`'s copy says 300 where 600 are stored: its commit is refused, and the record is
        // decided again on what is stored.
        let (outcome, figures) = cost(a, request("alice", 300, UserType::Trial, now)).await;
        assert_eq!(admitted(outcome).tokens_used, 900);
        assert_eq!(figures, [3, 2, 2], "a refused commit, a read, a commit");
        assert_eq!(a.operation_counts().stale_cached_commits, 1);

        // `b`'s copy says 600, under which 300 more would fit; stored, 900 are used.
        let (denied, _) = cost(&b, request("alice", 300, UserType::Trial, now)).await;
        assert!(matches!(denied, RecordOutcome::Denied(_)));

        // A field written by another client changes the update time too.
        h.put_raw(
            "daily_token_usage/alice_2024-01-15?updateMask.fieldPaths=clientPlatform",
            json!({ "clientPlatform": { "stringValue": "ios" } }),
        )
        .await;
        let (outcome, _) = cost(a, request("alice", 50, UserType::Trial, now)).await;
        assert_eq!(admitted(outcome).tokens_used, 950);
        let raw = h.get_raw("daily_token_usage/alice_2024-01-15").await;
        assert_eq!(raw["tokensUsed"]["integerValue"], "950");
        assert_eq!(raw["clientPlatform"]["stringValue"], "ios");
        let month = h.get_raw("token_usage_history/alice_2024_01").await;
        assert_eq!(month["totalMonthlyTokens"]["integerValue"], "950");
    }

    #[tokio::test]
    async fn idempotency_keys_with_any_visible_character_are_stored() {
        let h = Firestore::new().await;
        let now = "2024-01-15T10:00:00Z";
        for key in ["a/b", "..", "__x__", "~!@#$%^&*()"] {
            admitted(
                record(
                    &*h.store,
                    keyed(request("alice", 1, UserType::Trial, now), key),
                )
                .await,
            );
            let again = record(
                &*h.store,
                keyed(request("alice", 1, UserType::Trial, now), key),
            )
            .await;
            assert!(matches!(again, RecordOutcome::Replayed(_)), "{key}");
        }
    }
}
