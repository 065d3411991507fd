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
use super::params::{Admin, DailyLimit, Limit, Month, Months, MonthsQuery, ReportDate, Year};
use super::usage::{StandingView, UsageView};
use super::views::MonthView;
use super::{ApiError, AppState};
use crate::usage::{
    DayRange, OverLimit, PageCursor, PageRequest, PlanSource, UsageTotals, UserId, UserType, WhatIf,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(daily))
        .routes(routes!(monthly))
        .routes(routes!(user_usage))
        .routes(routes!(summary))
        .routes(routes!(month_summary))
        .routes(routes!(what_if))
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

/// One page of a report or a listing.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReportPage<T> {
    pub items: Vec<T>,
    /// Pass as `pageToken` for the next page; `null` on the last page.
    pub next_page_token: Option<String>,
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

fn views_by_type(by_type: BTreeMap<UserType, UsageTotals>) -> BTreeMap<UserType, Totals> {
    by_type
        .into_iter()
        .map(|(user_type, totals)| (user_type, totals.into()))
        .collect()
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
        by_user_type: views_by_type(summary.by_type),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct MonthSummaryQuery {
    #[param(inline)]
    year: Year,
    #[param(inline)]
    month: Month,
}

/// One day of a month across all users.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct DayTotals {
    date: NaiveDate,
    #[serde(flatten)]
    totals: Totals,
}

/// One month across all users, and per user type, and each of its days across all users.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct MonthSummary {
    year: i32,
    month: u32,
    /// Users with tokens in the month (a month document's total above 0), each once.
    #[serde(flatten)]
    all: Totals,
    /// Every user type, by name: the type each month document was last written with.
    by_user_type: BTreeMap<UserType, Totals>,
    /// Every day of the month, in order, from the day documents; a day without usage counts
    /// zeros.
    days: Vec<DayTotals>,
}

/// One month's active users and tokens, in all and per user type, and its days' tokens across
/// all users, counted by the store at one instant.
#[utoipa::path(
    get,
    path = "/admin/reports/month",
    tag = "admin",
    params(MonthSummaryQuery),
    responses(
        (status = 200, description = "The month's summary", body = MonthSummary),
        (status = 400, description = "An invalid year or month, named in the message", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn month_summary(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<MonthSummaryQuery>,
) -> Result<Json<MonthSummary>, ApiError> {
    let (Year(year), Month(month)) = (query.year, query.month);
    let summary = state.usage.monthly_summary(year, month).await?;
    Ok(Json(MonthSummary {
        year,
        month,
        all: summary.all().into(),
        by_user_type: views_by_type(summary.by_type),
        days: summary
            .days
            .into_iter()
            .map(|(date, totals)| DayTotals {
                date,
                totals: totals.into(),
            })
            .collect(),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct WhatIfQuery {
    /// The users of this type.
    #[param(inline)]
    user_type: UserType,
    /// The daily limit to try, in tokens.
    #[param(inline)]
    daily_limit: DailyLimit,
    /// The first day, YYYY-MM-DD.
    #[param(inline)]
    from: ReportDate,
    /// The last day, YYYY-MM-DD, included: on or after `from`, at most 92 days counting both.
    #[param(inline)]
    to: ReportDate,
}

/// Users of the type measured against the limit tried. Over several days, a user counts once
/// per day.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = OverLimit)]
#[serde(rename_all = "camelCase")]
struct OverLimitView {
    /// Users who used tokens (above 0), as the summary counts them.
    active_users: i64,
    /// Users who used more tokens than the limit: those it would have refused.
    users_over_limit: i64,
    /// The tokens those users used above the limit: what it would have refused.
    tokens_over_limit: i64,
}

impl From<OverLimit> for OverLimitView {
    fn from(figures: OverLimit) -> Self {
        Self {
            active_users: figures.active_users,
            users_over_limit: figures.users_over_limit,
            tokens_over_limit: figures.tokens_over_limit,
        }
    }
}

/// One day of the range.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct WhatIfDay {
    /// The day.
    date: NaiveDate,
    #[serde(flatten)]
    figures: OverLimitView,
}

/// A daily limit tried against the stored usage of a range of days.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct WhatIfReport {
    /// The user type asked about.
    user_type: UserType,
    /// The limit tried.
    daily_limit: i64,
    /// The limit configured for the type now, to chart beside it.
    current_daily_limit: i64,
    /// The first day.
    from: NaiveDate,
    /// The last day, included.
    to: NaiveDate,
    /// Every day from `from` to `to`, in order; a day without usage counts zeros.
    days: Vec<WhatIfDay>,
    /// The days' figures summed.
    totals: OverLimitView,
}

impl From<WhatIf> for WhatIfReport {
    fn from(what_if: WhatIf) -> Self {
        Self {
            totals: what_if.totals().into(),
            user_type: what_if.user_type,
            daily_limit: what_if.daily_limit,
            current_daily_limit: what_if.current_daily_limit,
            from: what_if.range.from(),
            to: what_if.range.to(),
            days: what_if
                .days
                .into_iter()
                .map(|(date, figures)| WhatIfDay {
                    date,
                    figures: figures.into(),
                })
                .collect(),
        }
    }
}

/// A daily limit tried against past usage: per day, how many users of the type it would have
/// refused and how many tokens they used above it, counted by the store.
#[utoipa::path(
    get,
    path = "/admin/reports/what-if",
    tag = "admin",
    params(WhatIfQuery),
    responses(
        (status = 200, description = "The limit against each day of the range", body = WhatIfReport),
        (status = 400, description = "An invalid parameter or range, named in the message", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn what_if(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    _: Admin,
    AppQuery(query): AppQuery<WhatIfQuery>,
) -> Result<Json<WhatIfReport>, ApiError> {
    let (ReportDate(from), ReportDate(to)) = (query.from, query.to);
    let range = DayRange::new(from, to).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let DailyLimit(daily_limit) = query.daily_limit;
    let what_if = state
        .usage
        .what_if(query.user_type, daily_limit, range, deadline)
        .await?;
    Ok(Json(what_if.into()))
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
