//! `/usage`: check-and-record, today's figures and the monthly history of the caller.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ErrorBody, ErrorEnvelope};
use super::extract::{AppJson, AppQuery};
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::store::RecordOutcome;
use crate::usage::{DailyUsage, IdempotencyKey, MonthlyUsage, UserId};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(record))
        .routes(routes!(today))
        .routes(routes!(history))
}

/// Tokens to check and record.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RecordBody {
    /// 1 to `MAX_TOKENS_PER_REQUEST` (1,000,000 unless configured otherwise).
    #[schema(minimum = 1, maximum = 1_000_000, example = 1250)]
    tokens: i64,
    /// The user to count; only an admin may name someone else. Defaults to the caller.
    #[schema(min_length = 1, max_length = 128)]
    user_id: Option<String>,
}

/// A user's day: the usage object.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    #[serde(flatten)]
    day: DailyUsage,
    /// `max(0, tokenLimit - tokensUsed)`.
    remaining: i64,
}

impl From<DailyUsage> for UsageView {
    fn from(day: DailyUsage) -> Self {
        Self {
            remaining: day.remaining(),
            day,
        }
    }
}

/// The answer to a check: the day as it stands, whether the tokens were admitted, and on a
/// denial why.
#[derive(Serialize, utoipa::ToSchema)]
struct RecordAnswer {
    #[serde(flatten)]
    usage: UsageView,
    allowed: bool,
    /// Present when `allowed` is false: `daily_limit_exceeded`.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

/// Check and record usage, atomically.
///
/// Admits the tokens and counts them exactly once when the day's total stays within the
/// caller's limit; otherwise records nothing and answers 429.
#[utoipa::path(
    post,
    path = "/usage",
    tag = "usage",
    request_body = RecordBody,
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$",
         description = "A retry with the same key and body within 24 hours is answered as the first request and counted once"),
    ),
    responses(
        (status = 200, description = "Admitted and recorded, or replayed", body = RecordAnswer,
         headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "Invalid body, user id or Idempotency-Key", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid ID token", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String))),
        (status = 403, description = "Only an admin may record for another user", body = ErrorEnvelope),
        (status = 413, description = "Body too large", body = ErrorEnvelope),
        (status = 415, description = "Body is not JSON", body = ErrorEnvelope),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorEnvelope),
        (status = 429, description = "The daily limit would be exceeded; nothing recorded", body = RecordAnswer,
         headers(("Retry-After" = u64, description = "Seconds until the limit resets"))),
        (status = 500, description = "Internal error", body = ErrorEnvelope),
        (status = 503, description = "The store or the signing keys are unavailable; nothing recorded", body = ErrorEnvelope,
         headers(("Retry-After" = u64))),
    ),
    security(("bearer" = []))
)]
async fn record(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    AppJson(body): AppJson<RecordBody>,
) -> Result<Response, ApiError> {
    let caller = caller_id(&principal)?;
    let max = state.max_tokens_per_request;
    if !(1..=max).contains(&body.tokens) {
        return Err(ApiError::InvalidRequest(format!(
            "tokens must be an integer from 1 to {max}"
        )));
    }
    let user_id = match body.user_id {
        None => caller.clone(),
        Some(raw) => {
            UserId::parse(&raw).map_err(|e| ApiError::InvalidUserId(format!("userId: {e}")))?
        }
    };
    if user_id != caller && !principal.admin {
        return Err(ApiError::Forbidden(
            "only an admin may record usage for another user",
        ));
    }
    // An admin acting for someone else does not know their plan: the stored one applies.
    let user_type = (user_id == caller).then_some(principal.user_type);
    let idempotency_key = idempotency_key(&headers)?;

    let outcome = state
        .usage
        .record(user_id, user_type, body.tokens, idempotency_key)
        .await?;
    Ok(match outcome {
        RecordOutcome::Admitted(day) => admitted(day).into_response(),
        RecordOutcome::Replayed(day) => {
            let mut response = admitted(day).into_response();
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            response
        }
        RecordOutcome::Denied(day) => denied(day),
        RecordOutcome::KeyReused => return Err(ApiError::IdempotencyKeyReused),
    })
}

fn admitted(day: DailyUsage) -> Json<RecordAnswer> {
    Json(RecordAnswer {
        usage: day.into(),
        allowed: true,
        error: None,
    })
}

fn denied(day: DailyUsage) -> Response {
    let retry_after = day.seconds_until_reset(Utc::now());
    let answer = RecordAnswer {
        error: Some(ErrorBody {
            code: "daily_limit_exceeded".to_owned(),
            message: format!(
                "the daily limit of {} tokens would be exceeded; it resets at {}",
                day.token_limit,
                day.reset_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        }),
        usage: day.into(),
        allowed: false,
    };
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after.to_string())],
        Json(answer),
    )
        .into_response()
}

/// The caller's usage today.
///
/// Zeros and today's limit when nothing was recorded yet; reading never creates a document.
#[utoipa::path(
    get,
    path = "/usage/today",
    tag = "usage",
    responses(
        (status = 200, description = "The caller's day", body = UsageView),
        (status = 400, description = "The caller's uid cannot name a document", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid ID token", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String))),
        (status = 500, description = "Internal error", body = ErrorEnvelope),
        (status = 503, description = "The store or the signing keys are unavailable", body = ErrorEnvelope,
         headers(("Retry-After" = u64))),
    ),
    security(("bearer" = []))
)]
async fn today(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<UsageView>, ApiError> {
    let caller = caller_id(&principal)?;
    let day = state.usage.today(caller, Some(principal.user_type)).await?;
    Ok(Json(day.into()))
}

#[derive(Deserialize)]
struct HistoryQuery {
    months: Option<u32>,
}

/// The caller's months, newest first.
#[derive(Serialize, utoipa::ToSchema)]
struct HistoryAnswer {
    items: Vec<MonthlyUsage>,
}

/// The caller's monthly aggregates, newest first.
#[utoipa::path(
    get,
    path = "/usage/history",
    tag = "usage",
    params(("months" = Option<u32>, Query, minimum = 1, maximum = 24, description = "How many months, 1 to 24 (default 3)")),
    responses(
        (status = 200, description = "The caller's months", body = HistoryAnswer),
        (status = 400, description = "Invalid months, or a uid that cannot name a document", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid ID token", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String))),
        (status = 500, description = "Internal error", body = ErrorEnvelope),
        (status = 503, description = "The store or the signing keys are unavailable", body = ErrorEnvelope,
         headers(("Retry-After" = u64))),
    ),
    security(("bearer" = []))
)]
async fn history(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(query): AppQuery<HistoryQuery>,
) -> Result<Json<HistoryAnswer>, ApiError> {
    let caller = caller_id(&principal)?;
    let months = query.months.unwrap_or(3);
    if !(1..=24).contains(&months) {
        return Err(ApiError::InvalidRequest(
            "months must be from 1 to 24".to_owned(),
        ));
    }
    let items = state.usage.history(&caller, months).await?;
    Ok(Json(HistoryAnswer { items }))
}

/// The caller's uid as a document-safe user id.
fn caller_id(principal: &Principal) -> Result<UserId, ApiError> {
    UserId::parse(&principal.uid).map_err(|e| ApiError::InvalidUserId(format!("uid: {e}")))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let invalid = |e: &dyn std::fmt::Display| ApiError::InvalidRequest(e.to_string());
    let raw = value
        .to_str()
        .map_err(|_| invalid(&crate::usage::InvalidIdempotencyKey))?;
    IdempotencyKey::parse(raw)
        .map(Some)
        .map_err(|e| invalid(&e))
}
