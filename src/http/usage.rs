//! `/usage`: check-and-record, today's figures and the monthly history of the caller.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::error::ErrorBody;
use super::extract::{AppJson, AppQuery};
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::store::RecordOutcome;
use crate::usage::{DailyUsage, IdempotencyKey, MonthlyUsage, UserId};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/usage", post(record))
        .route("/usage/today", get(today))
        .route("/usage/history", get(history))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RecordBody {
    tokens: i64,
    user_id: Option<String>,
}

/// The usage object of the contract.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    #[serde(flatten)]
    day: DailyUsage,
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

#[derive(Serialize)]
struct RecordAnswer<'a> {
    #[serde(flatten)]
    usage: UsageView,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody<'a>>,
}

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

fn admitted(day: DailyUsage) -> Json<RecordAnswer<'static>> {
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
            code: "daily_limit_exceeded",
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

#[derive(Serialize)]
struct HistoryAnswer {
    items: Vec<MonthlyUsage>,
}

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
