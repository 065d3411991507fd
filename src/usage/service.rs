//! The usage service: resolves whose plan applies, works out the window, the limits and the
//! clock, then asks the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SubsecRound, Timelike, Utc};
use chrono_tz::Tz;

use super::{
    DailySummary, DailyUsage, DayWindow, DirectoryError, Fingerprint, IdempotencyKey, Limits,
    MonthlyUsage, Page, PageRequest, RecordOutcome, RecordRequest, StoreError, Tokens, UsageStore,
    UserDirectory, UserId, UserType,
};
use crate::metrics::{
    ACTIVE_USERS_TODAY, DECISIONS, RECORD_ERRORS, TOKENS, TOKENS_BY_HOUR, TOKENS_TODAY,
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

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

pub struct UsageService {
    store: Arc<dyn UsageStore>,
    directory: Arc<dyn UserDirectory>,
    limits: Limits,
    zone: Tz,
    /// How long a record may keep trying the store before it answers 503.
    store_budget: Duration,
}

impl UsageService {
    pub fn new(
        store: Arc<dyn UsageStore>,
        directory: Arc<dyn UserDirectory>,
        limits: Limits,
        zone: Tz,
        store_budget: Duration,
    ) -> Self {
        Self {
            store,
            directory,
            limits,
            zone,
            store_budget,
        }
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
        let deadline = Instant::now() + self.store_budget;
        let user_type = self.user_type(&subject).await?;
        let now = now();
        let stated_type = match subject.user_type {
            TypeSource::Stated(user_type) => Some(user_type),
            TypeSource::OwnToken(_) | TypeSource::Directory => None,
        };
        let idempotency = idempotency_key
            .map(|key| (key, Fingerprint::of(&subject.user_id, tokens, stated_type)));
        let request = RecordRequest {
            user_id: subject.user_id,
            tokens,
            user_type,
            window: DayWindow::containing(now, self.zone),
            limits: self.limits,
            now,
            idempotency,
        };
        let outcome = self.store.record(request, deadline).await;
        let hour = now.with_timezone(&self.zone).hour();
        count_record(&outcome, user_type, tokens, hour);
        Ok(outcome?)
    }

    /// Today's figures across all users, as gauges: what an operator watches.
    pub async fn count_today(&self) -> Result<(), UsageError> {
        let today = DayWindow::containing(now(), self.zone).date;
        let summary = self.store.daily_summary(today).await?;
        for (user_type, totals) in summary.by_type {
            let label = [("user_type", user_type.as_str())];
            metrics::gauge!(ACTIVE_USERS_TODAY, &label).set(totals.active_users as f64);
            metrics::gauge!(TOKENS_TODAY, &label).set(totals.total_tokens as f64);
        }
        Ok(())
    }

    /// The user's day so far, with the limit that their next request will be judged by.
    /// A read never creates a document.
    pub async fn today(&self, subject: &Subject) -> Result<DailyUsage, UsageError> {
        let now = now();
        let window = DayWindow::containing(now, self.zone);
        let (user_type, stored) = tokio::try_join!(self.user_type(subject), async {
            Ok(self.store.day(&subject.user_id, window.date).await?)
        })?;
        Ok(DailyUsage {
            token_limit: self.limits.for_type(user_type),
            user_type,
            tokens_used: stored.as_ref().map_or(0, |day| day.tokens_used),
            last_updated: stored.as_ref().map_or(now, |day| day.last_updated),
            reset_at: window.reset_at,
            date: window.date,
            user_id: subject.user_id.clone(),
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
    outcome: &Result<RecordOutcome, StoreError>,
    user_type: UserType,
    tokens: Tokens,
    hour: u32,
) {
    let user_type = user_type.as_str();
    let (decision, tokens_decision) = match outcome {
        Ok(RecordOutcome::Admitted(_)) => ("admitted", Some("admitted")),
        Ok(RecordOutcome::Denied(_)) => ("denied", Some("denied")),
        Ok(RecordOutcome::Replayed(_)) => ("replayed", None),
        Ok(RecordOutcome::KeyReused) => ("key_reused", None),
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

/// Millisecond precision: what every store keeps and every response shows.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}
