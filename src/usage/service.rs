//! The usage service: resolves whose plan applies, works out the window, the limits and the
//! clock, then asks the store.

use chrono::{DateTime, NaiveDate, SubsecRound, Timelike, Utc};
use chrono_tz::Tz;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::Notify;

use super::{
    Action, Clock, DailySummary, DailyUsage, DayAndMonth, DayWindow, Deadline, DirectoryError,
    Fingerprint, IdempotencyKey, Limits, MonthStanding, MonthlyUsage, OnStoreUnavailable, Page,
    PageRequest, Policy, RecordOutcome, RecordRequest, Recorded, ReservationId, ReservationRules,
    Settlement, Share, Standing, StoreError, Thresholds, Tokens, UsageStore, UserDirectory, UserId,
    UserType, limits_for, split_overfetch,
};
use super::{
    AuditEntry, AuditQuery, InvalidOverride, LimitOverride, OverrideChange, OverrideRequest,
};
use crate::metrics::{
    ACTIVE_USERS_TODAY, DECISIONS, DEGRADED_ADMISSIONS, RECORD_ERRORS, RESERVATION_TOKENS,
    RESERVATIONS, TOKENS, TOKENS_BY_HOUR, TOKENS_TODAY, WOULD_DENY,
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
    /// The admin acting for the user, when it is someone else.
    pub acting_admin: Option<UserId>,
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

/// Where the plan a user's report shows was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanSource {
    /// The user directory: the plan the user's next request is judged by.
    Directory,
    /// The directory did not answer: the plan stored with the user's latest usage.
    Stored,
    /// The directory did not answer and nothing is stored for the user: the default plan.
    Default,
}

/// One user's report: the day as it stands, where its plan was learned, and the latest months.
#[derive(Debug, Clone, PartialEq)]
pub struct UserReport {
    pub today: Standing,
    pub plan_source: PlanSource,
    pub history: Vec<MonthlyUsage>,
}

/// What `POST /usage` got: the store's decision, or, with `ON_STORE_UNAVAILABLE=allow`, an
/// admission the store could not check.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Decided(RecordOutcome),
    /// Let through uncounted while the store was down. `Unknown` when a write was under way:
    /// it may have been recorded.
    Degraded {
        user_type: UserType,
        policy: Policy,
        window: DayWindow,
        recorded: MaybeRecorded,
    },
}

/// Whether a degraded admission's tokens were recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaybeRecorded {
    No,
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    InvalidOverride(#[from] InvalidOverride),
    #[error("date must be today or an earlier day in RESET_TIMEZONE")]
    FutureReset,
}

/// Who changes an override, and why; recorded in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAct {
    pub actor: UserId,
    pub reason: Option<String>,
    pub idempotency_key: Option<String>,
}

/// What a request asks of a user's day.
struct Intent {
    user_id: UserId,
    action: Action,
    window: DayWindow,
    now: DateTime<Utc>,
    idempotency: Option<(IdempotencyKey, Fingerprint)>,
    /// The admin acting for another user: what they record may be audited.
    acting_admin: Option<UserId>,
}

impl Intent {
    /// The subject's request (a hold, for one, audits nothing whoever asks).
    fn of(
        subject: Subject,
        action: Action,
        window: DayWindow,
        now: DateTime<Utc>,
        idempotency: Option<(IdempotencyKey, Fingerprint)>,
    ) -> Self {
        Self {
            user_id: subject.user_id,
            action,
            window,
            now,
            idempotency,
            acting_admin: subject.acting_admin,
        }
    }
}

/// The rules the service applies, as configured.
#[derive(Debug, Clone)]
pub struct UsageSettings {
    /// The policy of each user type.
    pub limits: Limits,
    /// From what share of the binding limit answers warn.
    pub soft_limit: Share,
    pub on_store_unavailable: OnStoreUnavailable,
    /// How far ahead an override may expire.
    pub override_horizon: chrono::Duration,
    pub zone: Tz,
    pub reservations: ReservationRules,
    /// Admins whose records for other users are not audited (the chat backend's uid).
    pub unaudited_recorders: HashSet<UserId>,
    /// Where records raise threshold events; none when no sink is configured.
    pub thresholds: Thresholds,
}

pub struct UsageService {
    store: Arc<dyn UsageStore>,
    directory: Arc<dyn UserDirectory>,
    settings: UsageSettings,
    clock: Arc<dyn Clock>,
    /// Told when a record wrote threshold events, so that their delivery starts at once.
    events_written: Option<Arc<Notify>>,
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
            events_written: None,
        }
    }

    /// The service, telling `waker` of every record that wrote threshold events.
    pub fn waking_on_events(self, waker: Arc<Notify>) -> Self {
        Self {
            events_written: Some(waker),
            ..self
        }
    }

    /// The service's time, to the millisecond: what every store keeps and every answer shows.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now().trunc_subsecs(3)
    }

    pub fn reservation_rules(&self) -> ReservationRules {
        self.settings.reservations
    }

    pub fn soft_limit(&self) -> Share {
        self.settings.soft_limit
    }

    /// The request, handed to the store with the request's deadline; the store reads the
    /// user's override with the documents, and the plan applies it.
    async fn apply(&self, intent: Intent, deadline: Deadline) -> Result<Recorded, StoreError> {
        let request = RecordRequest {
            limits: self.settings.limits,
            commit_grace: self.settings.reservations.commit_grace,
            audit_actor: intent
                .acting_admin
                .filter(|admin| !self.settings.unaudited_recorders.contains(admin)),
            user_id: intent.user_id,
            action: intent.action,
            window: intent.window,
            now: intent.now,
            idempotency: intent.idempotency,
            thresholds: self.settings.thresholds.clone(),
        };
        let recorded = self.store.record(request, deadline).await?;
        if let (Some(waker), true) = (&self.events_written, recorded.events_written > 0) {
            waker.notify_one();
        }
        Ok(recorded)
    }

    /// The plan that applies to `subject` now: the one place it is decided, for the record
    /// and for every view of the user's day alike. The directory has until the deadline.
    async fn user_type(
        &self,
        subject: &Subject,
        deadline: Deadline,
    ) -> Result<UserType, UsageError> {
        Ok(match subject.user_type {
            TypeSource::OwnToken(user_type) | TypeSource::Stated(user_type) => user_type,
            TypeSource::Directory => tokio::time::timeout_at(
                deadline.work_until().into(),
                self.directory.user_type(&subject.user_id),
            )
            .await
            .map_err(|_| {
                DirectoryError::Unavailable("no answer before the request's deadline".to_owned())
            })??,
        })
    }

    /// Checks and records `tokens` for the subject today, exactly once per idempotency key;
    /// while the store is down, refuses (503) or admits uncounted, as configured.
    pub async fn record(
        &self,
        subject: Subject,
        tokens: Tokens,
        idempotency_key: Option<IdempotencyKey>,
        deadline: Deadline,
    ) -> Result<Admission, UsageError> {
        let user_type = self.user_type(&subject, deadline).await?;
        let now = self.now();
        let idempotency = idempotency_key.map(|key| {
            let fingerprint = Fingerprint::of(&subject.user_id, tokens, subject.stated_type());
            (key, fingerprint)
        });
        let window = DayWindow::containing(now, self.settings.zone);
        let action = Action::Spend { tokens, user_type };
        let subject_id = subject.user_id.clone();
        let intent = Intent::of(subject, action, window, now, idempotency);
        let recorded = self.apply(intent, deadline).await;
        let hour = now.with_timezone(&self.settings.zone).hour();
        count_record(&recorded, user_type, tokens, hour);
        count_reservations(&recorded);
        let recorded = match (recorded, self.settings.on_store_unavailable) {
            (Err(StoreError::Unavailable(_)), OnStoreUnavailable::Allow) => MaybeRecorded::No,
            (Err(StoreError::OutcomeUnknown(_)), OnStoreUnavailable::Allow) => {
                MaybeRecorded::Unknown
            }
            (recorded, _) => return Ok(Admission::Decided(recorded?.outcome)),
        };
        metrics::counter!(DEGRADED_ADMISSIONS, "user_type" => user_type.as_str()).increment(1);
        tracing::warn!(
            user_id = %subject_id,
            %user_type,
            tokens = tokens.get(),
            recorded = ?recorded,
            "admitted without counting: the store is down and ON_STORE_UNAVAILABLE=allow"
        );
        Ok(Admission::Degraded {
            user_type,
            policy: self.settings.limits.for_type(user_type),
            window,
            recorded,
        })
    }

    /// Holds `tokens` for the subject today for `ttl` (the configured default when `None`),
    /// exactly once per idempotency key.
    pub async fn reserve(
        &self,
        subject: Subject,
        tokens: Tokens,
        ttl: Option<chrono::Duration>,
        idempotency_key: Option<IdempotencyKey>,
        deadline: Deadline,
    ) -> Result<RecordOutcome, UsageError> {
        let user_type = self.user_type(&subject, deadline).await?;
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
        let intent = Intent::of(subject, action, window, now, idempotency);
        let recorded = self.apply(intent, deadline).await;
        count_reservations(&recorded);
        Ok(recorded?.outcome)
    }

    /// Records what the reserved reply spent, on the reservation's day, and ends its hold;
    /// `acting_admin` commits for another user.
    pub async fn commit(
        &self,
        user_id: UserId,
        id: ReservationId,
        tokens: Tokens,
        acting_admin: Option<UserId>,
        deadline: Deadline,
    ) -> Result<RecordOutcome, UsageError> {
        let date = id.date();
        let action = Action::Commit { id, tokens };
        self.settle(user_id, date, action, acting_admin, deadline)
            .await
    }

    /// Ends a hold without recording anything.
    pub async fn release(
        &self,
        user_id: UserId,
        id: ReservationId,
        deadline: Deadline,
    ) -> Result<RecordOutcome, UsageError> {
        let date = id.date();
        self.settle(user_id, date, Action::Release { id }, None, deadline)
            .await
    }

    /// Commits or releases a reservation on `date`, the day its id names, not today.
    async fn settle(
        &self,
        user_id: UserId,
        date: NaiveDate,
        action: Action,
        acting_admin: Option<UserId>,
        deadline: Deadline,
    ) -> Result<RecordOutcome, UsageError> {
        let window = DayWindow::of_date(date, self.settings.zone);
        let intent = Intent {
            user_id,
            action,
            window,
            now: self.now(),
            idempotency: None,
            acting_admin,
        };
        let recorded = self.apply(intent, deadline).await;
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
    pub async fn today(
        &self,
        subject: &Subject,
        deadline: Deadline,
    ) -> Result<Standing, UsageError> {
        let now = self.now();
        let window = DayWindow::containing(now, self.settings.zone);
        let (user_type, stored, found) = tokio::try_join!(
            self.user_type(subject, deadline),
            async {
                Ok(self
                    .store
                    .day_and_month(&subject.user_id, window.date)
                    .await?)
            },
            async { Ok(self.store.limit_override(&subject.user_id).await?) },
        )?;
        let limits = limits_for(self.settings.limits, found.as_ref(), now);
        Ok(standing(
            &subject.user_id,
            user_type,
            limits,
            stored,
            now,
            window,
        ))
    }

    /// A user's day and latest `months` months, for an admin. Everything shown is stored, so
    /// an unreachable directory does not stop the report: its plan is then the one stored with
    /// the user's latest usage, and the report says so.
    pub async fn user_report(
        &self,
        user_id: &UserId,
        months: u32,
        deadline: Deadline,
    ) -> Result<UserReport, UsageError> {
        let now = self.now();
        let window = DayWindow::containing(now, self.settings.zone);
        let subject = Subject {
            user_id: user_id.clone(),
            user_type: TypeSource::Directory,
            acting_admin: None,
        };
        let (looked_up, stored, history, found) = tokio::join!(
            self.user_type(&subject, deadline),
            self.store.day_and_month(user_id, window.date),
            self.store.months(user_id, months),
            self.store.limit_override(user_id),
        );
        let (stored, history, found) = (stored?, history?, found?);
        let limits = limits_for(self.settings.limits, found.as_ref(), now);
        let latest_stored = stored
            .day
            .as_ref()
            .map(|day| day.usage.user_type)
            .or_else(|| history.first().map(|month| month.user_type));
        let (user_type, plan_source) = match (looked_up, latest_stored) {
            (Ok(user_type), _) => (user_type, PlanSource::Directory),
            (Err(_), Some(user_type)) => (user_type, PlanSource::Stored),
            (Err(_), None) => (UserType::DEFAULT, PlanSource::Default),
        };
        Ok(UserReport {
            today: standing(user_id, user_type, limits, stored, now, window),
            plan_source,
            history,
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

    pub async fn monthly_summary(
        &self,
        year: i32,
        month: u32,
    ) -> Result<super::MonthlySummary, UsageError> {
        Ok(self.store.monthly_summary(year, month).await?)
    }

    /// The user's override, active or expired, if one is stored.
    pub async fn limit_override(
        &self,
        user_id: &UserId,
    ) -> Result<Option<LimitOverride>, UsageError> {
        Ok(self.store.limit_override(user_id).await?)
    }

    /// Sets the user's override, audited; returns it and the one it replaced.
    pub async fn set_limit_override(
        &self,
        user_id: UserId,
        request: OverrideRequest,
        act: AdminAct,
    ) -> Result<(LimitOverride, Option<LimitOverride>), UsageError> {
        let now = self.now();
        let reason = request.reason.clone();
        let set = request.into_override(
            user_id.clone(),
            act.actor.clone(),
            now,
            self.settings.override_horizon,
        )?;
        let change = OverrideChange {
            user_id,
            to: Some(set.clone()),
            actor: act.actor,
            at: now,
            reason: Some(act.reason.unwrap_or(reason)),
            idempotency_key: act.idempotency_key,
        };
        let before = self.store.change_limit_override(&change).await?;
        Ok((set, before))
    }

    /// Removes the user's override, audited; returns it, `None` when there was none (and
    /// nothing is written).
    pub async fn remove_limit_override(
        &self,
        user_id: UserId,
        act: AdminAct,
    ) -> Result<Option<LimitOverride>, UsageError> {
        if self.store.limit_override(&user_id).await?.is_none() {
            return Ok(None);
        }
        let change = OverrideChange {
            user_id,
            to: None,
            actor: act.actor,
            at: self.now(),
            reason: act.reason,
            idempotency_key: act.idempotency_key,
        };
        Ok(self.store.change_limit_override(&change).await?)
    }

    /// A page of the overrides active now, by user id after `after`: may hold fewer than
    /// `limit` when expired ones were passed over; the next page starts after the last user
    /// looked at, `None` on the last page.
    pub async fn active_overrides(
        &self,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<(Vec<LimitOverride>, Option<UserId>), UsageError> {
        let scanned = self.store.limit_overrides(after, limit).await?;
        let (mut scanned, next) =
            split_overfetch(scanned, limit, |last: &LimitOverride| last.user_id.clone());
        let now = self.now();
        scanned.retain(|found| found.active_at(now));
        Ok((scanned, next))
    }

    /// A page of the audit trail, newest first, and where the next starts.
    pub async fn audit(
        &self,
        query: &AuditQuery,
    ) -> Result<(Vec<AuditEntry>, Option<String>), UsageError> {
        let entries = self.store.audit_entries(query).await?;
        Ok(split_overfetch(
            entries,
            query.limit,
            |last: &AuditEntry| last.id.clone(),
        ))
    }

    /// Sets the user's tokens of `date` (today when `None`) to 0, and its month entry, with
    /// its audit entry in the same write; a retry with the same key replays the first answer.
    pub async fn reset(
        &self,
        user_id: UserId,
        date: Option<NaiveDate>,
        act: AdminAct,
        idempotency_key: Option<IdempotencyKey>,
        deadline: Deadline,
    ) -> Result<RecordOutcome, UsageError> {
        let now = self.now();
        let today = DayWindow::containing(now, self.settings.zone).date;
        let date = date.unwrap_or(today);
        if date > today {
            return Err(UsageError::FutureReset);
        }
        let reason = act.reason.unwrap_or_default();
        let idempotency = idempotency_key.map(|key| {
            let fingerprint = Fingerprint::of_reset(&user_id, date, &reason);
            (key, fingerprint)
        });
        let window = DayWindow::of_date(date, self.settings.zone);
        let action = Action::Reset {
            actor: act.actor,
            reason,
        };
        let intent = Intent {
            user_id,
            action,
            window,
            now,
            idempotency,
            acting_admin: None,
        };
        Ok(self.apply(intent, deadline).await?.outcome)
    }

    /// Ready when the store answers.
    pub async fn ready(&self) -> Result<(), UsageError> {
        Ok(self.store.ping().await?)
    }

    /// `daily_limit` tried against each day of `range` for the users of `user_type`, beside
    /// the limit configured for them now. The days are asked of the store a few at a time,
    /// until the deadline: a range not counted by then is unavailable.
    pub async fn what_if(
        &self,
        user_type: UserType,
        daily_limit: i64,
        range: super::DayRange,
        deadline: Deadline,
    ) -> Result<super::WhatIf, UsageError> {
        use futures_util::{StreamExt, TryStreamExt};

        let days = futures_util::stream::iter(range.days())
            .map(|date| async move {
                let figures = self.store.over_limit(date, user_type, daily_limit).await?;
                Ok::<_, StoreError>((date, figures))
            })
            .buffered(super::what_if::DAYS_AT_ONCE)
            .try_collect();
        let days = tokio::time::timeout_at(deadline.work_until().into(), days)
            .await
            .map_err(|_| {
                StoreError::Unavailable("the range was not counted by the deadline".to_owned())
            })??;
        Ok(super::WhatIf {
            user_type,
            daily_limit,
            current_daily_limit: self.settings.limits.for_type(user_type).daily_limit,
            range,
            days,
        })
    }

    /// Today's date for the user, and notices that their day changed, on any instance, from
    /// now on.
    pub fn today_changes(&self, user_id: &UserId) -> (NaiveDate, super::DayChanges) {
        let date = DayWindow::containing(self.now(), self.settings.zone).date;
        (date, self.store.day_changes(user_id, date))
    }
}

/// The day as it stands for a user on `user_type`, from its stored documents if any.
fn standing(
    user_id: &UserId,
    user_type: UserType,
    limits: Limits,
    stored: DayAndMonth,
    now: DateTime<Utc>,
    window: DayWindow,
) -> Standing {
    let policy = limits.for_type(user_type);
    let usage = stored.day.as_ref().map(|day| &day.usage);
    Standing {
        day: DailyUsage {
            token_limit: policy.daily_limit,
            user_type,
            tokens_used: usage.map_or(0, |day| day.tokens_used),
            last_updated: usage.map_or(now, |day| day.last_updated),
            reset_at: window.reset_at,
            date: window.date,
            user_id: user_id.clone(),
        },
        reserved_tokens: stored.day.map_or(0, |day| day.reservations.held_at(now)),
        month: MonthStanding {
            tokens_used: stored.month.map_or(0, |month| month.total_monthly_tokens),
            limit: policy.monthly_limit,
            reset_at: window.month_reset_at,
        },
        enforcement: policy.enforcement,
        exceeds: None,
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
        Ok(RecordOutcome::Admitted(standing)) => {
            if let Some(window) = standing.exceeds {
                metrics::counter!(WOULD_DENY, "user_type" => user_type, "window" => window.as_str(),
                    "mode" => standing.enforcement.as_str())
                .increment(1);
            }
            match standing.enforcement.counts() {
                true => ("admitted", Some("admitted")),
                false => ("uncounted", None),
            }
        }
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
