//! The HTTP listener of `[metrics] listen`: `GET /metrics` returns every metric in the
//! OpenMetrics text format, which Prometheus scrapes. Any other path gets 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::Metrics;

/// The only path served.
const METRICS_PATH: &str = "/metrics";
/// Content type of the OpenMetrics text format that `prometheus-client` writes.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrape connections served at once; further ones are closed at accept.
const MAX_CONNECTIONS: usize = 64;
/// A connection that has not sent complete request headers within this time is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept`, so a persistent error such as `EMFILE` does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A metrics listener that cannot start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on [metrics] listen = \"{address}\": {source}; choose a free address and \
     port, or remove [metrics] listen to turn the metrics listener off"
)]
pub struct MetricsError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The bound TCP socket of the metrics listener, not yet served.
pub(crate) struct MetricsListener {
    listener: TcpListener,
    address: SocketAddr,
}

impl MetricsListener {
    /// Binds `address`. Must be called from within a Tokio runtime.
    pub(crate) async fn bind(address: SocketAddr) -> Result<MetricsListener, MetricsError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| MetricsError { address, source })?;
        // With port 0 the system picks the port, so the bound address is the one to report.
        let address = listener
            .local_addr()
            .map_err(|source| MetricsError { address, source })?;
        Ok(MetricsListener { listener, address })
    }

    /// Returns the address the listener is bound to.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// Starts serving `metrics` on the current Tokio runtime.
    pub(crate) fn serve(self, metrics: Arc<Metrics>) -> MetricsTask {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(self.listener, metrics, stop.clone()));
        tracing::info!(address = %self.address, path = METRICS_PATH, "metrics listening");
        MetricsTask { task, stop }
    }
}

/// A running metrics listener.
pub(crate) struct MetricsTask {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl MetricsTask {
    /// Stops accepting, closes open scrape connections and waits for the listener to end.
    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        if let Err(err) = self.task.await {
            if err.is_panic() {
                tracing::error!(%err, "bug: the metrics listener panicked");
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "metrics accept failed; retrying");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, MAX_CONNECTIONS, "too many metrics connections; closed one");
            continue;
        };
        let metrics = Arc::clone(&metrics);
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&metrics, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                tracing::debug!(%peer, %err, "metrics connection ended with an error");
            }
            drop(permit);
        });
    }
    // Dropping the set aborts the connections still open.
    drop(connections);
}

/// Builds the response to one HTTP request.
fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() != METRICS_PATH {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are served at /metrics\n",
        );
    }
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET /metrics\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
    );
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
