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
use super::rate_limit_fields;
use super::views::{DayView, MonthView};
use super::{ApiError, AppState};
use crate::usage::{
    Admission, DailyUsage, DayWindow, Enforcement, LimitWindow, MaybeRecorded, Policy,
    RecordOutcome, Share, Standing, StoredAnswer, Subject, TypeSource, UserId, UserType,
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

/// A day of a report: committed tokens only.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    #[serde(flatten)]
    day: DayView,
    /// `max(0, tokenLimit - tokensUsed)`.
    remaining: i64,
}

impl From<DailyUsage> for UsageView {
    fn from(day: DailyUsage) -> Self {
        Self {
            remaining: day.remaining(),
            day: day.into(),
        }
    }
}

/// A user's standing, the usage object of every usage answer: the day with the tokens held,
/// the month, and how the limits apply.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StandingView {
    #[serde(flatten)]
    day: DayView,
    /// Tokens held by open reservations (replies being streamed).
    reserved_tokens: i64,
    /// Tokens used this calendar month in `RESET_TIMEZONE`, today's included.
    monthly_tokens_used: i64,
    /// The monthly cap; null without one.
    monthly_limit: Option<i64>,
    /// What the next request may still spend: the smaller of
    /// `max(0, tokenLimit - tokensUsed - reservedTokens)` and, under a monthly cap,
    /// `max(0, monthlyLimit - monthlyTokensUsed - reservedTokens)`.
    remaining: i64,
    /// How the limits apply to this user now.
    enforcement: EnforcementView,
    /// `approaching_limit` once used and held tokens reach `SOFT_LIMIT_FRACTION` of the
    /// binding limit (the one with less left); null below.
    warning: Option<WarningView>,
}

impl StandingView {
    pub(super) fn new(standing: &Standing, soft_limit: Share) -> Self {
        Self {
            remaining: standing.remaining(),
            reserved_tokens: standing.reserved_tokens,
            monthly_tokens_used: standing.month.tokens_used,
            monthly_limit: standing.month.limit,
            enforcement: standing.enforcement.into(),
            warning: standing
                .approaching_limit(soft_limit)
                .then_some(WarningView::ApproachingLimit),
            day: standing.day.clone().into(),
        }
    }
}

/// `enforce`: over a limit is refused. `shadow`: nothing is refused, everything is recorded,
/// and what `enforce` would refuse is flagged `wouldExceed`. `off`: nothing is refused or
/// counted.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum EnforcementView {
    Enforce,
    Shadow,
    Off,
}

impl From<EnforcementView> for Enforcement {
    fn from(mode: EnforcementView) -> Self {
        match mode {
            EnforcementView::Enforce => Self::Enforce,
            EnforcementView::Shadow => Self::Shadow,
            EnforcementView::Off => Self::Off,
        }
    }
}

impl From<Enforcement> for EnforcementView {
    fn from(mode: Enforcement) -> Self {
        match mode {
            Enforcement::Enforce => Self::Enforce,
            Enforcement::Shadow => Self::Shadow,
            Enforcement::Off => Self::Off,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum WarningView {
    ApproachingLimit,
}

/// The answer to a check: the user's standing, whether the tokens were let through, whether
/// the limits were enforced, and on a refusal why.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct RecordAnswer {
    #[serde(flatten)]
    usage: StandingView,
    allowed: bool,
    /// False in `shadow` and `off`: nothing was refused, whatever the limits.
    enforced: bool,
    /// Whether the request goes over a limit: true on every refusal, and in `shadow` or `off`
    /// wherever `enforce` would have refused.
    would_exceed: bool,
    /// Present when `allowed` is false: `daily_limit_exceeded` or `monthly_limit_exceeded`
    /// (or, for a reservation, `too_many_reservations`).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

impl RecordAnswer {
    fn new(standing: &Standing, soft_limit: Share, error: Option<ErrorBody>) -> Self {
        Self {
            usage: StandingView::new(standing, soft_limit),
            allowed: error.is_none(),
            enforced: standing.enforcement == Enforcement::Enforce,
            would_exceed: standing.exceeds.is_some(),
            error,
        }
    }
}

/// A 200 of `POST /usage`: the store's decision, or an admission it could not check.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum AdmissionAnswer {
    Decided(RecordAnswer),
    Degraded(DegradedAnswer),
}

/// The answer while the store is down and `ON_STORE_UNAVAILABLE=allow`: let through without
/// counting. The day's figures could not be read, so only the limits are shown.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct DegradedAnswer {
    /// Always true.
    allowed: bool,
    /// Always false: no limit was checked.
    enforced: bool,
    /// Always true: the store was unreachable or past the request's deadline.
    degraded: bool,
    /// `no`: nothing was recorded. `unknown`: a write was under way and may have landed.
    recorded: RecordedView,
    user_id: UserId,
    user_type: UserType,
    date: chrono::NaiveDate,
    token_limit: i64,
    monthly_limit: Option<i64>,
    reset_at: DateTime<Utc>,
    enforcement: EnforcementView,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum RecordedView {
    No,
    Unknown,
}

impl DegradedAnswer {
    fn new(
        user_id: UserId,
        user_type: UserType,
        policy: Policy,
        window: DayWindow,
        recorded: MaybeRecorded,
    ) -> Self {
        Self {
            allowed: true,
            enforced: false,
            degraded: true,
            recorded: match recorded {
                MaybeRecorded::No => RecordedView::No,
                MaybeRecorded::Unknown => RecordedView::Unknown,
            },
            user_id,
            user_type,
            date: window.date,
            token_limit: policy.daily_limit,
            monthly_limit: policy.monthly_limit,
            reset_at: window.reset_at,
            enforcement: policy.enforcement.into(),
        }
    }
}

/// A usage answer: its JSON, with the RateLimit fields of `standing`.
pub(super) fn usage_answer(
    status: StatusCode,
    body: impl Serialize,
    standing: &Standing,
    now: DateTime<Utc>,
) -> Response {
    let mut response = (status, Json(body)).into_response();
    rate_limit_fields::insert(response.headers_mut(), standing, now);
    response
}

/// Check and record usage, atomically.
///
/// Admits the tokens and counts them exactly once when the day's total, and the month's under
/// a monthly cap, stay within the counted user's limits; otherwise records nothing and answers
/// 429. In `shadow` mode nothing is refused: what `enforce` would refuse is recorded and
/// flagged `wouldExceed`; in `off` mode nothing is refused or counted.
#[utoipa::path(
    post,
    path = "/usage",
    tag = "usage",
    request_body = RecordBody,
    params(IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Admitted (recorded unless `enforcement` is `off`) or replayed; or, while the store is down and `ON_STORE_UNAVAILABLE=allow`, let through uncounted (`DegradedAnswer`, without RateLimit fields)",
         body = AdmissionAnswer,
         headers(
            ("Idempotent-Replayed" = String, description = "`true` when this answers an earlier request with the same Idempotency-Key"),
            ("RateLimit-Policy" = String, description = "draft-ietf-httpapi-ratelimit-headers: the daily quota and, under a monthly cap, the monthly one, in tokens (`q`) over seconds (`w`)"),
            ("RateLimit" = String, description = "draft-ietf-httpapi-ratelimit-headers: the binding quota (the one with less left), its remaining tokens (`r`, the body's `remaining`) and the seconds to its reset (`t`)"),
         )),
        (status = 400, description = "Invalid body, user id or Idempotency-Key", body = ErrorEnvelope),
        (status = 403, description = "Only an admin may record for another user", body = ErrorEnvelope),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorEnvelope),
        (status = 429, description = "A limit would be exceeded (tokens used and held count): `daily_limit_exceeded` or `monthly_limit_exceeded`; nothing recorded", body = RecordAnswer,
         headers(
            ("Retry-After" = u64, description = "Seconds until the refusing window resets: midnight, or the first of next month, in `RESET_TIMEZONE`"),
            ("RateLimit-Policy" = String, description = "draft-ietf-httpapi-ratelimit-headers: the daily quota and, under a monthly cap, the monthly one, in tokens (`q`) over seconds (`w`)"),
            ("RateLimit" = String, description = "draft-ietf-httpapi-ratelimit-headers: the binding quota (the one with less left), its remaining tokens (`r`, the body's `remaining`) and the seconds to its reset (`t`)"),
         )),
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
    let user_id = subject.user_id.clone();
    let admission = state
        .usage
        .record(subject, tokens, idempotency_key, deadline)
        .await?;
    let outcome = match admission {
        Admission::Decided(outcome) => outcome,
        Admission::Degraded {
            user_type,
            policy,
            window,
            recorded,
        } => {
            let answer = DegradedAnswer::new(user_id, user_type, policy, window, recorded);
            return Ok(Json(AdmissionAnswer::Degraded(answer)).into_response());
        }
    };
    Ok(match outcome {
        RecordOutcome::Admitted(standing) => admitted(&state, &standing),
        RecordOutcome::Replayed(StoredAnswer::Recorded(standing)) => {
            replayed(admitted(&state, &standing))
        }
        RecordOutcome::Denied(standing) => denied(&state, &standing),
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
    let acting_admin = (user_id != caller.user_id).then(|| caller.user_id.clone());
    Ok(Subject {
        user_id,
        user_type,
        acting_admin,
    })
}

fn admitted(state: &AppState, standing: &Standing) -> Response {
    let answer = RecordAnswer::new(standing, state.usage.soft_limit(), None);
    let answer = AdmissionAnswer::Decided(answer);
    usage_answer(StatusCode::OK, answer, standing, state.usage.now())
}

/// 429: a window cannot take the tokens; the same answer for a record and a reservation.
pub(super) fn denied(state: &AppState, standing: &Standing) -> Response {
    let now = state.usage.now();
    let window = standing.exceeds.unwrap_or(LimitWindow::Daily);
    let reset_at = standing.reset_at(window);
    let retry_after = standing.retry_after(window, now);
    let error = ErrorBody {
        code: format!("{}_limit_exceeded", window.as_str()),
        message: format!(
            "the {} limit of {} tokens would be exceeded; it resets at {}",
            window.as_str(),
            standing.limit(window),
            reset_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    };
    refused_429(state, standing, error, retry_after)
}

/// A 429 with the standing, why, and when to try again.
pub(super) fn refused_429(
    state: &AppState,
    standing: &Standing,
    error: ErrorBody,
    retry_after_secs: i64,
) -> Response {
    let answer = RecordAnswer::new(standing, state.usage.soft_limit(), Some(error));
    let mut response = usage_answer(
        StatusCode::TOO_MANY_REQUESTS,
        answer,
        standing,
        state.usage.now(),
    );
    if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The caller's usage today, and this month.
///
/// Zeros and today's limits when nothing was recorded yet; reading never creates a document.
/// `reservedTokens` are held by the caller's open reservations.
#[utoipa::path(
    get,
    path = "/usage/today",
    tag = "usage",
    responses(
        (status = 200, description = "The caller's standing", body = StandingView,
         headers(
            ("RateLimit-Policy" = String, description = "draft-ietf-httpapi-ratelimit-headers: the daily quota and, under a monthly cap, the monthly one, in tokens (`q`) over seconds (`w`)"),
            ("RateLimit" = String, description = "draft-ietf-httpapi-ratelimit-headers: the binding quota (the one with less left), its remaining tokens (`r`, the body's `remaining`) and the seconds to its reset (`t`)"),
         )),
        (status = 400, description = "The caller's uid cannot name a document", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn today(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    caller: Caller,
) -> Result<Response, ApiError> {
    let subject = Subject {
        user_type: TypeSource::OwnToken(caller.principal.user_type),
        user_id: caller.user_id,
        acting_admin: None,
    };
    let standing = state.usage.today(&subject, deadline).await?;
    let answer = StandingView::new(&standing, state.usage.soft_limit());
    Ok(usage_answer(
        StatusCode::OK,
        answer,
        &standing,
        state.usage.now(),
    ))
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
