//! `/admin`: reports across all users for the dashboard; admins only.

use axum::Json;
use axum::extract::{Path, State};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorEnvelope;
use super::extract::AppQuery;
use super::page_token;
use super::usage::UsageView;
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::store::{PageCursor, PageRequest, UsageTotals};
use crate::usage::{MonthlyUsage, UserId, UserType};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(daily))
        .routes(routes!(monthly))
        .routes(routes!(user_usage))
        .routes(routes!(summary))
}

/// A caller with the admin claim; anyone else is 403.
pub struct Admin;

impl axum::extract::FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if principal.admin {
            Ok(Self)
        } else {
            Err(ApiError::Forbidden("this report is for admins only"))
        }
    }
}

/// Query parameters arrive as text so that every bad value gets a message naming it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportQuery {
    date: Option<String>,
    year: Option<String>,
    month: Option<String>,
    user_type: Option<String>,
    limit: Option<String>,
    page_token: Option<String>,
    months: Option<String>,
}

/// One page of a report.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReportPage<T> {
    items: Vec<T>,
    /// Pass as `pageToken` for the next page; `null` on the last page.
    next_page_token: Option<String>,
}

/// One day's usage across users, most tokens first (ties by user id).
#[utoipa::path(
    get,
    path = "/admin/usage/daily",
    tag = "admin",
    params(
        ("date" = NaiveDate, Query, description = "The day, YYYY-MM-DD"),
        ("userType" = Option<UserType>, Query, description = "Only users of this type"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Items per page (default 50)"),
        ("pageToken" = Option<String>, Query, description = "`nextPageToken` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of the day's usage objects", body = ReportPage<UsageView>),
        (status = 400, description = "An invalid parameter, named in the message", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid ID token", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String))),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
        (status = 500, description = "Internal error", body = ErrorEnvelope),
        (status = 503, description = "The store or the signing keys are unavailable", body = ErrorEnvelope,
         headers(("Retry-After" = u64))),
    ),
    security(("bearer" = []))
)]
async fn daily(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<ReportQuery>,
) -> Result<Json<ReportPage<UsageView>>, ApiError> {
    let date = required_date(query.date.as_deref())?;
    let user_type = user_type(query.user_type.as_deref())?;
    let report = format!("daily/{date}/{}", user_type.map_or("all", UserType::as_str));
    let page = page_request(&report, &query)?;
    let page = state.usage.daily_report(date, user_type, &page).await?;
    Ok(Json(ReportPage {
        next_page_token: page.next.map(|next| page_token::encode(&report, &next)),
        items: page.items.into_iter().map(UsageView::from).collect(),
    }))
}

/// One month's aggregates across users, most tokens first (ties by user id).
#[utoipa::path(
    get,
    path = "/admin/usage/monthly",
    tag = "admin",
    params(
        ("year" = i32, Query, minimum = 1970, maximum = 9999),
        ("month" = u32, Query, minimum = 1, maximum = 12),
        ("userType" = Option<UserType>, Query, description = "Only users of this type"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Items per page (default 50)"),
        ("pageToken" = Option<String>, Query, description = "`nextPageToken` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of the month's aggregates", body = ReportPage<MonthlyUsage>),
        (status = 400, description = "An invalid parameter, named in the message", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid ID token", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String))),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
        (status = 500, description = "Internal error", body = ErrorEnvelope),
        (status = 503, description = "The store or the signing keys are unavailable", body = ErrorEnvelope,
         headers(("Retry-After" = u64))),
    ),
    security(("bearer" = []))
)]
async fn monthly(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<ReportQuery>,
) -> Result<Json<ReportPage<MonthlyUsage>>, ApiError> {
    let year = required_number("year", query.year.as_deref(), 1970, 9999)?;
    let month = required_number("month", query.month.as_deref(), 1, 12)?;
    let user_type = user_type(query.user_type.as_deref())?;
    let report = format!(
        "monthly/{year}/{month}/{}",
        user_type.map_or("all", UserType::as_str)
    );
    let page = page_request(&report, &query)?;
    let page = state
        .usage
        .monthly_report(year as i32, month as u32, user_type, &page)
        .await?;
    Ok(Json(ReportPage {
        next_page_token: page.next.map(|next| page_token::encode(&report, &next)),
        items: page.items,
    }))
}

/// One user's day and months, as the dashboard drills down.
#[derive(Serialize, utoipa::ToSchema)]
struct UserUsage {
    today: UsageView,
    history: Vec<MonthlyUsage>,
}

/// One user's usage today and their latest months.
#[utoipa::path(
    get,
    path = "/admin/users/{user_id}/usage",
    tag = "admin",
    params(
        ("user_id" = String, Path, description = "The user's uid"),
        ("months" = Option<u32>, Query, minimum = 1, maximum = 24, description = "How many months, 1 to 24 (default 3)"),
    ),
    responses(
        (status = 200, description = "The user's day and months", body = UserUsage),
        (status = 400, description = "An invalid parameter or user id", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid ID token", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String))),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
        (status = 404, description = "A user id that makes another path", body = ErrorEnvelope),
        (status = 500, description = "Internal error", body = ErrorEnvelope),
        (status = 503, description = "The store or the signing keys are unavailable", body = ErrorEnvelope,
         headers(("Retry-After" = u64))),
    ),
    security(("bearer" = []))
)]
async fn user_usage(
    State(state): State<AppState>,
    _: Admin,
    Path(user_id): Path<String>,
    AppQuery(query): AppQuery<ReportQuery>,
) -> Result<Json<UserUsage>, ApiError> {
    let user_id =
        UserId::parse(&user_id).map_err(|e| ApiError::InvalidUserId(format!("userId: {e}")))?;
    let months = match query.months.as_deref() {
        None => 3,
        raw => required_number("months", raw, 1, 24)? as u32,
    };
    // The user's plan is not known here: their stored day shows it.
    let (today, history) = tokio::try_join!(
        state.usage.today(user_id.clone(), None),
        state.usage.history(&user_id, months),
    )?;
    Ok(Json(UserUsage {
        today: today.into(),
        history,
    }))
}

/// Users with usage, their tokens, and the mean per user (0 with no users).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Totals {
    active_users: i64,
    total_tokens: i64,
    #[schema(format = Double)]
    average_tokens_per_user: f64,
}

impl From<UsageTotals> for Totals {
    fn from(totals: UsageTotals) -> Self {
        Self {
            active_users: totals.active_users,
            total_tokens: totals.total_tokens,
            average_tokens_per_user: if totals.active_users == 0 {
                0.0
            } else {
                totals.total_tokens as f64 / totals.active_users as f64
            },
        }
    }
}

/// One day across all users, and per user type.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Summary {
    date: NaiveDate,
    #[serde(flatten)]
    all: Totals,
    by_user_type: ByUserType,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ByUserType {
    trial: Totals,
    subscribed: Totals,
}

/// One day's active users and tokens, in all and per user type, counted by the store.
#[utoipa::path(
    get,
    path = "/admin/reports/summary",
    tag = "admin",
    params(("date" = NaiveDate, Query, description = "The day, YYYY-MM-DD")),
    responses(
        (status = 200, description = "The day's summary", body = Summary),
        (status = 400, description = "An invalid date", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid ID token", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String))),
        (status = 403, description = "Not an admin", body = ErrorEnvelope),
        (status = 500, description = "Internal error", body = ErrorEnvelope),
        (status = 503, description = "The store or the signing keys are unavailable", body = ErrorEnvelope,
         headers(("Retry-After" = u64))),
    ),
    security(("bearer" = []))
)]
async fn summary(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<ReportQuery>,
) -> Result<Json<Summary>, ApiError> {
    let date = required_date(query.date.as_deref())?;
    let summary = state.usage.daily_summary(date).await?;
    let all = UsageTotals {
        active_users: summary.trial.active_users + summary.subscribed.active_users,
        total_tokens: summary.trial.total_tokens + summary.subscribed.total_tokens,
    };
    Ok(Json(Summary {
        date,
        all: all.into(),
        by_user_type: ByUserType {
            trial: summary.trial.into(),
            subscribed: summary.subscribed.into(),
        },
    }))
}

fn required_date(raw: Option<&str>) -> Result<NaiveDate, ApiError> {
    let raw = raw.ok_or_else(|| invalid("date is required (YYYY-MM-DD)"))?;
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .filter(|date| raw.len() == 10 && (1970..=9999).contains(&chrono::Datelike::year(date)))
        .ok_or_else(|| invalid("date must be a calendar date as YYYY-MM-DD"))
}

fn required_number(name: &str, raw: Option<&str>, min: i64, max: i64) -> Result<i64, ApiError> {
    let message = || {
        invalid(&format!(
            "{name} must be a whole number from {min} to {max}"
        ))
    };
    let raw = raw.ok_or_else(message)?;
    raw.parse::<i64>()
        .ok()
        .filter(|number| (min..=max).contains(number))
        .ok_or_else(message)
}

fn user_type(raw: Option<&str>) -> Result<Option<UserType>, ApiError> {
    match raw {
        None => Ok(None),
        Some("trial") => Ok(Some(UserType::Trial)),
        Some("subscribed") => Ok(Some(UserType::Subscribed)),
        Some(_) => Err(invalid("userType must be trial or subscribed")),
    }
}

fn page_request(report: &str, query: &ReportQuery) -> Result<PageRequest, ApiError> {
    let limit = match query.limit.as_deref() {
        None => 50,
        raw => required_number("limit", raw, 1, 500)? as u32,
    };
    let after: Option<PageCursor> = query
        .page_token
        .as_deref()
        .map(|token| page_token::decode(report, token))
        .transpose()?;
    Ok(PageRequest { limit, after })
}

fn invalid(message: &str) -> ApiError {
    ApiError::InvalidRequest(message.to_owned())
}
