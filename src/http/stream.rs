//! `GET /usage/stream`: a user's usage as Server-Sent Events, sent at once and again whenever
//! their day changes, until the stream's time is up or the service drains.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::deadline::RequestDeadline;
use super::error::ErrorEnvelope;
use super::extract::AppQuery;
use super::params::Caller;
use super::usage::{StandingView, acted_for};
use super::{ApiError, AppState};
use crate::metrics::{STREAMS_OPEN, STREAMS_REFUSED};
use crate::server::Draining;
use crate::usage::{DayChanges, Deadline, Standing, Subject, TypeSource, UsageService};

/// How long a client waits before it reconnects after a stream ended.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The least time before the day is read again for its reset, so that a clock a little behind
/// the reset cannot make the stream read in a loop.
const RESET_RECHECK: Duration = Duration::from_secs(1);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stream))
}

/// How event streams behave on this instance.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// Streams open at once; more are refused 503.
    pub max_streams: usize,
    /// A stream ends after this long, before a proxy's request timeout cuts it, and the client
    /// resumes it with `Last-Event-ID`.
    pub max_duration: Duration,
    /// How often a comment line keeps an idle stream open through proxies.
    pub heartbeat: Duration,
    /// How long each read of the day may take.
    pub read_timeout: Duration,
}

/// The instance's open streams, within their cap.
pub struct Streams {
    settings: StreamSettings,
    slots: Arc<Semaphore>,
}

impl Streams {
    pub fn new(settings: StreamSettings) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(settings.max_streams)),
            settings,
        }
    }

    /// A place for one more stream, counted open while held; `None` at the cap.
    fn open(&self) -> Option<StreamSlot> {
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        metrics::gauge!(STREAMS_OPEN).increment(1.0);
        Some(StreamSlot { _permit: permit })
    }
}

/// One open stream's place, given back when the stream ends.
struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        metrics::gauge!(STREAMS_OPEN).decrement(1.0);
    }
}

/// `?userId=`: whose usage, for an admin.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StreamQuery {
    /// Defaults to the caller.
    #[serde(rename = "userId")]
    #[param(rename = "userId")]
    user_id: Option<String>,
}

/// The caller's usage, live.
///
/// Server-Sent Events, each `event: usage` with the usage object of `GET /usage/today` as its
/// `data` and an `id` that names that state: one at once, then one whenever the day changes
/// (on any instance), bursts coalesced to the latest. A reconnect with `Last-Event-ID` is not
/// sent the state it already has. Comment lines keep an idle stream open; the stream ends
/// before `STREAM_MAX_SECS` and when the instance shuts down, and the client reconnects.
#[utoipa::path(
    get,
    path = "/usage/stream",
    tag = "usage",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The `id` of the last event received, on a reconnect"),
    ),
    responses(
        (status = 200, description = "An event stream of the user's standing", content_type = "text/event-stream", body = UsageEvent),
        (status = 400, description = "Invalid user id", body = ErrorEnvelope),
        (status = 403, description = "Only an admin may watch another user's usage", body = ErrorEnvelope),
        (status = 503, description = "`MAX_STREAMS` streams are open on this instance, or the store is unavailable", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn stream(
    State(state): State<AppState>,
    RequestDeadline(deadline): RequestDeadline,
    caller: Caller,
    AppQuery(query): AppQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = acted_for(
        &caller,
        query.user_id,
        "only an admin may watch another user's usage",
    )?;
    let user_type = if user_id == caller.user_id {
        TypeSource::OwnToken(caller.principal.user_type)
    } else {
        TypeSource::Directory
    };
    let subject = Subject {
        user_id,
        user_type,
        acting_admin: None,
    };
    let Some(slot) = state.streams.open() else {
        metrics::counter!(STREAMS_REFUSED).increment(1);
        return Err(ApiError::Unavailable);
    };
    let settings = state.streams.settings;
    // Watched before the first read, so that no change falls between the two.
    let (date, changes) = state.usage.today_changes(&subject.user_id);
    let standing = state.usage.today(&subject, deadline).await?;
    let resumed_from = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut watch = Watch {
        usage: state.usage.clone(),
        subject,
        date,
        changes,
        read_now: false,
        draining: state.draining.clone(),
        ends_at: Instant::now() + settings.max_duration,
        day_ends_at: Instant::now(),
        read_timeout: settings.read_timeout,
        last_id: resumed_from,
        ready: None,
        _slot: slot,
    };
    watch.ready = watch.event_for(&standing);
    let events = futures_util::stream::unfold(watch, |mut watch| async move {
        let event = watch.next_event().await?;
        Some((Ok::<_, Infallible>(event), watch))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(settings.heartbeat)))
}

/// One stream's state: what it watches, until when, and the state it last sent.
struct Watch {
    usage: Arc<UsageService>,
    subject: Subject,
    /// The day watched.
    date: NaiveDate,
    changes: DayChanges,
    /// Set when the day must be read again without waiting for a change.
    read_now: bool,
    draining: Arc<Draining>,
    ends_at: Instant,
    /// When the day resets: the usage changes then without a write.
    day_ends_at: Instant,
    read_timeout: Duration,
    /// The id of the state the client has: sent here, or named by `Last-Event-ID`.
    last_id: Option<String>,
    /// An event read and not sent yet.
    ready: Option<Event>,
    _slot: StreamSlot,
}

impl Watch {
    /// The next state to send; `None` when the stream ends.
    async fn next_event(&mut self) -> Option<Event> {
        if let Some(event) = self.ready.take() {
            return Some(event);
        }
        loop {
            if !std::mem::take(&mut self.read_now) {
                tokio::select! {
                    changed = self.changes.changed() => if !changed { return None },
                    () = tokio::time::sleep_until(self.day_ends_at) => {},
                    () = tokio::time::sleep_until(self.ends_at) => return None,
                    () = self.draining.started() => return None,
                }
            }
            let deadline = Deadline::from_now(self.read_timeout);
            let standing = match self.usage.today(&self.subject, deadline).await {
                Ok(standing) => standing,
                Err(error) => {
                    // The client reconnects and is answered by the store's state then.
                    tracing::warn!(%error, "an event stream ended: its usage could not be read");
                    return None;
                }
            };
            if standing.day.date != self.date {
                // The day rolled over: the new one is watched from now, then read.
                (self.date, self.changes) = self.usage.today_changes(&self.subject.user_id);
                self.read_now = true;
                continue;
            }
            if let Some(event) = self.event_for(&standing) {
                return Some(event);
            }
        }
    }

    /// The event of `standing`, unless the client has that state already.
    fn event_for(&mut self, standing: &Standing) -> Option<Event> {
        self.day_ends_at = instant_of(standing.day.reset_at, self.usage.now());
        let view = StandingView::new(standing, self.usage.soft_limit());
        let data = match serde_json::to_string(&view) {
            Ok(data) => data,
            Err(error) => {
                tracing::error!(%error, "a usage object could not be serialised");
                return None;
            }
        };
        let id = state_id(standing.day.last_updated, &data);
        if self.last_id.as_deref() == Some(id.as_str()) {
            return None;
        }
        self.last_id = Some(id.clone());
        Some(
            UsageEvent {
                event: USAGE_EVENT,
                id,
                retry: RECONNECT_AFTER.as_millis() as u64,
                data,
            }
            .into(),
        )
    }
}

const USAGE_EVENT: &str = "usage";

/// One event of the stream. The reconnection hint rides on every event: an event of its own,
/// without data, is one that clients drop.
#[derive(utoipa::ToSchema)]
struct UsageEvent {
    /// Always `usage`.
    event: &'static str,
    /// Names the state the event carries: send it back as `Last-Event-ID` on a reconnect.
    id: String,
    /// Milliseconds to wait before reconnecting.
    retry: u64,
    /// The usage object (`StandingView`), as `GET /usage/today` answers it, as JSON text.
    data: String,
}

impl From<UsageEvent> for Event {
    fn from(event: UsageEvent) -> Self {
        Event::default()
            .event(event.event)
            .id(event.id)
            .retry(Duration::from_millis(event.retry))
            .data(event.data)
    }
}

/// An event's id: the day's last update (ordering the states of a day) and a digest of the
/// whole usage object (telling apart states with the same update time, such as a changed
/// limit). Equal ids mean an equal state, on any instance.
fn state_id(last_updated: DateTime<Utc>, data: &str) -> String {
    let digest = Sha256::digest(data.as_bytes());
    let short: String = digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{}-{short}", last_updated.timestamp_millis())
}

/// The instant of `at`, `now` being the service's time; never sooner than [`RESET_RECHECK`].
fn instant_of(at: DateTime<Utc>, now: DateTime<Utc>) -> Instant {
    let wait = (at - now).to_std().unwrap_or_default().max(RESET_RECHECK);
    Instant::now() + wait
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_states_have_equal_ids_and_any_difference_changes_it() {
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        assert_eq!(state_id(at, "{\"a\":1}"), state_id(at, "{\"a\":1}"));
        assert_ne!(state_id(at, "{\"a\":1}"), state_id(at, "{\"a\":2}"));
        assert!(state_id(at, "{}").starts_with("1700000000123-"));
    }

    #[test]
    fn a_reset_already_past_is_checked_again_after_a_pause() {
        let now = Utc::now();
        let before = Instant::now();
        assert!(instant_of(now - chrono::Duration::hours(1), now) >= before + RESET_RECHECK);
        assert!(
            instant_of(now + chrono::Duration::hours(1), now) >= before + Duration::from_secs(3599)
        );
    }
}
