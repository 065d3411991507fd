//! `/admin/notifications`: the outbox's threshold events by status, and an admin's
//! redelivery of one that failed (or that a receiver lost).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::admin::ReportPage;
use super::error::ErrorEnvelope;
use super::extract::{AppJson, AppQuery};
use super::page_token;
use super::params::{Admin, IdempotencyKeyHeader, Limit};
use super::{ApiError, AppState};
use crate::usage::{AdminAct, Outbox, OutboxCursor, OutboxEntry, OutboxStatus, Redelivery, UserId};

/// The outbox, and the delivery worker's wake-up when one runs here.
#[derive(Clone)]
pub struct Notifications {
    pub outbox: Arc<dyn Outbox>,
    /// `None` when no sink is configured: a queued event waits for an instance that has one.
    pub wake: Option<Arc<Notify>>,
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(redeliver))
}

/// The longest event id: a user id (128 characters) and its window and threshold.
const MAX_EVENT_ID_CHARS: usize = 256;

/// Whether `raw` can be an event id: one that can name a document, as a user id can.
fn is_event_id(raw: &str) -> bool {
    let reserved = raw.len() >= 4 && raw.starts_with("__") && raw.ends_with("__");
    (1..=MAX_EVENT_ID_CHARS).contains(&raw.chars().count())
        && !raw.contains('/')
        && raw != "."
        && raw != ".."
        && !reserved
}

#[derive(Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum StatusView {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    Delivered,
    /// Given up after `NOTIFY_RETRY_FOR`, or refused for good by a sink.
    Failed,
}

impl From<StatusView> for OutboxStatus {
    fn from(status: StatusView) -> Self {
        match status {
            StatusView::Pending => Self::Pending,
            StatusView::Delivered => Self::Delivered,
            StatusView::Failed => Self::Failed,
        }
    }
}

impl From<OutboxStatus> for StatusView {
    fn from(status: OutboxStatus) -> Self {
        match status {
            OutboxStatus::Pending => Self::Pending,
            OutboxStatus::Delivered => Self::Delivered,
            OutboxStatus::Failed => Self::Failed,
        }
    }
}

/// One threshold event in the outbox.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct NotificationView {
    /// Stable for (user, window, threshold): `webhook-id` and the Pub/Sub `eventId`.
    event_id: String,
    /// `usage.threshold_crossed` or `usage.first_denied`.
    #[serde(rename = "type")]
    event_type: String,
    user_id: UserId,
    status: StatusView,
    /// Attempts so far.
    attempts: u32,
    created_at: DateTime<Utc>,
    /// When a pending event is attempted next.
    next_attempt_at: DateTime<Utc>,
    /// The sinks (`webhook`, `pubsub`) that have it.
    delivered_to: Vec<String>,
    /// The last attempt's failure, by sink.
    last_error: Option<String>,
    /// The event as every sink is sent it.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
}

impl From<OutboxEntry> for NotificationView {
    fn from(entry: OutboxEntry) -> Self {
        Self {
            payload: serde_json::from_str(&entry.payload)
                .unwrap_or(serde_json::Value::String(entry.payload)),
            event_id: entry.id,
            event_type: entry.event_type,
            user_id: entry.user_id,
            status: entry.status.into(),
            attempts: entry.attempts,
            created_at: entry.created_at,
            next_attempt_at: entry.next_attempt_at,
            delivered_to: entry.delivered_to.into_iter().collect(),
            last_error: entry.last_error,
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
struct ListQuery {
    /// Which events (default `failed`).
    #[param(inline)]
    status: Option<StatusView>,
    /// Events per page (default 50).
    #[param(inline)]
    limit: Option<Limit>,
    /// `nextPageToken` of the previous page.
    page_token: Option<String>,
}

/// Threshold events by status, oldest first.
///
/// `failed` lists those given up after `NOTIFY_RETRY_FOR` (or refused for good), which an
/// admin may send again.
#[utoipa::path(
    get,
    path = "/admin/notifications",
    tag = "admin",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of events", body = ReportPage<NotificationView>),
        (status = 400, description = "An invalid parameter, named in the message", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    _: Admin,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<ReportPage<NotificationView>>, ApiError> {
    let status = OutboxStatus::from(query.status.unwrap_or(StatusView::Failed));
    let report = format!("notifications/{}", status.as_str());
    let after = query
        .page_token
        .as_deref()
        .map(|raw| {
            let invalid =
                || ApiError::InvalidRequest("pageToken is not a token of this report".to_owned());
            let (millis, id) = page_token::decode_keyed(&report, raw)?;
            let created_at = DateTime::from_timestamp_millis(millis).ok_or_else(invalid)?;
            if !is_event_id(&id) {
                return Err(invalid());
            }
            Ok(OutboxCursor { created_at, id })
        })
        .transpose()?;
    let limit = Limit::or_default(query.limit);
    let mut entries = state
        .notifications
        .outbox
        .entries(status, after.as_ref(), limit)
        .await?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_page_token = more
        .then(|| entries.last().map(OutboxEntry::cursor))
        .flatten()
        .map(|last| {
            page_token::encode_keyed(&report, last.created_at.timestamp_millis(), &last.id)
        });
    Ok(Json(ReportPage {
        items: entries.into_iter().map(NotificationView::from).collect(),
        next_page_token,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RedeliverBody {
    /// Why, for the audit trail (at most 500 characters).
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// The event, and whether this request queued it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Redelivered {
    notification: NotificationView,
    /// `false` when it was pending already (a retry of this request, or a delivery under
    /// way): nothing changed and nothing was audited.
    queued: bool,
}

/// Send a failed (or delivered) event again.
///
/// The event becomes pending at once, under its same id, and its retry period starts again;
/// a sink that had it already is skipped. Audited. Asking again while it is pending changes
/// nothing.
#[utoipa::path(
    post,
    path = "/admin/notifications/{event_id}/redeliver",
    tag = "admin",
    request_body = RedeliverBody,
    params(("event_id" = String, Path, description = "The event's id"), IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Queued, or pending already", body = Redelivered),
        (status = 400, description = "An invalid body or event id", body = ErrorEnvelope),
        (status = 404, description = "No such event in the outbox", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn redeliver(
    State(state): State<AppState>,
    admin: Admin,
    key: IdempotencyKeyHeader,
    Path(event_id): Path<String>,
    AppJson(body): AppJson<RedeliverBody>,
) -> Result<Json<Redelivered>, ApiError> {
    if !is_event_id(&event_id) {
        return Err(ApiError::InvalidRequest(format!(
            "eventId must be 1 to {MAX_EVENT_ID_CHARS} characters, without '/', and neither \
             '.', '..' nor like '__name__'"
        )));
    }
    let reason = body.reason.map(|reason| reason.trim().to_owned());
    if reason
        .as_ref()
        .is_some_and(|reason| reason.chars().count() > 500)
    {
        return Err(ApiError::InvalidRequest(
            "reason must be at most 500 characters".to_owned(),
        ));
    }
    let act = AdminAct {
        actor: admin.0,
        reason: reason.filter(|reason| !reason.is_empty()),
        idempotency_key: key.0.map(|key| key.as_str().to_owned()),
    };
    let outcome = state
        .notifications
        .outbox
        .redeliver(&event_id, &act, state.usage.now())
        .await?;
    let (entry, queued) = match outcome {
        Redelivery::Queued(entry) => (entry, true),
        Redelivery::AlreadyPending(entry) => (entry, false),
        Redelivery::NotFound => return Err(ApiError::NotificationNotFound),
    };
    if queued && let Some(wake) = &state.notifications.wake {
        wake.notify_one();
    }
    Ok(Json(Redelivered {
        notification: entry.into(),
        queued,
    }))
}
