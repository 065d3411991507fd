//! `GET /admin/reports/activity`: when tokens are used (by hour of day) and how many requests
//! failed, as this instance counted them since it started; admins only.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ErrorEnvelope;
use super::params::Admin;
use super::{ApiError, AppState};
use crate::metrics::Activity;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(activity))
}

/// Whose counts an answer gives.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
enum Scope {
    /// The instance that answered, alone: with several instances (Cloud Run scales out), each
    /// has counted only what it served, and the service's whole figures are in Cloud Monitoring.
    Instance,
}

/// Admitted tokens in one hour of the day.
#[derive(Serialize, utoipa::ToSchema)]
struct HourTokens {
    /// 0 to 23, in `timeZone`.
    hour: u8,
    tokens: u64,
}

/// HTTP requests answered, and those that failed.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RequestCounts {
    /// Every request answered, whatever its status.
    total: u64,
    /// Answered 4xx: refused for what the caller sent (not signed in, not allowed, invalid,
    /// over a limit). Not errors of the service.
    client_errors: u64,
    /// Answered 5xx: the service failed (the store unavailable, an outcome unknown, a stream
    /// cap reached, a fault). These are the errors.
    server_errors: u64,
    /// `serverErrors / total`, 0 when nothing was answered.
    error_rate: f64,
}

/// Peak usage times and the error rate, from this instance's own metrics.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ActivityReport {
    /// Always `instance`: these are one instance's counts, not the service's.
    scope: Scope,
    /// When this instance started counting.
    since: DateTime<Utc>,
    /// The zone of the hours: RESET_TIMEZONE, as the days' resets.
    #[schema(example = "UTC")]
    time_zone: String,
    /// Tokens admitted by hour of day: 24 entries, hour 0 first.
    tokens_by_hour: Vec<HourTokens>,
    /// Requests answered before this one.
    requests: RequestCounts,
}

impl ActivityReport {
    fn new(activity: &Activity, time_zone: String) -> Self {
        let hours = (0u8..).zip(activity.tokens_by_hour);
        Self {
            scope: Scope::Instance,
            since: activity.since.into(),
            time_zone,
            tokens_by_hour: hours
                .map(|(hour, tokens)| HourTokens { hour, tokens })
                .collect(),
            requests: RequestCounts {
                total: activity.requests,
                client_errors: activity.client_errors,
                server_errors: activity.server_errors,
                error_rate: error_rate(activity.server_errors, activity.requests),
            },
        }
    }
}

/// The share of `total` that failed; 0 of nothing.
fn error_rate(errors: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        // Counts below 2^53 convert exactly; far beyond, a rate loses nothing that shows.
        #[allow(clippy::cast_precision_loss)]
        let rate = errors as f64 / total as f64;
        rate
    }
}

/// Tokens by hour of day and the error rate, as this instance counted them since it started.
///
/// One instance's view: Cloud Run runs several, each answering from its own counts (`scope`
/// is `instance`). The same counters are in `GET /metrics` for the whole service's figures.
#[utoipa::path(
    get,
    path = "/admin/reports/activity",
    tag = "admin",
    responses(
        (status = 200, description = "This instance's activity since it started", body = ActivityReport),
        (status = 400, description = "The token's uid is not a valid user id", body = ErrorEnvelope),
        (status = 503, description = "This process records its metrics elsewhere", body = ErrorEnvelope),
    ),
    security(("bearer" = []))
)]
async fn activity(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<ActivityReport>, ApiError> {
    let activity = crate::metrics::activity().ok_or(ApiError::Unavailable)?;
    Ok(Json(ActivityReport::new(
        &activity,
        state.reset_zone.name().to_owned(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_rate_is_the_share_of_5xx_and_zero_of_nothing() {
        assert!((error_rate(1, 4) - 0.25).abs() < f64::EPSILON);
        assert!(error_rate(0, 0).abs() < f64::EPSILON);
    }
}
