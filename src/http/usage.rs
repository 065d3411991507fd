//! `/usage`: check-and-record, today's figures and the monthly history of the caller.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::deadline::RequestDeadline;
use super::error::{ErrorBody, ErrorEnvelope};
use super::extract::{AppJson, AppQuery};
use super::params::{Caller, IdempotencyKeyHeader, Months, MonthsQuery};
use super::views::{DayView, MonthView};
use super::{ApiError, AppState};
use crate::usage::{
    DailyUsage, RecordOutcome, Standing, StoredAnswer, Subject, TypeSource, UserId, UserType,
};

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
pub(super) struct RecordBody {
    /// 1 to `MAX_TOKENS_PER_REQUEST`.
    #[schema(minimum = 1, example = 1250)]
    tokens: i64,
    /// The user to count; only an admin may name someone else. Defaults to the caller.
    #[schema(min_length = 1, max_length = 128)]
    user_id: Option<String>,
    /// The counted user's plan, stated by an admin acting for them. Without it, their plan is
    /// looked up in Firebase Auth. Not allowed when counting oneself: the token says.
    user_type: Option<UserType>,
}

/// A user's day: the usage object.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    #[serde(flatten)]
    day: DayView,
    /// Tokens held by open reservations (replies being streamed). Absent from reports, which
    /// count committed tokens only.
    #[serde(skip_serializing_if = "Option::is_none")]
    reserved_tokens: Option<i64>,
    /// `max(0, tokenLimit - tokensUsed - reservedTokens)`.
    remaining: i64,
}

/// A report's item: committed tokens only.
impl From<DailyUsage> for UsageView {
    fn from(day: DailyUsage) -> Self {
        Self {
            remaining: day.remaining(),
            reserved_tokens: None,
            day: day.into(),
        }
    }
}

impl From<Standing> for UsageView {
    fn from(standing: Standing) -> Self {
        Self {
            remaining: standing.remaining(),
            reserved_tokens: Some(standing.reserved_tokens),
            day: standing.day.into(),
        }
    }
}

/// The answer to a check: the day as it stands, whether the tokens were admitted, and on a
/// denial why.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct RecordAnswer {
    #[serde(flatten)]
    usage: UsageView,
    allowed: bool,
    /// Present when `allowed` is false: `daily_limit_exceeded` (or, for a reservation,
    /// `too_many_reservations`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

/// Check and record usage, atomically.
///
/// Admits the tokens and counts them exactly once when the day's total stays within the
/// counted user's limit; otherwise records nothing and answers 429.
#[utoipa::path(
    post,
    path = "/usage",
    tag = "usage",
    request_body = RecordBody,
    params(IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Admitted and recorded, or replayed", body = RecordAnswer,
         headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "Invalid body, user id or Idempotency-Key", body = ErrorEnvelope),
        (status = 403, description = "Only an admin may record for another user", body = ErrorEnvelope),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorEnvelope),
        (status = 429, description = "The daily limit would be exceeded (tokens used and held count); nothing recorded", body = RecordAnswer,
         headers(("Retry-After" = u64, description = "Seconds until the limit resets"))),
    ),
    security(("bearer" = []))
)]
async fn record(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    caller: Caller,
    IdempotencyKeyHeader(idempotency_key): IdempotencyKeyHeader,
    AppJson(body): AppJson<RecordBody>,
) -> Result<Response, ApiError> {
    let tokens = state.tokens(body.tokens)?;
    let subject = subject(&caller, body.user_id, body.user_type)?;
    let outcome = state
        .usage
        .record(subject, tokens, idempotency_key, deadline)
        .await?;
    Ok(match outcome {
        RecordOutcome::Admitted(standing) => admitted(standing).into_response(),
        RecordOutcome::Replayed(StoredAnswer::Recorded(standing)) => {
            replayed(admitted(standing).into_response())
        }
        RecordOutcome::Denied(standing) => denied(standing, state.usage.now()),
        // A key's fingerprint names its kind of request, so any other outcome is a key reused.
        _ => return Err(ApiError::IdempotencyKeyReused),
    })
}

/// Marks an answer as the replay of an earlier request's.
pub(super) fn replayed(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    response
}

/// The user a request names in `userId` (the caller when it names none); only an admin may
/// name another, else `forbidden` says what was refused.
pub(super) fn acted_for(
    caller: &Caller,
    user_id: Option<String>,
    forbidden: &'static str,
) -> Result<UserId, ApiError> {
    let Some(raw) = user_id else {
        return Ok(caller.user_id.clone());
    };
    let user_id =
        UserId::parse(&raw).map_err(|e| ApiError::InvalidUserId(format!("userId: {e}")))?;
    if user_id != caller.user_id && !caller.principal.admin {
        return Err(ApiError::Forbidden(forbidden));
    }
    Ok(user_id)
}

/// Whom a record counts, and how their plan is known: the caller's own token, or for an
/// admin acting for another user, what the admin states or else the user directory.
pub(super) fn subject(
    caller: &Caller,
    user_id: Option<String>,
    stated_type: Option<UserType>,
) -> Result<Subject, ApiError> {
    let user_id = acted_for(
        caller,
        user_id,
        "only an admin may record usage for another user",
    )?;
    let user_type = match (user_id == caller.user_id, stated_type) {
        (true, Some(_)) => {
            return Err(ApiError::InvalidRequest(
                "userType is only for an admin recording for another user: your own plan \
                 comes from your ID token"
                    .to_owned(),
            ));
        }
        (true, None) => TypeSource::OwnToken(caller.principal.user_type),
        (false, Some(user_type)) => TypeSource::Stated(user_type),
        (false, None) => TypeSource::Directory,
    };
    Ok(Subject { user_id, user_type })
}

fn admitted(standing: Standing) -> Json<RecordAnswer> {
    Json(RecordAnswer {
        usage: standing.into(),
        allowed: true,
        error: None,
    })
}

/// 429: the day cannot take the tokens; the same answer for a record and a reservation.
pub(super) fn denied(standing: Standing, now: DateTime<Utc>) -> Response {
    let day = &standing.day;
    let retry_after = day.seconds_until_reset(now);
    let error = ErrorBody {
        code: "daily_limit_exceeded".to_owned(),
        message: format!(
            "the daily limit of {} tokens would be exceeded; it resets at {}",
            day.token_limit,
            day.reset_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    };
    refused_429(standing, error, retry_after)
}

/// A 429 with the day as it stands, why, and when to try again.
pub(super) fn refused_429(standing: Standing, error: ErrorBody, retry_after_secs: i64) -> Response {
    let answer = RecordAnswer {
        error: Some(error),
        usage: standing.into(),
        allowed: false,
    };
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after_secs.to_string())],
        Json(answer),
    )
        .into_response()
}

/// The caller's usage today.
///
/// Zeros and today's limit when nothing was recorded yet; reading never creates a document.
/// `reservedTokens` are held by the caller's open reservations.
#[utoipa::path(
    get,
    path = "/usage/today",
    tag = "usage",
    responses(
        (status = 200, description = "The caller's day", body = UsageView),
        (status = 400, description = "The caller's uid cannot name a document", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn today(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    caller: Caller,
) -> Result<Json<UsageView>, ApiError> {
    let subject = Subject {
        user_type: TypeSource::OwnToken(caller.principal.user_type),
        user_id: caller.user_id,
    };
    Ok(Json(state.usage.today(&subject, deadline).await?.into()))
}

/// The caller's months, newest first.
#[derive(Serialize, utoipa::ToSchema)]
struct HistoryAnswer {
    items: Vec<MonthView>,
}

/// The caller's monthly aggregates, newest first.
#[utoipa::path(
    get,
    path = "/usage/history",
    tag = "usage",
    params(MonthsQuery),
    responses(
        (status = 200, description = "The caller's months", body = HistoryAnswer),
        (status = 400, description = "Invalid months, or a uid that cannot name a document", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn history(
    State(state): State<AppState>,
    caller: Caller,
    AppQuery(query): AppQuery<MonthsQuery>,
) -> Result<Json<HistoryAnswer>, ApiError> {
    let months = Months::or_default(query.months);
    let items = state.usage.history(&caller.user_id, months).await?;
    Ok(Json(HistoryAnswer {
        items: items.into_iter().map(MonthView::from).collect(),
    }))
}
