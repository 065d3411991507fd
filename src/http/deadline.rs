//! The request's one deadline: fixed when the request arrives, handed to every step that may
//! wait (the body, the token check, the user directory, the store), and a backstop that
//! answers a request still running when its time is up.

use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::Extensions;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::metrics::HTTP_DEADLINE_OVERRUNS;
use crate::usage::Deadline;

/// How long past its deadline a request that may write is waited for before the backstop
/// answers it: every step ends by the deadline, so only a fault is ever this late.
const WRITE_OVERRUN_GRACE: Duration = Duration::from_secs(1);

/// Fixes the deadline of each request as it arrives, `timeout` from now, and answers by then.
///
/// Every step keeps to the deadline, so the backstop answers only a request that did not. A
/// read is then simply unavailable. A request that may write is given a moment more and then
/// told that its outcome is unknown: a write may have begun, and a plain 503, which means that
/// nothing was recorded, could be false.
pub async fn within_deadline(
    State(timeout): State<Duration>,
    mut request: Request,
    next: Next,
) -> Response {
    let deadline = Deadline::from_now(timeout);
    request.extensions_mut().insert(deadline);
    let may_write = !request.method().is_safe();
    let backstop = if may_write {
        deadline.answer_by() + WRITE_OVERRUN_GRACE
    } else {
        deadline.answer_by()
    };
    match tokio::time::timeout_at(backstop.into(), next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!(HTTP_DEADLINE_OVERRUNS).increment(1);
            if may_write {
                tracing::error!("a request that may write was still running past its deadline");
                ApiError::OutcomeUnknown.into_response()
            } else {
                ApiError::Unavailable.into_response()
            }
        }
    }
}

/// The deadline of the request being handled.
pub struct RequestDeadline(pub Deadline);

impl<S: Send + Sync> FromRequestParts<S> for RequestDeadline {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        deadline_of(&parts.extensions).map(Self)
    }
}

/// The request's deadline, as [`within_deadline`] fixed it.
pub fn deadline_of(extensions: &Extensions) -> Result<Deadline, ApiError> {
    extensions
        .get::<Deadline>()
        .copied()
        .ok_or_else(|| ApiError::Internal("a request reached a handler without a deadline".into()))
}
