//! The API's JSON for the domain's documents. The answers are the edge's own types, so that a
//! change to what the API shows never changes what a store keeps, and the OpenAPI schemas of
//! the domain's values are described here, not in the domain.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::usage::{DailyUsage, MonthlyUsage, UserId, UserType};

/// `daily_token_usage/{userId}_{date}`.
#[derive(Serialize, ToSchema)]
#[schema(as = DailyUsage)]
#[serde(rename_all = "camelCase")]
pub struct DayView {
    user_id: UserId,
    date: NaiveDate,
    tokens_used: i64,
    token_limit: i64,
    user_type: UserType,
    last_updated: DateTime<Utc>,
    reset_at: DateTime<Utc>,
}

impl From<DailyUsage> for DayView {
    fn from(day: DailyUsage) -> Self {
        Self {
            user_id: day.user_id,
            date: day.date,
            tokens_used: day.tokens_used,
            token_limit: day.token_limit,
            user_type: day.user_type,
            last_updated: day.last_updated,
            reset_at: day.reset_at,
        }
    }
}

/// `token_usage_history/{userId}_{yyyy}_{mm}`: one user's month, aggregated from the days.
#[derive(Serialize, ToSchema)]
#[schema(as = MonthlyUsage)]
#[serde(rename_all = "camelCase")]
pub struct MonthView {
    user_id: UserId,
    year: i32,
    #[schema(minimum = 1, maximum = 12)]
    month: u32,
    /// Day of month as `"DD"` -> tokens; every day from the first used to the latest.
    #[schema(example = json!({"01": 850, "02": 1200, "03": 0}))]
    daily_usage: BTreeMap<String, i64>,
    total_monthly_tokens: i64,
    #[schema(format = Double)]
    average_daily_usage: f64,
    /// The day (`"DD"`) with the most tokens; the earliest on a tie.
    peak_usage_date: String,
    peak_usage_tokens: i64,
    user_type: UserType,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<MonthlyUsage> for MonthView {
    fn from(month: MonthlyUsage) -> Self {
        Self {
            user_id: month.user_id,
            year: month.year,
            month: month.month,
            daily_usage: month.daily_usage,
            total_monthly_tokens: month.total_monthly_tokens,
            average_daily_usage: month.average_daily_usage,
            peak_usage_date: month.peak_usage_date,
            peak_usage_tokens: month.peak_usage_tokens,
            user_type: month.user_type,
            created_at: month.created_at,
            updated_at: month.updated_at,
        }
    }
}

/// A Firebase uid that can name a document.
impl PartialSchema for UserId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::String))
            .description(Some(
                "A Firebase uid that can name a Firestore document (`{uid}_{date}`, \
                 `{uid}_{yyyy}_{mm}`).",
            ))
            .min_length(Some(1))
            .max_length(Some(UserId::MAX_CHARS))
            .examples(["abc123"])
            .into()
    }
}

impl ToSchema for UserId {}

/// A plan's name.
impl PartialSchema for UserType {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::String))
            .enum_values(Some(UserType::ALL.map(UserType::as_str)))
            .into()
    }
}

impl ToSchema for UserType {}
