//! `/usage/reservations`: hold an estimate before a streamed reply, settle the actual after.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::deadline::RequestDeadline;
use super::error::{ErrorBody, ErrorEnvelope};
use super::extract::{AppJson, AppQuery};
use super::params::{Caller, IdempotencyKeyHeader};
use super::usage::{
    RecordAnswer, StandingView, acted_for, denied, refused_429, replayed, subject, usage_answer,
};
use super::{ApiError, AppState};
use crate::usage::{
    MAX_ENTRIES_PER_DAY, RecordOutcome, Reservation, ReservationId, ReservationRefusal, Settlement,
    Share, Standing, StoredAnswer, UserId, UserType,
};

/// When a crowded day may take a reservation again: settled entries are forgotten within
/// minutes, so a minute is a fair wait.
const CROWDED_RETRY_AFTER_SECS: i64 = 60;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(reserve))
        .routes(routes!(commit))
        .routes(routes!(release))
}

/// An estimate to hold for a reply.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ReserveBody {
    /// The estimate: 1 to `MAX_TOKENS_PER_REQUEST`.
    #[schema(minimum = 1, example = 4000)]
    tokens: i64,
    /// How long to hold it: 1 to `RESERVATION_MAX_TTL_SECS` (default
    /// `RESERVATION_DEFAULT_TTL_SECS`).
    #[schema(minimum = 1, example = 600)]
    ttl_seconds: Option<i64>,
    /// The user to hold for; only an admin may name someone else. Defaults to the caller.
    #[schema(min_length = 1, max_length = 128)]
    user_id: Option<String>,
    /// The held user's plan, stated by an admin acting for them; as for `POST /usage`.
    user_type: Option<UserType>,
}

/// What a reserved reply spent.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CommitBody {
    /// Tokens spent (prompt and reply): 1 to `MAX_TOKENS_PER_REQUEST`, recorded in full even
    /// above the estimate.
    #[schema(minimum = 1, example = 3650)]
    tokens: i64,
    /// The reservation's user, for an admin acting for them. Defaults to the caller.
    #[schema(min_length = 1, max_length = 128)]
    user_id: Option<String>,
}

/// `?userId=`: the reservation's user, for an admin acting for them.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct OwnerQuery {
    /// Defaults to the caller.
    #[serde(rename = "userId")]
    #[param(rename = "userId")]
    user_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum ReservationStatus {
    Held,
    Committed,
    Released,
}

/// A reservation and the day it counts on.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ReservationAnswer {
    /// Names the reservation in its commit or release.
    #[schema(example = "20240115-1705314600-9f86d081884c7d65")]
    id: String,
    /// `held` until committed or released; a held reservation stops holding at `expiresAt`.
    status: ReservationStatus,
    /// The estimate held.
    tokens: i64,
    /// The day, in `RESET_TIMEZONE`, whose usage it counts on, even if committed after
    /// midnight.
    date: NaiveDate,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// Once committed: the tokens recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    committed_tokens: Option<i64>,
    /// Tokens committed above the estimate, when there were any: they were recorded in full.
    #[serde(skip_serializing_if = "Option::is_none")]
    overage: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    settled_at: Option<DateTime<Utc>>,
    /// The user's standing after this request.
    usage: StandingView,
}

impl ReservationAnswer {
    fn new(reservation: Reservation, standing: &Standing, soft_limit: Share) -> Self {
        let overage = reservation.overage();
        let entry = reservation.entry;
        let (status, committed_tokens, settled_at) = match entry.settlement {
            None => (ReservationStatus::Held, None, None),
            Some(Settlement::Committed {
                committed_tokens,
                settled_at,
            }) => (
                ReservationStatus::Committed,
                Some(committed_tokens),
                Some(settled_at),
            ),
            Some(Settlement::Released { settled_at }) => {
                (ReservationStatus::Released, None, Some(settled_at))
            }
        };
        Self {
            id: reservation.id.to_string(),
            date: reservation.id.date(),
            status,
            tokens: entry.tokens,
            created_at: entry.created_at,
            expires_at: entry.expires_at,
            committed_tokens,
            overage,
            settled_at,
            usage: StandingView::new(standing, soft_limit),
        }
    }
}

/// Hold an estimate before a streamed reply.
///
/// Admitted only if the tokens used today, the tokens held by open reservations and this
/// estimate together stay within the limit; then the estimate is held until it is committed,
/// released, or expires. Nothing is recorded yet.
#[utoipa::path(
    post,
    path = "/usage/reservations",
    tag = "usage",
    request_body = ReserveBody,
    params(IdempotencyKeyHeader),
    responses(
        (status = 201, description = "Held (or replayed)", body = ReservationAnswer,
         headers(("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"))),
        (status = 400, description = "Invalid body, user id, ttlSeconds or Idempotency-Key", body = ErrorEnvelope),
        (status = 403, description = "Only an admin may reserve for another user", body = ErrorEnvelope),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorEnvelope),
        (status = 429, description = "The daily limit would be exceeded (`daily_limit_exceeded`, with the usage object), or the day keeps too many reservations (`too_many_reservations`); nothing held", body = RecordAnswer,
         headers(("Retry-After" = u64, description = "Seconds until the limit resets (60 for `too_many_reservations`)"))),
    ),
    security(("bearer" = []))
)]
async fn reserve(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    caller: Caller,
    IdempotencyKeyHeader(idempotency_key): IdempotencyKeyHeader,
    AppJson(body): AppJson<ReserveBody>,
) -> Result<Response, ApiError> {
    let tokens = state.tokens(body.tokens)?;
    let max_ttl = state.usage.reservation_rules().max_ttl;
    let ttl = match body.ttl_seconds {
        None => None,
        Some(seconds) if (1..=max_ttl.num_seconds()).contains(&seconds) => {
            Some(chrono::Duration::seconds(seconds))
        }
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "ttlSeconds must be an integer from 1 to {}",
                max_ttl.num_seconds()
            )));
        }
    };
    let subject = subject(&caller, body.user_id, body.user_type)?;
    let outcome = state
        .usage
        .reserve(subject, tokens, ttl, idempotency_key, deadline)
        .await?;
    Ok(match outcome {
        RecordOutcome::Reserved(reservation, standing) => created(&state, reservation, &standing),
        RecordOutcome::Replayed(StoredAnswer::Reserved(reservation, standing)) => {
            replayed(created(&state, reservation, &standing))
        }
        RecordOutcome::Denied(standing) => denied(&state, &standing),
        RecordOutcome::Crowded(standing) => {
            let error = ErrorBody {
                code: "too_many_reservations".to_owned(),
                message: format!(
                    "this day keeps {MAX_ENTRIES_PER_DAY} reservations, as many as it may; \
                     commit or release open ones, or retry once settled ones are forgotten"
                ),
            };
            refused_429(&state, &standing, error, CROWDED_RETRY_AFTER_SECS)
        }
        // A key's fingerprint names its kind of request, so any other outcome is a key reused.
        _ => return Err(ApiError::IdempotencyKeyReused),
    })
}

fn created(state: &AppState, reservation: Reservation, standing: &Standing) -> Response {
    let answer = ReservationAnswer::new(reservation, standing, state.usage.soft_limit());
    usage_answer(StatusCode::CREATED, answer, standing, state.usage.now())
}

/// Record what a reserved reply spent, and end its hold.
///
/// Records the tokens exactly once, on the day the reservation was made, even after
/// midnight; above the estimate they are recorded in full and flagged as `overage`. The same
/// commit again replays its answer; another figure is 409. After `expiresAt` (plus
/// `RESERVATION_COMMIT_GRACE_SECS`) it is 410.
#[utoipa::path(
    post,
    path = "/usage/reservations/{id}/commit",
    tag = "usage",
    request_body = CommitBody,
    params(("id" = String, Path, description = "The reservation's id")),
    responses(
        (status = 200, description = "Committed (or replayed)", body = ReservationAnswer,
         headers(("Idempotent-Replayed" = String, description = "`true` when it was already committed with these tokens"))),
        (status = 400, description = "Invalid body or user id", body = ErrorEnvelope),
        (status = 403, description = "Only an admin may commit for another user", body = ErrorEnvelope),
        (status = 404, description = "No such reservation for this user", body = ErrorEnvelope),
        (status = 409, description = "Already committed with other tokens, or released", body = ErrorEnvelope),
        (status = 410, description = "Expired before it was committed", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn commit(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    caller: Caller,
    Path(id): Path<String>,
    AppJson(body): AppJson<CommitBody>,
) -> Result<Response, ApiError> {
    let tokens = state.tokens(body.tokens)?;
    let owner = owner(&caller, body.user_id)?;
    let id = ReservationId::parse(&id).map_err(|_| ApiError::ReservationNotFound)?;
    let acting_admin = (owner != caller.user_id).then(|| caller.user_id.clone());
    let outcome = state
        .usage
        .commit(owner, id, tokens, acting_admin, deadline)
        .await?;
    settled(&state, outcome)
}

/// Give a reservation back unspent.
///
/// Ends the hold and records nothing. Releasing again replays; a committed reservation is 409,
/// an expired one 410. When a reply failed after spending tokens, commit what was spent
/// instead.
#[utoipa::path(
    delete,
    path = "/usage/reservations/{id}",
    tag = "usage",
    params(("id" = String, Path, description = "The reservation's id"), OwnerQuery),
    responses(
        (status = 200, description = "Released (or replayed)", body = ReservationAnswer,
         headers(("Idempotent-Replayed" = String, description = "`true` when it was already released"))),
        (status = 400, description = "Invalid user id", body = ErrorEnvelope),
        (status = 403, description = "Only an admin may release for another user", body = ErrorEnvelope),
        (status = 404, description = "No such reservation for this user", body = ErrorEnvelope),
        (status = 409, description = "Already committed", body = ErrorEnvelope),
        (status = 410, description = "Expired: it no longer holds anything", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn release(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    caller: Caller,
    Path(id): Path<String>,
    AppQuery(query): AppQuery<OwnerQuery>,
) -> Result<Response, ApiError> {
    let owner = owner(&caller, query.user_id)?;
    let id = ReservationId::parse(&id).map_err(|_| ApiError::ReservationNotFound)?;
    let outcome = state.usage.release(owner, id, deadline).await?;
    settled(&state, outcome)
}

/// The user whose reservation it is: the caller, or for an admin, the user named.
fn owner(caller: &Caller, user_id: Option<String>) -> Result<UserId, ApiError> {
    acted_for(
        caller,
        user_id,
        "only an admin may settle another user's reservation",
    )
}

fn settled(state: &AppState, outcome: RecordOutcome) -> Result<Response, ApiError> {
    match outcome {
        RecordOutcome::Settled {
            reservation,
            standing,
            replayed: again,
        } => {
            let answer = ReservationAnswer::new(reservation, &standing, state.usage.soft_limit());
            let response = usage_answer(StatusCode::OK, answer, &standing, state.usage.now());
            Ok(if again { replayed(response) } else { response })
        }
        RecordOutcome::Refused(refusal) => Err(refused(refusal)),
        other => Err(ApiError::Internal(format!(
            "a settlement was answered {other:?}"
        ))),
    }
}

fn refused(refusal: ReservationRefusal) -> ApiError {
    match refusal {
        ReservationRefusal::NotFound => ApiError::ReservationNotFound,
        ReservationRefusal::Expired => ApiError::ReservationExpired,
        ReservationRefusal::Committed { committed_tokens } => {
            ApiError::ReservationCommitted(committed_tokens)
        }
        ReservationRefusal::Released => ApiError::ReservationReleased,
    }
}
