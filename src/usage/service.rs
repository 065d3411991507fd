//! The usage service: resolves whose plan applies, works out the window, the limits and the
//! clock, then asks the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SubsecRound, Timelike, Utc};
use chrono_tz::Tz;

use super::{
    Action, Clock, DailySummary, DailyUsage, DayWindow, DirectoryError, Fingerprint,
    IdempotencyKey, Limits, MonthlyUsage, Page, PageRequest, RecordOutcome, RecordRequest,
    Recorded, ReservationId, ReservationRules, Settlement, Standing, StoreError, Tokens,
    UsageStore, UserDirectory, UserId, UserType,
};
use crate::metrics::{
    ACTIVE_USERS_TODAY, DECISIONS, RECORD_ERRORS, RESERVATION_TOKENS, RESERVATIONS, TOKENS,
    TOKENS_BY_HOUR, TOKENS_TODAY,
};

/// How the plan of the counted user is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeSource {
    /// The user is the caller: their own verified token says.
    OwnToken(UserType),
    /// An admin acting for the user stated it in the request.
    Stated(UserType),
    /// An admin acting for the user did not say: the user directory knows.
    Directory,
}

/// The user a request is about, and how their plan is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub user_id: UserId,
    pub user_type: TypeSource,
}

impl Subject {
    /// The plan an admin stated, which makes part of an idempotent request's body.
    fn stated_type(&self) -> Option<UserType> {
        match self.user_type {
            TypeSource::Stated(user_type) => Some(user_type),
            TypeSource::OwnToken(_) | TypeSource::Directory => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// The rules the service applies, as configured.
#[derive(Debug, Clone, Copy)]
pub struct UsageSettings {
    pub limits: Limits,
    pub zone: Tz,
    /// How long a record may keep trying the store before it answers 503.
    pub store_budget: Duration,
    pub reservations: ReservationRules,
}

pub struct UsageService {
    store: Arc<dyn UsageStore>,
    directory: Arc<dyn UserDirectory>,
    settings: UsageSettings,
    clock: Arc<dyn Clock>,
}

impl UsageService {
    pub fn new(
        store: Arc<dyn UsageStore>,
        directory: Arc<dyn UserDirectory>,
        settings: UsageSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            directory,
            settings,
            clock,
        }
    }

    /// The service's time, to the millisecond: what every store keeps and every answer shows.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now().trunc_subsecs(3)
    }

    pub fn reservation_rules(&self) -> ReservationRules {
        self.settings.reservations
    }

    /// The request for `action` on the day of `window`, handed to the store with a deadline.
    async fn apply(
        &self,
        user_id: UserId,
        action: Action,
        window: DayWindow,
        now: DateTime<Utc>,
        idempotency: Option<(IdempotencyKey, Fingerprint)>,
    ) -> Result<Recorded, StoreError> {
        let deadline = Instant::now() + self.settings.store_budget;
        let request = RecordRequest {
            user_id,
            action,
            window,
            limits: self.settings.limits,
            commit_grace: self.settings.reservations.commit_grace,
            now,
            idempotency,
        };
        self.store.record(request, deadline).await
    }

    /// The plan that applies to `subject` now: the one place it is decided, for the record
    /// and for every view of the user's day alike.
    async fn user_type(&self, subject: &Subject) -> Result<UserType, UsageError> {
        Ok(match subject.user_type {
            TypeSource::OwnToken(user_type) | TypeSource::Stated(user_type) => user_type,
            TypeSource::Directory => self.directory.user_type(&subject.user_id).await?,
        })
    }

    /// Checks and records `tokens` for the subject today, exactly once per idempotency key.
    pub async fn record(
        &self,
        subject: Subject,
        tokens: Tokens,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<RecordOutcome, UsageError> {
        let user_type = self.user_type(&subject).await?;
        let now = self.now();
        let idempotency = idempotency_key.map(|key| {
            let fingerprint = Fingerprint::of(&subject.user_id, tokens, subject.stated_type());
            (key, fingerprint)
        });
        let window = DayWindow::containing(now, self.settings.zone);
        let action = Action::Spend { tokens, user_type };
        let recorded = self
            .apply(subject.user_id, action, window, now, idempotency)
            .await;
        let hour = now.with_timezone(&self.settings.zone).hour();
        count_record(&recorded, user_type, tokens, hour);
        count_reservations(&recorded);
        Ok(recorded?.outcome)
    }

    /// Holds `tokens` for the subject today for `ttl` (the configured default when `None`),
    /// exactly once per idempotency key.
    pub async fn reserve(
        &self,
        subject: Subject,
        tokens: Tokens,
        ttl: Option<chrono::Duration>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<RecordOutcome, UsageError> {
        let user_type = self.user_type(&subject).await?;
        let now = self.now();
        let ttl = ttl.unwrap_or(self.settings.reservations.default_ttl);
        let idempotency = idempotency_key.map(|key| {
            let fingerprint = Fingerprint::of_reservation(
                &subject.user_id,
                tokens,
                ttl.num_seconds(),
                subject.stated_type(),
            );
            (key, fingerprint)
        });
        let window = DayWindow::containing(now, self.settings.zone);
        let action = Action::Reserve {
            id: ReservationId::new(window.date, now + ttl),
            tokens,
            user_type,
        };
        let recorded = self
            .apply(subject.user_id, action, window, now, idempotency)
            .await;
        count_reservations(&recorded);
        Ok(recorded?.outcome)
    }

    /// Records what the reserved reply spent, on the reservation's day, and ends its hold.
    pub async fn commit(
        &self,
        user_id: UserId,
        id: ReservationId,
        tokens: Tokens,
    ) -> Result<RecordOutcome, UsageError> {
        let date = id.date();
        self.settle(user_id, date, Action::Commit { id, tokens })
            .await
    }

    /// Ends a hold without recording anything.
    pub async fn release(
        &self,
        user_id: UserId,
        id: ReservationId,
    ) -> Result<RecordOutcome, UsageError> {
        let date = id.date();
        self.settle(user_id, date, Action::Release { id }).await
    }

    /// Commits or releases a reservation on `date`, the day its id names, not today.
    async fn settle(
        &self,
        user_id: UserId,
        date: NaiveDate,
        action: Action,
    ) -> Result<RecordOutcome, UsageError> {
        let window = DayWindow::of_date(date, self.settings.zone);
        let recorded = self.apply(user_id, action, window, self.now(), None).await;
        count_reservations(&recorded);
        Ok(recorded?.outcome)
    }

    /// Today's figures across all users, as gauges: what an operator watches.
    pub async fn count_today(&self) -> Result<(), UsageError> {
        let today = DayWindow::containing(self.now(), self.settings.zone).date;
        let summary = self.store.daily_summary(today).await?;
        for (user_type, totals) in summary.by_type {
            let label = [("user_type", user_type.as_str())];
            metrics::gauge!(ACTIVE_USERS_TODAY, &label).set(totals.active_users as f64);
            metrics::gauge!(TOKENS_TODAY, &label).set(totals.total_tokens as f64);
        }
        Ok(())
    }

    /// The user's day so far, with the limit that their next request will be judged by and
    /// the tokens held for replies in flight. A read never creates a document.
    pub async fn today(&self, subject: &Subject) -> Result<Standing, UsageError> {
        let now = self.now();
        let window = DayWindow::containing(now, self.settings.zone);
        let (user_type, stored) = tokio::try_join!(self.user_type(subject), async {
            Ok(self.store.day(&subject.user_id, window.date).await?)
        })?;
        let usage = stored.as_ref().map(|day| &day.usage);
        Ok(Standing {
            day: DailyUsage {
                token_limit: self.settings.limits.for_type(user_type),
                user_type,
                tokens_used: usage.map_or(0, |day| day.tokens_used),
                last_updated: usage.map_or(now, |day| day.last_updated),
                reset_at: window.reset_at,
                date: window.date,
                user_id: subject.user_id.clone(),
            },
            reserved_tokens: stored.map_or(0, |day| day.reservations.held_at(now)),
        })
    }

    /// The user's latest `months` month documents, newest first.
    pub async fn history(
        &self,
        user_id: &UserId,
        months: u32,
    ) -> Result<Vec<MonthlyUsage>, UsageError> {
        Ok(self.store.months(user_id, months).await?)
    }

    pub async fn daily_report(
        &self,
        date: NaiveDate,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<DailyUsage>, UsageError> {
        Ok(self.store.daily_report(date, user_type, page).await?)
    }

    pub async fn monthly_report(
        &self,
        year: i32,
        month: u32,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<MonthlyUsage>, UsageError> {
        Ok(self
            .store
            .monthly_report(year, month, user_type, page)
            .await?)
    }

    pub async fn daily_summary(&self, date: NaiveDate) -> Result<DailySummary, UsageError> {
        Ok(self.store.daily_summary(date).await?)
    }

    /// Ready when the store answers.
    pub async fn ready(&self) -> Result<(), UsageError> {
        Ok(self.store.ping().await?)
    }
}

/// Decisions and tokens by outcome and user type, admitted tokens by hour of the day, and
/// requests that got no decision.
fn count_record(
    recorded: &Result<Recorded, StoreError>,
    user_type: UserType,
    tokens: Tokens,
    hour: u32,
) {
    let user_type = user_type.as_str();
    let (decision, tokens_decision) = match recorded.as_ref().map(|r| &r.outcome) {
        Ok(RecordOutcome::Admitted(_)) => ("admitted", Some("admitted")),
        Ok(RecordOutcome::Denied(_)) => ("denied", Some("denied")),
        Ok(RecordOutcome::Replayed(_)) => ("replayed", None),
        Ok(RecordOutcome::KeyReused) => ("key_reused", None),
        Ok(_) => return,
        Err(error) => {
            let kind = match error {
                StoreError::Unavailable(_) => "unavailable",
                StoreError::OutcomeUnknown(_) => "outcome_unknown",
                StoreError::Corrupt(_) => "corrupt_document",
                StoreError::Internal(_) => "internal",
            };
            metrics::counter!(RECORD_ERRORS, "kind" => kind).increment(1);
            return;
        }
    };
    metrics::counter!(DECISIONS, "outcome" => decision, "user_type" => user_type).increment(1);
    let spent = u64::try_from(tokens.get()).unwrap_or(0);
    if let Some(tokens_decision) = tokens_decision {
        metrics::counter!(TOKENS, "decision" => tokens_decision, "user_type" => user_type)
            .increment(spent);
    }
    if tokens_decision == Some("admitted") {
        metrics::counter!(TOKENS_BY_HOUR, "hour" => format!("{hour:02}")).increment(spent);
    }
}

/// Reservations opened, committed, released and expired, and the tokens they held: `held`
/// when a hold opens, `freed` when it ends however it ends, `committed` as recorded. Tokens
/// held across the service are `held - freed`. An expired hold is counted when a write of its
/// day drops it.
fn count_reservations(recorded: &Result<Recorded, StoreError>) {
    let Ok(recorded) = recorded else { return };
    let ended = |how: &'static str, estimate: i64| {
        metrics::counter!(RESERVATIONS, "event" => how).increment(1);
        metrics::counter!(RESERVATION_TOKENS, "event" => "freed")
            .increment(u64::try_from(estimate).unwrap_or(0));
    };
    for expired in &recorded.expired_holds {
        ended("expired", expired.tokens);
    }
    match &recorded.outcome {
        RecordOutcome::Reserved(reservation, _) => {
            metrics::counter!(RESERVATIONS, "event" => "opened").increment(1);
            metrics::counter!(RESERVATION_TOKENS, "event" => "held")
                .increment(u64::try_from(reservation.entry.tokens).unwrap_or(0));
        }
        RecordOutcome::Settled {
            reservation,
            replayed: false,
            ..
        } => match reservation.entry.settlement {
            Some(Settlement::Committed {
                committed_tokens, ..
            }) => {
                ended("committed", reservation.entry.tokens);
                metrics::counter!(RESERVATION_TOKENS, "event" => "committed")
                    .increment(u64::try_from(committed_tokens).unwrap_or(0));
            }
            _ => ended("released", reservation.entry.tokens),
        },
        _ => {}
    }
}
