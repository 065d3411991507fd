//! Liveness and readiness, for Cloud Run and load balancers; no authentication.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// 200 while the process serves.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the store answers, else 503.
async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.usage.ready().await.map_err(|error| {
        tracing::warn!(%error, "store not ready");
        ApiError::Unavailable
    })?;
    Ok(Json(json!({"status": "ready"})))
}
