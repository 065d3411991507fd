//! Liveness and readiness, for Cloud Run and load balancers; no authentication.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorEnvelope;
use super::extract::bearer_token;
use super::{ApiError, AppState, MetricsAccess};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Status {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Serving", body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status { status: "ok" })
}

/// Readiness: 200 when the store answers and signed tokens can be verified, else 503 (at
/// once when shutting down).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The store answers and a signing key set is at hand", body = Status),
        (status = 503, description = "The store does not answer, or no signing key set could be fetched", body = ErrorEnvelope,
         headers(("Retry-After" = u64))),
    ))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    if state.draining.is_draining() {
        return Err(ApiError::Unavailable);
    }
    let (store, keys) = tokio::join!(state.usage.ready(), state.verifier.ready());
    if let Err(error) = store {
        tracing::warn!(%error, "store not ready");
        return Err(ApiError::Unavailable);
    }
    if let Err(error) = keys {
        tracing::warn!(%error, "signing keys not ready");
        return Err(ApiError::Unavailable);
    }
    Ok(Json(Status { status: "ready" }))
}

/// Prometheus metrics in the text format; with `METRICS_TOKEN` set, for that bearer token only.
/// With `METRICS_ADDR` set, they are served there and this port answers 404.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Every metric, in the Prometheus text format", content_type = "text/plain"),
        (status = 401, description = "METRICS_TOKEN is set and was not given", body = ErrorEnvelope,
         headers(("WWW-Authenticate" = String))),
        (status = 404, description = "METRICS_ADDR is set: the metrics are served there", body = ErrorEnvelope),
    ))]
pub(super) async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    match &state.metrics {
        MetricsAccess::Anyone => {}
        MetricsAccess::Elsewhere => return Err(ApiError::NotFound),
        MetricsAccess::Token(expected) => {
            let given = bearer_token(&headers).unwrap_or_default();
            if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
                return Err(ApiError::Unauthenticated);
            }
        }
    }
    // The day's figures come from the store, so every instance shows the same; counted at
    // most once per interval, so scraping more often costs the store nothing more.
    let counted = state
        .today_gauges
        .refresh(|| state.usage.count_today())
        .await;
    if let Err(error) = counted {
        tracing::warn!(%error, "could not count today's figures: the last ones counted stay");
    }
    let text = crate::metrics::registry()
        .map(|registry| registry.render())
        .unwrap_or_default();
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// This OpenAPI 3.1 description of the service.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi_json(
    Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(document.as_ref().clone())
}
