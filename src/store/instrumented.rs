//! Any store, measured: each operation counted by result and timed, whatever the adapter.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::NaiveDate;

use crate::metrics::{STORE_OPERATION_DURATION, STORE_OPERATIONS};
use crate::usage::{
    AuditEntry, AuditQuery, DailySummary, DailyUsage, DayAndMonth, DayChanges, Deadline,
    LimitOverride, MonthlySummary, MonthlyUsage, OverLimit, OverrideChange, Page, PageRequest,
    RecordRequest, Recorded, StoreError, UsageStore, UserId, UserType,
};

pub struct Instrumented {
    store: Arc<dyn UsageStore>,
    /// The `store` label: `sqlite` or `firestore`.
    name: &'static str,
}

impl Instrumented {
    pub fn new(store: Arc<dyn UsageStore>, name: &'static str) -> Self {
        Self { store, name }
    }

    async fn measure<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = work.await;
        let labels = [("store", self.name), ("operation", operation)];
        metrics::histogram!(STORE_OPERATION_DURATION, &labels)
            .record(started.elapsed().as_secs_f64());
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(
            STORE_OPERATIONS,
            "store" => self.name,
            "operation" => operation,
            "result" => outcome
        )
        .increment(1);
        result
    }
}

#[async_trait]
impl UsageStore for Instrumented {
    async fn record(
        &self,
        request: RecordRequest,
        deadline: Deadline,
    ) -> Result<Recorded, StoreError> {
        self.measure("record", self.store.record(request, deadline))
            .await
    }

    async fn day_and_month(
        &self,
        user_id: &UserId,
        date: NaiveDate,
    ) -> Result<DayAndMonth, StoreError> {
        self.measure("day_and_month", self.store.day_and_month(user_id, date))
            .await
    }

    async fn months(&self, user_id: &UserId, limit: u32) -> Result<Vec<MonthlyUsage>, StoreError> {
        self.measure("months", self.store.months(user_id, limit))
            .await
    }

    async fn daily_report(
        &self,
        date: NaiveDate,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<DailyUsage>, StoreError> {
        self.measure(
            "daily_report",
            self.store.daily_report(date, user_type, page),
        )
        .await
    }

    async fn monthly_report(
        &self,
        year: i32,
        month: u32,
        user_type: Option<UserType>,
        page: &PageRequest,
    ) -> Result<Page<MonthlyUsage>, StoreError> {
        self.measure(
            "monthly_report",
            self.store.monthly_report(year, month, user_type, page),
        )
        .await
    }

    async fn daily_summary(&self, date: NaiveDate) -> Result<DailySummary, StoreError> {
        self.measure("daily_summary", self.store.daily_summary(date))
            .await
    }

    async fn monthly_summary(&self, year: i32, month: u32) -> Result<MonthlySummary, StoreError> {
        self.measure("monthly_summary", self.store.monthly_summary(year, month))
            .await
    }

    async fn over_limit(
        &self,
        date: NaiveDate,
        user_type: UserType,
        limit: i64,
    ) -> Result<OverLimit, StoreError> {
        self.measure("over_limit", self.store.over_limit(date, user_type, limit))
            .await
    }

    async fn limit_override(&self, user_id: &UserId) -> Result<Option<LimitOverride>, StoreError> {
        self.measure("limit_override", self.store.limit_override(user_id))
            .await
    }

    async fn change_limit_override(
        &self,
        change: &OverrideChange,
    ) -> Result<Option<LimitOverride>, StoreError> {
        self.measure(
            "change_limit_override",
            self.store.change_limit_override(change),
        )
        .await
    }

    async fn limit_overrides(
        &self,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<LimitOverride>, StoreError> {
        self.measure("limit_overrides", self.store.limit_overrides(after, limit))
            .await
    }

    async fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.measure("audit_entries", self.store.audit_entries(query))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.measure("ping", self.store.ping()).await
    }

    fn day_changes(&self, user_id: &UserId, date: NaiveDate) -> DayChanges {
        self.store.day_changes(user_id, date)
    }
}
