//! Serving connections: HTTP/1.1 only, at most a set number open at once, a client that is
//! slow to send its request head is cut off, and on SIGTERM or SIGINT the service stops
//! accepting, reports itself not ready, and lets the requests in flight finish within a grace
//! period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// How the service treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// A client must send a whole request head within this time of the connection being
    /// ready for one, which also ends keep-alive connections left idle that long.
    pub header_read_timeout: Duration,
    /// Connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// After a shutdown signal, the longest the requests in flight may take.
    pub shutdown_grace: Duration,
}

/// Set once the service is shutting down: readiness answers 503 from then on, and the
/// responses that would otherwise last (event streams) end, so that the drain can finish.
#[derive(Debug)]
pub struct Draining(watch::Sender<bool>);

impl Default for Draining {
    fn default() -> Self {
        Self(watch::Sender::new(false))
    }
}

impl Draining {
    pub fn start(&self) {
        self.0.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the service is shutting down (at once if it already is).
    pub async fn started(&self) {
        // The sender lives in `self`, so the wait ends only with the drain.
        let _ = self.0.subscribe().wait_for(|draining| *draining).await;
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ConnectionSettings,
    draining: Arc<Draining>,
    shutdown: impl Future<Output = ()>,
) {
    // HTTP/1.1 only. Cloud Run speaks it to the container unless the service is set up for
    // end-to-end HTTP/2; serving both would let a client hold a connection, and one of
    // `max_connections`, for ever: hyper's HTTP/2 has no header read timeout, and neither has
    // the wait for the first bytes that tell the two apart.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(settings.max_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept_within(&listener, &open) => accepted,
        };
        let Some((stream, peer, permit)) = accepted else {
            continue;
        };
        let router = router.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request.map(axum::body::Body::new))
            },
        ));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    draining.start();
    drop(listener);
    tracing::info!(grace = ?settings.shutdown_grace, "shutting down: finishing requests in flight");
    match tokio::time::timeout(settings.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("every request finished"),
        Err(_) => tracing::warn!("the grace period ended with requests still running"),
    }
}

/// The next connection, once one may be opened; `None` when accepting failed (out of file
/// descriptors, say), after a pause so that the loop does not spin.
async fn accept_within(
    listener: &TcpListener,
    open: &Arc<Semaphore>,
) -> Option<(
    tokio::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let permit = open.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, peer)) => Some((stream, peer, permit)),
        Err(error) => {
            tracing::warn!(%error, "cannot accept a connection");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Resolves on SIGTERM (Cloud Run, `podman stop`) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
