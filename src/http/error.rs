//! The one error shape of the API: `{"error": {"code": "...", "message": "..."}}`.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth::AuthError;
use crate::usage::{DirectoryError, StoreError, UsageError};

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_request`: the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    /// 400 `invalid_user_id`: the uid cannot name a document.
    #[error("{0}")]
    InvalidUserId(String),
    /// 401 `unauthenticated`, with `WWW-Authenticate: Bearer`.
    #[error("a valid Firebase ID token is required")]
    Unauthenticated,
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 404 `not_found`.
    #[error("no such resource")]
    NotFound,
    /// 413 `payload_too_large`.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// 415 `unsupported_media_type`.
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// 404 `reservation_not_found`.
    #[error("no reservation with this id is held for this user")]
    ReservationNotFound,
    /// 404 `override_not_found`.
    #[error("no limit override is stored for this user")]
    OverrideNotFound,
    /// 404 `notification_not_found`.
    #[error("no threshold event with this id is in the outbox")]
    NotificationNotFound,
    /// 409 `reservation_committed`.
    #[error("this reservation was already committed, with {0} tokens")]
    ReservationCommitted(i64),
    /// 409 `reservation_released`.
    #[error("this reservation was released")]
    ReservationReleased,
    /// 410 `reservation_expired`.
    #[error("this reservation expired before it was settled; it holds nothing")]
    ReservationExpired,
    /// 422 `idempotency_key_reused`.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// 503 `unavailable`, with `Retry-After`: nothing was recorded.
    #[error("the service is unavailable; retry shortly")]
    Unavailable,
    /// 503 `unavailable`, with `Retry-After`: the request may have been recorded.
    #[error(
        "the outcome of this request is unknown: it may have been recorded; retry with an \
         Idempotency-Key to be sure it counts once"
    )]
    OutcomeUnknown,
    /// 500 `corrupt_document`: a stored document the service cannot use, named so that an
    /// operator can repair it.
    #[error("{0}")]
    CorruptDocument(String),
    /// 500 `internal`: the detail is logged, never returned.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) | Self::InvalidUserId(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound
            | Self::ReservationNotFound
            | Self::OverrideNotFound
            | Self::NotificationNotFound => StatusCode::NOT_FOUND,
            Self::ReservationCommitted(_) | Self::ReservationReleased => StatusCode::CONFLICT,
            Self::ReservationExpired => StatusCode::GONE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable | Self::OutcomeUnknown => StatusCode::SERVICE_UNAVAILABLE,
            Self::CorruptDocument(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidUserId(_) => "invalid_user_id",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::ReservationNotFound => "reservation_not_found",
            Self::OverrideNotFound => "override_not_found",
            Self::NotificationNotFound => "notification_not_found",
            Self::ReservationCommitted(_) => "reservation_committed",
            Self::ReservationReleased => "reservation_released",
            Self::ReservationExpired => "reservation_expired",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Unavailable | Self::OutcomeUnknown => "unavailable",
            Self::CorruptDocument(_) => "corrupt_document",
            Self::Internal(_) => "internal",
        }
    }
}

/// What went wrong: a stable snake_case code and a sentence for people.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    #[schema(example = "invalid_request")]
    pub code: String,
    #[schema(example = "tokens must be an integer from 1 to 1000000")]
    pub message: String,
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// A JSON error response with the contract's shape.
pub fn error_response(status: StatusCode, code: &str, message: String) -> Response {
    let mut response = (
        status,
        axum::Json(ErrorEnvelope {
            error: ErrorBody {
                code: code.to_owned(),
                message,
            },
        }),
    )
        .into_response();
    let headers = response.headers_mut();
    match status {
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        _ => {}
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            Self::CorruptDocument(detail) => tracing::error!(%detail, "corrupt document"),
            _ => {}
        }
        error_response(self.status(), self.code(), self.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                Self::Unavailable
            }
            StoreError::OutcomeUnknown(detail) => {
                tracing::warn!(%detail, "store outcome unknown");
                Self::OutcomeUnknown
            }
            StoreError::Corrupt(detail) => Self::CorruptDocument(detail),
            StoreError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(error: DirectoryError) -> Self {
        tracing::warn!(%error, "user directory unavailable");
        Self::Unavailable
    }
}

impl From<UsageError> for ApiError {
    fn from(error: UsageError) -> Self {
        match error {
            UsageError::Store(error) => error.into(),
            UsageError::Directory(error) => error.into(),
            UsageError::InvalidOverride(error) => Self::InvalidRequest(error.to_string()),
            UsageError::FutureReset => Self::InvalidRequest(error.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Invalid(reason) => {
                tracing::debug!(reason, "token refused");
                Self::Unauthenticated
            }
            AuthError::KeysUnavailable => {
                tracing::warn!("no token signing keys available");
                Self::Unavailable
            }
        }
    }
}

/// Gives every error the framework answers by itself (unknown route, wrong method, timeout,
/// body limits) the contract's JSON shape, keeping its status and headers such as `Allow`.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this method is not allowed here"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "unsupported media type"),
        StatusCode::SERVICE_UNAVAILABLE => {
            ("unavailable", "the service is unavailable; retry shortly")
        }
        status if status.is_server_error() => ("internal", "internal error"),
        _ => ("invalid_request", "the request is not valid"),
    };
    let (mut parts, _) = response.into_parts();
    let fresh = error_response(status, code, message.to_owned());
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in fresh.headers() {
        parts.headers.insert(name, value.clone());
    }
    let (_, body) = fresh.into_parts();
    Response::from_parts(parts, Body::new(body))
}
