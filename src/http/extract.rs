//! Extractors that answer bad input with the contract's errors instead of axum's plain text.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::deadline::deadline_of;
use super::{ApiError, AppState};
use crate::auth::{AuthError, Principal};

/// A JSON body; malformed or mistyped bodies are 400 naming the field, a missing JSON content
/// type is 415, and an oversized body is 413. A body still arriving at the request's deadline
/// is 503: nothing was recorded.
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let deadline = deadline_of(request.extensions())?;
        let body = axum::Json::<T>::from_request(request, state);
        match tokio::time::timeout_at(deadline.work_until().into(), body).await {
            Ok(Ok(axum::Json(value))) => Ok(Self(value)),
            Ok(Err(rejection)) => Err(json_rejection(rejection)),
            Err(_) => {
                tracing::warn!("the request body did not arrive before the deadline");
                Err(ApiError::Unavailable)
            }
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        _ => ApiError::InvalidRequest(rejection.body_text()),
    }
}

/// Query parameters; a value of the wrong type is 400 naming the parameter.
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| ApiError::InvalidRequest(rejection.body_text()))
    }
}

/// The caller, from `Authorization: Bearer <Firebase ID token>`. A check still waiting for
/// the signing keys at the request's deadline is 503.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let deadline = deadline_of(&parts.extensions)?;
        let token = bearer_token(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let verified = state.verifier.verify(token);
        match tokio::time::timeout_at(deadline.work_until().into(), verified).await {
            Ok(principal) => Ok(principal?),
            Err(_) => Err(AuthError::KeysUnavailable.into()),
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case), if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
}
