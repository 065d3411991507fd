//! Builds the whole service from its configuration and serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::auth::{DirectorySettings, IdentityToolkitDirectory, TokenVerifier, VerifierSettings};
use crate::config::Config;
use crate::http::{
    AppState, DashboardSettings, EdgeSettings, FirebaseWebApp, MetricsAccess, Notifications,
    StreamSettings, Streams, TODAY_GAUGES_INTERVAL, TodayGauges, metrics_router, router,
};
use crate::notify::{DeliveryWorker, WorkerSettings};
use crate::server::{self, ConnectionSettings, Draining};
use crate::store::open_usage_store;
use crate::usage::{
    Clock, DirectoryError, OfflineDirectory, StoreError, SystemClock, Thresholds, UsageService,
    UsageSettings, UserDirectory, UserType,
};

/// How long one fetch of the signing keys may take.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one lookup of a user's claims may take.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(2);
/// Beyond its sinks' attempts, how long an outbox entry stays taken by one instance: room to
/// record the outcome. An instance that dies leaves its entry to another after this.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot build the key fetcher: {0}")]
    Verifier(#[from] reqwest::Error),
    #[error("cannot reach the user directory: {0}")]
    Directory(#[from] DirectoryError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// Where the plan of a user acted for is learned: the Auth emulator when one is named, none
/// in an offline `demo-` project, else Firebase Auth itself.
fn user_directory(config: &Config) -> Result<Arc<dyn UserDirectory>, DirectoryError> {
    let emulator_host = config
        .firebase_auth_emulator_host
        .clone()
        .or_else(|| config.auth_emulator_for_lookups.clone());
    if emulator_host.is_none() && config.emulator_mode() {
        return Ok(Arc::new(OfflineDirectory));
    }
    Ok(Arc::new(IdentityToolkitDirectory::new(
        DirectorySettings {
            project_id: config.store.firebase_project_id.clone(),
            emulator_host,
            user_type_claim: config.user_type_claim.clone(),
            cache_for: config.user_type_cache(),
            timeout: DIRECTORY_TIMEOUT,
        },
    )?))
}

/// How usage event streams behave, as configured.
fn stream_settings(config: &Config) -> StreamSettings {
    StreamSettings {
        max_streams: usize::try_from(config.max_streams).unwrap_or(usize::MAX),
        max_duration: Duration::from_secs(config.stream_max_secs),
        heartbeat: Duration::from_secs(config.stream_heartbeat_secs),
        read_timeout: config.request_timeout(),
    }
}

/// A service bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    /// `GET /metrics` on an address of its own, when `METRICS_ADDR` is set.
    metrics: Option<(TcpListener, axum::Router)>,
    connections: ConnectionSettings,
    draining: Arc<Draining>,
    /// Hands threshold events to the sinks, when any is configured.
    delivery: Option<DeliveryWorker>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Self::build`], reading the time from `clock`.
    pub async fn build_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartupError> {
        config.validate().map_err(StartupError::Config)?;
        // Installed first, so that nothing counted before the first scrape is lost.
        crate::metrics::registry();
        crate::metrics::start_user_type_series_at_zero(UserType::ALL.map(UserType::as_str));
        let serving = open_usage_store(&config.store, config.firestore_cache_bytes()).await?;
        let sinks =
            (config.notify.sinks().await).map_err(|e| StartupError::Config(e.to_string()))?;
        let (thresholds, delivery) = if sinks.is_empty() {
            (Thresholds::default(), None)
        } else {
            // One attempt hands the event to each sink in turn; then its outcome is recorded.
            let lease = config.notify.notify_attempt_timeout * sinks.len() as u32 + LEASE_MARGIN;
            let worker = DeliveryWorker::new(
                serving.outbox.clone(),
                sinks,
                clock.clone(),
                WorkerSettings {
                    retry_for: config.notify.notify_retry_for,
                    lease,
                    ..WorkerSettings::default()
                },
            );
            let thresholds = Thresholds::new(config.notify.notify_thresholds.iter().copied());
            (thresholds, Some(worker))
        };
        let verifier = Arc::new(TokenVerifier::new(VerifierSettings {
            project_id: config.store.firebase_project_id.clone(),
            jwks_url: config.firebase_jwks_url.clone(),
            emulator_mode: config.emulator_mode(),
            user_type_claim: config.user_type_claim.clone(),
            refetch_cooldown: config.jwks_refetch_cooldown,
            fetch_timeout: JWKS_FETCH_TIMEOUT,
        })?);
        if config.emulator_mode() {
            tracing::warn!(
                project = %config.store.firebase_project_id,
                "emulator mode: unsigned ID tokens are accepted; never use this in production"
            );
        } else {
            let verifier = verifier.clone();
            tokio::spawn(async move {
                if let Err(error) = verifier.prefetch_keys().await {
                    tracing::warn!(%error, "could not fetch the token signing keys yet");
                }
            });
        }

        let guarded = match &config.metrics_token {
            Some(token) => MetricsAccess::Token(token.clone()),
            None => MetricsAccess::Anyone,
        };
        let mut usage = UsageService::new(
            serving.usage,
            user_directory(&config)?,
            UsageSettings {
                limits: (&config.limits).into(),
                soft_limit: config.limits.soft_limit_fraction,
                on_store_unavailable: config.limits.on_store_unavailable,
                override_horizon: chrono::Duration::days(i64::from(
                    config.limits.override_max_days,
                )),
                zone: config.reset_timezone,
                reservations: config.reservation_rules(),
                unaudited_recorders: config.limits.unaudited_recorders.iter().cloned().collect(),
                thresholds,
            },
            clock,
        );
        if let Some(worker) = &delivery {
            usage = usage.waking_on_events(worker.waker());
        }
        let state = AppState {
            usage: Arc::new(usage),
            verifier,
            max_tokens_per_request: config.max_tokens_per_request,
            draining: Arc::default(),
            // With an address of their own, the metrics are not served on the service's port.
            metrics: match config.metrics_addr {
                Some(_) => MetricsAccess::Elsewhere,
                None => guarded.clone(),
            },
            today_gauges: Arc::new(TodayGauges::new(TODAY_GAUGES_INTERVAL)),
            streams: Arc::new(Streams::new(stream_settings(&config))),
            reset_zone: config.reset_timezone,
            notifications: Notifications {
                outbox: serving.outbox,
                wake: delivery.as_ref().map(DeliveryWorker::waker),
            },
        };
        let edge = EdgeSettings {
            request_timeout: config.request_timeout(),
            cors_allowed_origins: config.cors_allowed_origins.clone(),
            dashboard: dashboard_settings(&config),
        };
        let metrics = match config.metrics_addr {
            Some(address) => Some((
                bind(address).await?,
                metrics_router(AppState {
                    metrics: guarded,
                    ..state.clone()
                }),
            )),
            None => None,
        };
        let listener = bind(SocketAddr::new(config.listen_host(), config.port)).await?;
        Ok(Self {
            listener,
            metrics,
            delivery,
            draining: state.draining.clone(),
            router: router(state, &edge),
            connections: config.connections(),
        })
    }

    /// Set when the service shuts down; setting it makes readiness fail.
    pub fn draining(&self) -> Arc<Draining> {
        self.draining.clone()
    }

    /// Where the service listens (the real port when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `GET /metrics` is served on its own, if it is.
    pub fn metrics_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.metrics
            .as_ref()
            .map(|(listener, _)| listener.local_addr())
    }

    /// Serves until SIGTERM or SIGINT, then lets the requests in flight finish.
    pub async fn run(self) {
        self.run_until(server::shutdown_signal()).await;
    }

    /// Serves until `shutdown` resolves, then lets the requests in flight finish. The metrics
    /// address, if any, is served until the service itself has finished, so that the drain can
    /// still be watched.
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        // Stops when the drain starts; an entry it leaves is taken again once its lease ends.
        let delivery = self.delivery.map(|worker| {
            let draining = self.draining.clone();
            tokio::spawn(worker.run(async move { draining.started().await }))
        });
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = self.metrics.map(|(listener, router)| {
            tokio::spawn(server::serve(
                listener,
                router,
                self.connections,
                Arc::default(),
                async {
                    let _ = metrics_stopped.await;
                },
            ))
        });
        server::serve(
            self.listener,
            self.router,
            self.connections,
            self.draining,
            shutdown,
        )
        .await;
        drop(stop_metrics);
        if let Some(delivery) = delivery
            && let Err(error) = delivery.await
        {
            tracing::warn!(%error, "the delivery of notifications did not stop cleanly");
        }
        if let Some(metrics) = metrics
            && let Err(error) = metrics.await
        {
            tracing::warn!(%error, "the metrics address did not stop cleanly");
        }
    }
}

/// A listener on `address`, or why not.
async fn bind(address: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartupError::Listen { address, source })
}

/// What `/dashboard` needs of the deployment.
fn dashboard_settings(config: &Config) -> DashboardSettings {
    let project_id = &config.store.firebase_project_id;
    DashboardSettings {
        project_id: project_id.clone(),
        time_zone: config.reset_timezone,
        web_app: config
            .dashboard
            .firebase_web_api_key
            .clone()
            .map(|api_key| FirebaseWebApp {
                api_key,
                auth_domain: config
                    .dashboard
                    .firebase_auth_domain
                    .clone()
                    .unwrap_or_else(|| format!("{project_id}.firebaseapp.com")),
                auth_emulator_host: config.firebase_auth_emulator_host.clone(),
            }),
    }
}
