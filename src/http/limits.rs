//! `/admin/users/{userId}/limit` and `/admin/limits`: per-user overrides of the configured
//! limits; `/admin/users/{userId}/reset`: a day set back to 0; and `/admin/audit`: the trail
//! of every admin change.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::ReportPage;
use super::deadline::RequestDeadline;
use super::error::ErrorEnvelope;
use super::extract::{AppJson, AppQuery};
use super::page_token;
use super::params::{Admin, IdempotencyKeyHeader, Limit};
use super::usage::{EnforcementView, StandingView, replayed};
use super::{ApiError, AppState};
use crate::usage::{
    AdminAct, AuditAction, AuditEntry, AuditQuery, Enforcement, LimitOverride, OverrideRequest,
    RecordOutcome, Standing, StoredAnswer, UserId,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(set_override, get_override, remove_override))
        .routes(routes!(active_overrides))
        .routes(routes!(reset))
        .routes(routes!(audit))
}

/// A per-user override.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OverrideBody {
    /// The user's daily limit while the override lasts: 0 to 10^12.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    daily_limit: i64,
    /// A monthly cap in place of the user type's; absent, the type's cap (if any) applies.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    monthly_limit: Option<i64>,
    /// A mode in place of the user type's.
    enforcement: Option<EnforcementView>,
    /// When the override ends: a future instant at most `OVERRIDE_MAX_DAYS` ahead; absent,
    /// exactly that far.
    expires_at: Option<DateTime<Utc>>,
    /// Why, for the audit trail: 1 to 500 characters.
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

/// `token_limit_overrides/{userId}`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct OverrideView {
    user_id: UserId,
    daily_limit: i64,
    monthly_limit: Option<i64>,
    enforcement: Option<EnforcementView>,
    expires_at: DateTime<Utc>,
    /// False once `expiresAt` has passed: the configured limits apply again.
    active: bool,
    reason: String,
    /// The admin who set it.
    set_by: UserId,
    set_at: DateTime<Utc>,
}

impl OverrideView {
    fn new(found: LimitOverride, now: DateTime<Utc>) -> Self {
        Self {
            active: found.active_at(now),
            user_id: found.user_id,
            daily_limit: found.daily_limit,
            monthly_limit: found.monthly_limit,
            enforcement: found.enforcement.map(EnforcementView::from),
            expires_at: found.expires_at,
            reason: found.reason,
            set_by: found.set_by,
            set_at: found.set_at,
        }
    }
}

/// The override as set, and the one it replaced.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct OverrideChanged {
    #[serde(rename = "override")]
    current: Option<OverrideView>,
    previous: Option<OverrideView>,
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::InvalidUserId(format!("userId: {e}")))
}

fn act(admin: Admin, reason: Option<String>, key: IdempotencyKeyHeader) -> AdminAct {
    AdminAct {
        actor: admin.0,
        reason,
        idempotency_key: key.0.map(|key| key.as_str().to_owned()),
    }
}

/// Override one user's limits until a set instant.
///
/// Replaces the user type's daily limit, and the monthly cap and mode when given, for that
/// user on their next request, on every instance. Audited with the override it replaced.
#[utoipa::path(
    put,
    path = "/admin/users/{user_id}/limit",
    tag = "admin",
    request_body = OverrideBody,
    params(("user_id" = String, Path, description = "The user's uid"), IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Set; with the override it replaced", body = OverrideChanged),
        (status = 400, description = "An invalid body or user id, named in the message", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn set_override(
    State(state): State<AppState>,
    admin: Admin,
    key: IdempotencyKeyHeader,
    Path(raw): Path<String>,
    AppJson(body): AppJson<OverrideBody>,
) -> Result<Json<OverrideChanged>, ApiError> {
    let user_id = user_id(&raw)?;
    let request = OverrideRequest {
        daily_limit: body.daily_limit,
        monthly_limit: body.monthly_limit,
        enforcement: body.enforcement.map(Enforcement::from),
        expires_at: body.expires_at,
        reason: body.reason,
    };
    let (set, before) = state
        .usage
        .set_limit_override(user_id, request, act(admin, None, key))
        .await?;
    let now = state.usage.now();
    Ok(Json(OverrideChanged {
        current: Some(OverrideView::new(set, now)),
        previous: before.map(|before| OverrideView::new(before, now)),
    }))
}

/// One user's override, active or expired.
#[utoipa::path(
    get,
    path = "/admin/users/{user_id}/limit",
    tag = "admin",
    params(("user_id" = String, Path, description = "The user's uid")),
    responses(
        (status = 200, description = "The stored override", body = OverrideView),
        (status = 400, description = "An invalid user id", body = ErrorEnvelope),
        (status = 404, description = "No override is stored for this user", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn get_override(
    State(state): State<AppState>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<OverrideView>, ApiError> {
    let found = state.usage.limit_override(&user_id(&raw)?).await?;
    let found = found.ok_or(ApiError::OverrideNotFound)?;
    Ok(Json(OverrideView::new(found, state.usage.now())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RemoveQuery {
    /// Why, for the audit trail (at most 500 characters).
    #[param(max_length = 500)]
    reason: Option<String>,
}

/// Remove one user's override: the configured limits apply again. Audited.
#[utoipa::path(
    delete,
    path = "/admin/users/{user_id}/limit",
    tag = "admin",
    params(("user_id" = String, Path, description = "The user's uid"), RemoveQuery, IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Removed; with the override removed", body = OverrideChanged),
        (status = 400, description = "An invalid user id or reason", body = ErrorEnvelope),
        (status = 404, description = "No override is stored for this user", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn remove_override(
    State(state): State<AppState>,
    admin: Admin,
    key: IdempotencyKeyHeader,
    Path(raw): Path<String>,
    AppQuery(query): AppQuery<RemoveQuery>,
) -> Result<(StatusCode, Json<OverrideChanged>), ApiError> {
    let user_id = user_id(&raw)?;
    if query
        .reason
        .as_ref()
        .is_some_and(|reason| reason.chars().count() > 500)
    {
        return Err(ApiError::InvalidRequest(
            "reason must be at most 500 characters".to_owned(),
        ));
    }
    let removed = state
        .usage
        .remove_limit_override(user_id, act(admin, query.reason, key))
        .await?
        .ok_or(ApiError::OverrideNotFound)?;
    Ok((
        StatusCode::OK,
        Json(OverrideChanged {
            current: None,
            previous: Some(OverrideView::new(removed, state.usage.now())),
        }),
    ))
}

/// A reset of one user's day.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResetBody {
    /// The day, `YYYY-MM-DD` in `RESET_TIMEZONE`, today or earlier; absent, today.
    date: Option<chrono::NaiveDate>,
    /// Why, for the audit trail: 1 to 500 characters.
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

/// The day after its reset, and the tokens it had.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ResetAnswer {
    usage: StandingView,
    /// The day's `tokensUsed` before the reset; absent in a replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_before: Option<i64>,
}

/// Reset one user's day: its tokens to 0, and its month's entry, in one write, audited.
///
/// Holds of open reservations stay. With an `Idempotency-Key`, a retry replays the first
/// answer and resets (and audits) once.
#[utoipa::path(
    post,
    path = "/admin/users/{user_id}/reset",
    tag = "admin",
    request_body = ResetBody,
    params(("user_id" = String, Path, description = "The user's uid"), IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Reset, or replayed", body = ResetAnswer,
         headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "An invalid body, date or user id, named in the message", body = ErrorEnvelope),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn reset(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    admin: Admin,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    Path(raw): Path<String>,
    AppJson(body): AppJson<ResetBody>,
) -> Result<Response, ApiError> {
    let user_id = user_id(&raw)?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::InvalidRequest(
            "reason must be 1 to 500 characters".to_owned(),
        ));
    }
    let act = AdminAct {
        actor: admin.0,
        reason: Some(reason.to_owned()),
        idempotency_key: None,
    };
    let outcome = state
        .usage
        .reset(user_id, body.date, act, key, deadline)
        .await?;
    let soft_limit = state.usage.soft_limit();
    let answer = |standing: &Standing, tokens_before| ResetAnswer {
        usage: StandingView::new(standing, soft_limit),
        tokens_before,
    };
    Ok(match outcome {
        RecordOutcome::Reset {
            standing,
            tokens_before,
        } => Json(answer(&standing, Some(tokens_before))).into_response(),
        RecordOutcome::Replayed(StoredAnswer::Recorded(standing)) => {
            replayed(Json(answer(&standing, None)).into_response())
        }
        _ => return Err(ApiError::IdempotencyKeyReused),
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct ListQuery {
    /// Users looked at per page (default 50); expired overrides among them are left out.
    #[param(inline)]
    limit: Option<Limit>,
    /// `nextPageToken` of the previous page.
    page_token: Option<String>,
}

const OVERRIDES_LISTING: &str = "limits";

/// The overrides active now, by user id.
#[utoipa::path(
    get,
    path = "/admin/limits",
    tag = "admin",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of active overrides (may hold fewer than `limit`)", body = ReportPage<OverrideView>),
        (status = 400, description = "An invalid parameter, named in the message", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn active_overrides(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<ReportPage<OverrideView>>, ApiError> {
    let after = query
        .page_token
        .as_deref()
        .map(|raw| page_token::decode_after(OVERRIDES_LISTING, raw))
        .transpose()?;
    let (items, next) = state
        .usage
        .active_overrides(after.as_ref(), Limit::or_default(query.limit))
        .await?;
    let now = state.usage.now();
    Ok(Json(ReportPage {
        items: items
            .into_iter()
            .map(|found| OverrideView::new(found, now))
            .collect(),
        next_page_token: next.map(|last| page_token::encode_after(OVERRIDES_LISTING, &last)),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct AuditListQuery {
    /// Only changes about this user.
    user_id: Option<String>,
    /// Only changes by this admin.
    actor: Option<String>,
    /// Only changes made at or after this instant (RFC 3339).
    since: Option<DateTime<Utc>>,
    /// Entries per page (default 50).
    #[param(inline)]
    limit: Option<Limit>,
    /// `nextPageToken` of the previous page.
    page_token: Option<String>,
}

/// What was changed: an override set or removed, a day reset, usage recorded for another
/// user, a commit of a lifecycle command (`rebuild-history`, `cleanup`, `archive`,
/// `import`), or a threshold event sent again.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum AuditActionView {
    OverrideSet,
    OverrideRemoved,
    UsageReset,
    UsageRecorded,
    HistoryRebuilt,
    DaysDeleted,
    MonthsArchived,
    DocumentsImported,
    NotificationRedelivered,
}

/// One admin change.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AuditView {
    id: String,
    at: DateTime<Utc>,
    /// The admin's uid.
    actor: UserId,
    action: AuditActionView,
    /// The user the change is about; null for a lifecycle command's batch, whose `before`
    /// and `after` name the documents.
    user_id: Option<UserId>,
    /// What was changed, as it was; null when absent.
    before: Option<serde_json::Value>,
    /// As it became; null when removed.
    after: Option<serde_json::Value>,
    idempotency_key: Option<String>,
    reason: Option<String>,
}

impl From<AuditEntry> for AuditView {
    fn from(entry: AuditEntry) -> Self {
        Self {
            id: entry.id,
            at: entry.at,
            actor: entry.actor,
            action: match entry.action {
                AuditAction::OverrideSet => AuditActionView::OverrideSet,
                AuditAction::OverrideRemoved => AuditActionView::OverrideRemoved,
                AuditAction::UsageReset => AuditActionView::UsageReset,
                AuditAction::UsageRecorded => AuditActionView::UsageRecorded,
                AuditAction::HistoryRebuilt => AuditActionView::HistoryRebuilt,
                AuditAction::DaysDeleted => AuditActionView::DaysDeleted,
                AuditAction::MonthsArchived => AuditActionView::MonthsArchived,
                AuditAction::DocumentsImported => AuditActionView::DocumentsImported,
                AuditAction::NotificationRedelivered => AuditActionView::NotificationRedelivered,
            },
            user_id: entry.user_id,
            before: entry.before,
            after: entry.after,
            idempotency_key: entry.idempotency_key,
            reason: entry.reason,
        }
    }
}

/// The audit trail, newest first.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    params(AuditListQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = ReportPage<AuditView>),
        (status = 400, description = "An invalid parameter, named in the message", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn audit(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<AuditListQuery>,
) -> Result<Json<ReportPage<AuditView>>, ApiError> {
    let user = |raw: Option<String>, field: &str| {
        raw.map(|raw| {
            UserId::parse(&raw).map_err(|e| ApiError::InvalidUserId(format!("{field}: {e}")))
        })
        .transpose()
    };
    let report = format!(
        "audit/{}/{}/{}",
        query.user_id.as_deref().unwrap_or(""),
        query.actor.as_deref().unwrap_or(""),
        query
            .since
            .map(|since| since.to_rfc3339())
            .unwrap_or_default()
    );
    let after = query
        .page_token
        .as_deref()
        .map(|raw| page_token::decode_after(&report, raw))
        .transpose()?;
    let request = AuditQuery {
        user_id: user(query.user_id, "userId")?,
        actor: user(query.actor, "actor")?,
        since: query.since,
        limit: Limit::or_default(query.limit),
        after: after.map(|id| id.as_str().to_owned()),
    };
    let (entries, next) = state.usage.audit(&request).await?;
    let next_page_token = next
        .map(|id| UserId::parse(&id).map(|id| page_token::encode_after(&report, &id)))
        .transpose()
        .map_err(|e| ApiError::Internal(format!("an audit id is not a key: {e}")))?;
    Ok(Json(ReportPage {
        items: entries.into_iter().map(AuditView::from).collect(),
        next_page_token,
    }))
}
