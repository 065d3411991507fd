//! The HTTP edge: the router, its layers, and one module per resource.

mod activity;
mod admin;
mod dashboard;
mod deadline;
mod docs;
mod error;
mod extract;
mod limits;
mod notifications;
mod observe;
mod ops;
mod page_token;
mod params;
mod rate_limit_fields;
mod reservations;
mod stream;
mod today_gauges;
mod usage;
mod views;

pub use dashboard::{DashboardSettings, FirebaseWebApp};
pub use error::ApiError;
pub use notifications::Notifications;
pub use stream::{StreamSettings, Streams};
pub use today_gauges::{TODAY_GAUGES_INTERVAL, TodayGauges};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::http::{HeaderName, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::TokenVerifier;
use crate::server::Draining;
use crate::usage::{Tokens, UsageService};

/// The largest request body accepted; a usage request is a few dozen bytes.
const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub usage: Arc<UsageService>,
    pub verifier: Arc<TokenVerifier>,
    pub max_tokens_per_request: i64,
    /// Set when the service is shutting down.
    pub draining: Arc<Draining>,
    /// Who may read `GET /metrics` on this port.
    pub metrics: MetricsAccess,
    /// Today's figures for `GET /metrics`, counted at most once per interval.
    pub today_gauges: Arc<TodayGauges>,
    /// The usage event streams open on this instance.
    pub streams: Arc<Streams>,
    /// RESET_TIMEZONE: the zone of days and of the hours that usage is counted by.
    pub reset_zone: chrono_tz::Tz,
    /// The threshold events' outbox, for the admin's listing and redelivery.
    pub notifications: Notifications,
}

/// Who may read `GET /metrics` on a port.
#[derive(Clone)]
pub enum MetricsAccess {
    /// Anyone who reaches the port.
    Anyone,
    /// Only a request with this bearer token.
    Token(String),
    /// Nobody: the metrics are served on an address of their own (404 here).
    Elsewhere,
}

impl AppState {
    /// A body's `tokens`, within `MAX_TOKENS_PER_REQUEST`.
    fn tokens(&self, raw: i64) -> Result<Tokens, ApiError> {
        Tokens::bounded(raw, self.max_tokens_per_request)
            .map_err(|e| ApiError::InvalidRequest(e.to_string()))
    }
}

/// How the edge behaves, beyond the handlers.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub request_timeout: Duration,
    pub cors_allowed_origins: Vec<axum::http::HeaderValue>,
    pub dashboard: DashboardSettings,
}

/// The routes and their OpenAPI description, made from the same declarations so that the two
/// cannot drift apart.
pub fn routes(bounds: docs::ConfiguredBounds) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut document) = OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .merge(usage::router())
        .merge(reservations::router())
        .merge(stream::router())
        .merge(admin::router())
        .merge(activity::router())
        .merge(limits::router())
        .merge(notifications::router())
        .merge(ops::router())
        .split_for_parts();
    docs::complete(&mut document, bounds);
    (routes, document)
}

pub fn router(state: AppState, edge: &EdgeSettings) -> Router {
    let (routes, document) = routes(docs::ConfiguredBounds {
        max_tokens_per_request: state.max_tokens_per_request,
        max_reservation_ttl_secs: state.usage.reservation_rules().max_ttl.num_seconds(),
    });
    let mut app = routes
        .merge(dashboard::router(&edge.dashboard))
        .layer(Extension(Arc::new(document)))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            edge.request_timeout,
            deadline::within_deadline,
        ))
        .layer(axum::middleware::map_response(error::json_errors));
    if !edge.cors_allowed_origins.is_empty() {
        app = app.layer(cors(&edge.cors_allowed_origins));
    }
    app.layer(axum::middleware::from_fn(observe::observe))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
}

/// `GET /metrics` alone, for an address of its own: what a scraper beside the service reads.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(ops::metrics))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
        .layer(axum::middleware::map_response(error::json_errors))
}

fn cors(origins: &[axum::http::HeaderValue]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins.iter().cloned()))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            HeaderName::from_static("idempotent-replayed"),
        ])
        .max_age(Duration::from_secs(3600))
}
