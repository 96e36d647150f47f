//! The HTTPS listener: one Tokio task per connection, HTTP/1.1 with keep-alive as the API
//! server uses it.
//!
//! | method and path | response |
//! | --- | --- |
//! | `POST /mutate` | the AdmissionReview for namespaces that allow hostPath volumes |
//! | `POST /pod-security/baseline`, `POST /pod-security/restricted` | the AdmissionReview for namespaces that enforce that level |
//! | `GET /healthz` | `ok`, for readiness and liveness probes |

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::connections::{Admission, ConnectionState, ConnectionTable, LimitWarnings};
use super::review::{review, PodSecurityLevel, Route};
use super::settings::WebhookSettings;
use super::tls::{server_config, ReloadingCertificate, TlsError};

/// Largest request body read. The API server sends the pod, and for updates the old pod too;
/// etcd limits an object to 1.5 MiB by default.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// A TLS handshake or request header that takes longer than this ends the connection.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a request body may take to arrive. The API server waits at most 30 s for a webhook.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a connection closed to make room gets to finish writing a response it just produced.
const EVICTION_GRACE: Duration = Duration::from_secs(1);
/// Time open connections get to finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed `accept`, so a persistent error such as `EMFILE` does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A webhook that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot load the TLS certificate: {0}")]
    Tls(#[from] TlsError),
    #[error(
        "cannot listen on {address}: {source}; choose a free address with [webhook] listen or \
         --listen"
    )]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound webhook listener with its certificate loaded, not yet serving.
pub struct Webhook {
    listener: TcpListener,
    address: SocketAddr,
    acceptor: TlsAcceptor,
    settings: Arc<WebhookSettings>,
}

impl Webhook {
    /// Loads the certificate and binds the listen address. Must be called within a Tokio
    /// runtime.
    pub async fn bind(settings: WebhookSettings) -> Result<Webhook, WebhookError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate =
            ReloadingCertificate::load(&settings.tls_cert, &settings.tls_key, provider)?;
        let config = server_config(Arc::new(certificate))?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| WebhookError::Listen {
                    address: settings.listen,
                    source,
                })?;
        // With port 0 the system picks the port, so the bound address is the one to report.
        let address = listener
            .local_addr()
            .map_err(|source| WebhookError::Listen {
                address: settings.listen,
                source,
            })?;
        Ok(Webhook {
            listener,
            address,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            settings: Arc::new(settings),
        })
    }

    /// Returns the address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves admission requests until `shutdown` completes, then gives open connections
    /// [`SHUTDOWN_GRACE`] to finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let stop = CancellationToken::new();
        let table = ConnectionTable::new(self.settings.max_connections);
        let mut limit_warnings = LimitWarnings::new(self.settings.max_connections);
        let mut connections = JoinSet::new();
        tracing::info!(
            address = %self.address,
            socket = %self.settings.socket.display(),
            library_dir = %self.settings.library_dir.display(),
            max_connections = self.settings.max_connections,
            token_path = %self.settings.token_path.display(),
            "webhook listening"
        );
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "webhook accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            };
            let Some((slot, admission)) = table.admit() else {
                tracing::debug!(%peer, "webhook connection refused: all connections are busy");
                limit_warnings.refused();
                continue;
            };
            if admission == Admission::Evicted {
                limit_warnings.evicted();
            }
            let acceptor = self.acceptor.clone();
            let settings = Arc::clone(&self.settings);
            let stop = stop.clone();
            connections.spawn(async move {
                let connection = Arc::clone(&slot.state);
                serve_connection(stream, peer, acceptor, settings, connection, stop).await;
                drop(slot);
            });
        }

        tracing::info!(open = connections.len(), "webhook stopping");
        stop.cancel();
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = connections.len(),
                "webhook connections still open after the grace period; closing them"
            );
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    settings: Arc<WebhookSettings>,
    connection_state: Arc<ConnectionState>,
    stop: CancellationToken,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let tls = tokio::select! {
        handshake = handshake => handshake,
        () = connection_state.evicted() => {
            tracing::debug!(%peer, "webhook connection closed during the TLS handshake to make room");
            return;
        }
    };
    let tls = match tls {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(%peer, %err, "webhook TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "webhook TLS handshake timed out");
            return;
        }
    };
    let requests = Arc::clone(&connection_state);
    let service = service_fn(move |request| {
        let settings = Arc::clone(&settings);
        let in_flight = requests.start_request();
        async move {
            let response = respond(request, &settings).await;
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = connection_state.evicted() => {
            // The connection is polled only by this task, so no request can start between the
            // check and the close. One that started before the table picked this connection
            // finishes; a response produced just before gets a short time to be written.
            if connection_state.is_busy() {
                tracing::debug!(%peer, "webhook connection closes after its request to make room");
                connection.as_mut().graceful_shutdown();
                connection.await
            } else if connection_state.has_requested() {
                tracing::debug!(%peer, "idle webhook connection closed to make room");
                connection.as_mut().graceful_shutdown();
                tokio::time::timeout(EVICTION_GRACE, connection).await.unwrap_or(Ok(()))
            } else {
                tracing::debug!(%peer, "webhook connection closed before its first request to make room");
                return;
            }
        }
    };
    if let Err(err) = served {
        tracing::debug!(%peer, %err, "webhook connection ended with an error");
    }
}

async fn respond(request: Request<Incoming>, settings: &WebhookSettings) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    let route = match path.strip_prefix("/pod-security/") {
        None if path == "/mutate" => Route::Mutate,
        Some(level) => match PodSecurityLevel::parse(level) {
            Some(level) => Route::PodSecurity(level),
            None => return not_found(),
        },
        None => return not_found(),
    };
    if request.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: send AdmissionReviews with POST\n",
        );
    }

    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    let body = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) => {
            if err.is::<http_body_util::LengthLimitError>() {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body over 8 MiB: an AdmissionReview of a pod is far smaller\n",
                );
            }
            return text(StatusCode::BAD_REQUEST, "failed to read the request body\n");
        }
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "request body timed out\n"),
    };
    match review(&body, route, settings) {
        Ok(answer) => match serde_json::to_vec(&answer) {
            Ok(json) => {
                let mut response = Response::new(Full::new(Bytes::from(json)));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                response
            }
            Err(err) => {
                tracing::error!(%err, "bug: the AdmissionReview response cannot be serialized");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed to serialize the response\n",
                )
            }
        },
        Err(err) => {
            tracing::warn!(%err, "invalid admission request");
            text(StatusCode::BAD_REQUEST, &format!("{err}\n"))
        }
    }
}

fn not_found() -> Response<Full<Bytes>> {
    text(
        StatusCode::NOT_FOUND,
        "not found: AdmissionReviews are served at /mutate and /pod-security/<level>\n",
    )
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
