//! The usage service: works out the window, the limits and the clock, then asks the store.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;

use super::{
    DailyUsage, DayWindow, Fingerprint, IdempotencyKey, Limits, MonthlyUsage, UserId, UserType,
};
use crate::store::{
    DailySummary, Page, PageRequest, RecordOutcome, RecordRequest, StoreError, UsageStore,
};

pub struct UsageService {
    store: Arc<dyn UsageStore>,
    limits: Limits,
    zone: Tz,
}

impl UsageService {
    pub fn new(store: Arc<dyn UsageStore>, limits: Limits, zone: Tz) -> Self {
        Self {
            store,
            limits,
            zone,
        }
    }

    /// Checks and records `tokens` for `user_id` today, exactly once per idempotency key.
    pub async fn record(
        &self,
        user_id: UserId,
        user_type: Option<UserType>,
        tokens: i64,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<RecordOutcome, StoreError> {
        let now = now();
        let idempotency = idempotency_key.map(|key| (key, Fingerprint::of(&user_id, tokens)));
        let request = RecordRequest {
            user_id,
            tokens,
            user_type,
            window: DayWindow::containing(now, self.zone),
            limits: self.limits,
            now,
            idempotency,
        };
        self.store.record(request).await
    }

    /// The user's day so far, with the limit that their next request will be judged by.
    /// A read never creates a document.
    pub async fn today(
        &self,
        user_id: UserId,
        user_type: Option<UserType>,
    ) -> Result<DailyUsage, StoreError> {
        let now = now();
        let window = DayWindow::containing(now, self.zone);
        let stored = self.store.day(&user_id, window.date).await?;
        let user_type = user_type
            .or(stored.as_ref().map(|day| day.user_type))
            .unwrap_or(UserType::Trial);
        Ok(DailyUsage {
            token_limit: self.limits.for_type(user_type),
            user_type,
            tokens_used: stored.as_ref().map_or(0, |day| day.tokens_used),
            last_updated: stored.as_ref().map_or(now, |day| day.last_updated),
            reset_at: window.reset_at,
            date: window.date,
            user_id,
        })
    }

    /// The user's latest `months` month documents, newest first.
    pub async fn history(
        &self,
        user_id: &UserId,
        months: u32,
    ) -> Result<Vec<MonthlyUsage>, StoreError> {
        self.store.months(user_id, months).await
    }

    pub async fn daily_report(
        &self,
        date: chrono::NaiveDate,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<DailyUsage>, StoreError> {
        self.store.daily_report(date, user_type, page).await
    }

    pub async fn monthly_report(
        &self,
        year: i32,
        month: u32,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<MonthlyUsage>, StoreError> {
        self.store
            .monthly_report(year, month, user_type, page)
            .await
    }

    pub async fn daily_summary(&self, date: chrono::NaiveDate) -> Result<DailySummary, StoreError> {
        self.store.daily_summary(date).await
    }

    pub async fn ready(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }
}

/// Millisecond precision: what every store keeps and every response shows.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}
