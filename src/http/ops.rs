//! Liveness and readiness, for Cloud Run and load balancers; no authentication.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorEnvelope;
use super::{ApiError, AppState};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
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

/// Readiness: 200 when the store answers and signed tokens can be verified, else 503.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "The store answers and a signing key set is at hand", body = Status),
        (status = 503, description = "The store does not answer, or no signing key set could be fetched", body = ErrorEnvelope,
         headers(("Retry-After" = u64))),
    ))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
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

/// This OpenAPI 3.1 description of the service.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
async fn openapi_json(
    Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(document.as_ref().clone())
}
