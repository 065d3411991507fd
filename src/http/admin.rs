//! `/admin`: reports across all users for the dashboard; admins only.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::deadline::RequestDeadline;
use super::error::ErrorEnvelope;
use super::extract::AppQuery;
use super::page_token;
use super::params::{Admin, Limit, Month, Months, MonthsQuery, ReportDate, Year};
use super::usage::{StandingView, UsageView};
use super::views::MonthView;
use super::{ApiError, AppState};
use crate::usage::{PageCursor, PageRequest, PlanSource, UsageTotals, UserId, UserType};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(daily))
        .routes(routes!(monthly))
        .routes(routes!(user_usage))
        .routes(routes!(summary))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct DailyReportQuery {
    /// The day, YYYY-MM-DD.
    #[param(inline)]
    date: ReportDate,
    /// Only users of this type.
    #[param(inline)]
    user_type: Option<UserType>,
    /// Items per page (default 50).
    #[param(inline)]
    limit: Option<Limit>,
    /// `nextPageToken` of the previous page.
    page_token: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct MonthlyReportQuery {
    #[param(inline)]
    year: Year,
    #[param(inline)]
    month: Month,
    /// Only users of this type.
    #[param(inline)]
    user_type: Option<UserType>,
    /// Items per page (default 50).
    #[param(inline)]
    limit: Option<Limit>,
    /// `nextPageToken` of the previous page.
    page_token: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SummaryQuery {
    /// The day, YYYY-MM-DD.
    #[param(inline)]
    date: ReportDate,
}

/// One page of a report.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReportPage<T> {
    items: Vec<T>,
    /// Pass as `pageToken` for the next page; `null` on the last page.
    next_page_token: Option<String>,
}

/// One day's usage across the users who used tokens, most first (ties by user id).
#[utoipa::path(
    get,
    path = "/admin/usage/daily",
    tag = "admin",
    params(DailyReportQuery),
    responses(
        (status = 200, description = "A page of the day's usage objects", body = ReportPage<UsageView>),
        (status = 400, description = "An invalid parameter, named in the message", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn daily(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<DailyReportQuery>,
) -> Result<Json<ReportPage<UsageView>>, ApiError> {
    let ReportDate(date) = query.date;
    let user_type = query.user_type;
    let report = format!("daily/{date}/{}", user_type.map_or("all", UserType::as_str));
    let page = page_request(&report, query.limit, query.page_token.as_deref())?;
    let page = state.usage.daily_report(date, user_type, &page).await?;
    Ok(Json(ReportPage {
        next_page_token: page.next.map(|next| page_token::encode(&report, &next)),
        items: page.items.into_iter().map(UsageView::from).collect(),
    }))
}

/// One month's aggregates across the users who used tokens, most first (ties by user id).
#[utoipa::path(
    get,
    path = "/admin/usage/monthly",
    tag = "admin",
    params(MonthlyReportQuery),
    responses(
        (status = 200, description = "A page of the month's aggregates", body = ReportPage<MonthView>),
        (status = 400, description = "An invalid parameter, named in the message", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn monthly(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<MonthlyReportQuery>,
) -> Result<Json<ReportPage<MonthView>>, ApiError> {
    let (Year(year), Month(month), user_type) = (query.year, query.month, query.user_type);
    let report = format!(
        "monthly/{year}/{month}/{}",
        user_type.map_or("all", UserType::as_str)
    );
    let page = page_request(&report, query.limit, query.page_token.as_deref())?;
    let page = state
        .usage
        .monthly_report(year, month, user_type, &page)
        .await?;
    Ok(Json(ReportPage {
        next_page_token: page.next.map(|next| page_token::encode(&report, &next)),
        items: page.items.into_iter().map(MonthView::from).collect(),
    }))
}

/// One user's day and months, as the dashboard drills down.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UserUsage {
    today: StandingView,
    /// Where today's plan (`userType`, `tokenLimit`) was learned.
    plan_source: PlanSourceView,
    history: Vec<MonthView>,
}

/// `directory`: Firebase Auth, as the user's next request is judged. When it cannot be
/// reached: `stored`, the plan stored with the user's latest usage, or `default` when nothing
/// is stored.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum PlanSourceView {
    Directory,
    Stored,
    Default,
}

impl From<PlanSource> for PlanSourceView {
    fn from(source: PlanSource) -> Self {
        match source {
            PlanSource::Directory => Self::Directory,
            PlanSource::Stored => Self::Stored,
            PlanSource::Default => Self::Default,
        }
    }
}

/// One user's usage today and their latest months.
#[utoipa::path(
    get,
    path = "/admin/users/{user_id}/usage",
    tag = "admin",
    params(
        ("user_id" = String, Path, description = "The user's uid"),
        MonthsQuery,
    ),
    responses(
        (status = 200, description = "The user's day and months", body = UserUsage),
        (status = 400, description = "An invalid parameter or user id", body = ErrorEnvelope),
        (status = 404, description = "A user id that makes another path", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn user_usage(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    _: Admin,
    Path(user_id): Path<String>,
    AppQuery(query): AppQuery<MonthsQuery>,
) -> Result<Json<UserUsage>, ApiError> {
    let user_id =
        UserId::parse(&user_id).map_err(|e| ApiError::InvalidUserId(format!("userId: {e}")))?;
    let months = Months::or_default(query.months);
    let report = state.usage.user_report(&user_id, months, deadline).await?;
    Ok(Json(UserUsage {
        today: StandingView::new(&report.today, state.usage.soft_limit()),
        plan_source: report.plan_source.into(),
        history: report.history.into_iter().map(MonthView::from).collect(),
    }))
}

/// Users who used tokens (a reservation alone is no use), their tokens, and the mean per user
/// (0 with no users).
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
    /// Every user type, by name.
    by_user_type: BTreeMap<UserType, Totals>,
}

/// One day's active users and tokens, in all and per user type, counted by the store.
#[utoipa::path(
    get,
    path = "/admin/reports/summary",
    tag = "admin",
    params(SummaryQuery),
    responses(
        (status = 200, description = "The day's summary", body = Summary),
        (status = 400, description = "An invalid date", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn summary(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<SummaryQuery>,
) -> Result<Json<Summary>, ApiError> {
    let ReportDate(date) = query.date;
    let summary = state.usage.daily_summary(date).await?;
    Ok(Json(Summary {
        date,
        all: summary.all().into(),
        by_user_type: summary
            .by_type
            .into_iter()
            .map(|(user_type, totals)| (user_type, totals.into()))
            .collect(),
    }))
}

fn page_request(
    report: &str,
    limit: Option<Limit>,
    page_token: Option<&str>,
) -> Result<PageRequest, ApiError> {
    let after: Option<PageCursor> = page_token
        .map(|token| page_token::decode(report, token))
        .transpose()?;
    Ok(PageRequest {
        limit: Limit::or_default(limit),
        after,
    })
}
