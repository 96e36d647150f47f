//! The running server: its listener on 127.0.0.1, the one route it serves, and the control API
//! that tests use to set secrets and tokens, inject faults and read the request log.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::state::{Decision, Fault, RecordedRequest, State, StoredSecret, TokenAccess};
use crate::tls::{self, TlsError, TlsMaterial};

/// The path prefix of the secrets route.
const ENV_PREFIX: &str = "/v1/env/";

/// Listening options of the server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Port on 127.0.0.1; 0 picks a free port.
    pub port: u16,
    /// Serve HTTPS with a CA generated at start.
    pub tls: bool,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

struct Shared {
    state: Mutex<State>,
    tls: Option<TlsMaterial>,
}

/// An HTTP secrets API listening on 127.0.0.1. Dropping it stops the listener and closes every
/// connection.
pub struct HttpSecretsServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpSecretsServer {
    /// Starts a plain HTTP server on a free port.
    pub async fn start() -> Result<HttpSecretsServer, StartError> {
        HttpSecretsServer::start_with(ServerOptions::default()).await
    }

    /// Starts the server with `options` and begins listening.
    pub async fn start_with(options: ServerOptions) -> Result<HttpSecretsServer, StartError> {
        let tls = if options.tls {
            Some(tls::generate()?)
        } else {
            None
        };
        let requested = SocketAddr::from(([127, 0, 0, 1], options.port));
        let bind_error = |source| StartError::Bind {
            addr: requested,
            source,
        };
        let listener = TcpListener::bind(requested).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            tls,
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        info!(%addr, tls = shared.tls.is_some(), "HTTP secrets test server listening");
        Ok(HttpSecretsServer { shared, addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns `http://127.0.0.1:<port>`, or `https://...` with TLS: the backend's `url`.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Returns the PEM of the CA that signed the server certificate; `None` without TLS.
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.shared.tls.as_ref().map(|tls| tls.ca_cert_pem.as_str())
    }

    /// Sets `key` to the string `value`, with no `ttl` in the response.
    pub fn set_secret(&self, key: &str, value: &str) {
        self.store(key, Value::String(value.to_owned()), None);
    }

    /// Sets `key` to the string `value`, with `ttl` (seconds) in the response.
    pub fn set_secret_with_ttl(&self, key: &str, value: &str, ttl_secs: u64) {
        self.store(key, Value::String(value.to_owned()), Some(ttl_secs));
    }

    /// Sets `key` to any JSON value, such as a number, to test clients that expect a string.
    pub fn set_json_value(&self, key: &str, value: Value) {
        self.store(key, value, None);
    }

    /// Removes `key`; later requests for it get 404.
    pub fn remove_secret(&self, key: &str) {
        self.shared.state.lock().secrets.remove(key);
    }

    /// Registers a bearer token with what it may read. A token that was never registered gets
    /// 401.
    pub fn add_token(&self, token: &str, access: TokenAccess) {
        self.shared
            .state
            .lock()
            .tokens
            .insert(token.to_owned(), access);
    }

    /// Registers a token that may read only `keys`.
    pub fn add_token_for_keys(&self, token: &str, keys: &[&str]) {
        let keys: BTreeSet<String> = keys.iter().map(|key| key.to_string()).collect();
        self.add_token(token, TokenAccess::Keys(keys));
    }

    /// Removes a token; requests with it get 401 from now on.
    pub fn remove_token(&self, token: &str) {
        self.shared.state.lock().tokens.remove(token);
    }

    /// Delays every response by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.state.lock().latency = latency;
    }

    /// Injects `fault` into the responses for every key, until [`Self::clear_faults`].
    pub fn inject(&self, fault: Fault) {
        self.shared.state.lock().faults.push((None, fault));
    }

    /// Injects `fault` into the responses for `key` only.
    pub fn inject_for(&self, key: &str, fault: Fault) {
        self.shared
            .state
            .lock()
            .faults
            .push((Some(key.to_owned()), fault));
    }

    /// Removes every injected fault.
    pub fn clear_faults(&self) {
        self.shared.state.lock().faults.clear();
    }

    /// Returns how many requests for `key` under `/v1/env/` the server received, whatever their
    /// outcome.
    pub fn request_count(&self, key: &str) -> usize {
        self.shared
            .state
            .lock()
            .requests
            .iter()
            .filter(|request| request.key.as_deref() == Some(key))
            .count()
    }

    /// Returns every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.clone()
    }

    /// Stops listening and closes every open connection.
    pub fn shutdown(&self) {
        self.task.abort();
    }

    fn store(&self, key: &str, value: Value, ttl_secs: Option<u64>) {
        self.shared
            .state
            .lock()
            .secrets
            .insert(key.to_owned(), StoredSecret { value, ttl_secs });
    }
}

impl Drop for HttpSecretsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping the set when this task is aborted aborts every connection task with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    debug!(%peer, "connection accepted");
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(err) => {
                    warn!(%err, "accept failed; retrying in 10 ms");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service_shared = Arc::clone(&shared);
    let service = service_fn(move |request| {
        let shared = Arc::clone(&service_shared);
        async move { Ok::<_, Infallible>(respond(&shared, request).await) }
    });
    let builder = hyper::server::conn::http1::Builder::new();
    let result = match &shared.tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server_config));
            match acceptor.accept(stream).await {
                Ok(stream) => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Err(err) => {
                    debug!(%err, "TLS handshake failed");
                    return;
                }
            }
        }
        None => {
            builder
                .serve_connection(TokioIo::new(stream), service)
                .await
        }
    };
    if let Err(err) = result {
        debug!(%err, "connection ended with an error");
    }
}

/// Handles one request: records it, applies latency and faults, checks the token, then
/// returns the secret.
async fn respond(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let raw_path = request.uri().path().to_owned();
    let token = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let key = raw_path
        .strip_prefix(ENV_PREFIX)
        .filter(|segment| !segment.is_empty() && !segment.contains('/'))
        .map(|segment| {
            percent_encoding::percent_decode_str(segment)
                .decode_utf8_lossy()
                .into_owned()
        });

    let response = match &key {
        None => error_response(StatusCode::NOT_FOUND, "unknown path"),
        Some(_) if method != Method::GET => {
            let mut response =
                error_response(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            response
        }
        Some(key) => {
            let delay = shared.state.lock().delay_for(key);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let decision = shared.state.lock().decide(key, token.as_deref());
            secret_response(key, decision)
        }
    };

    shared.state.lock().requests.push(RecordedRequest {
        method: method.as_str().to_owned(),
        path: raw_path,
        key,
        had_bearer_token: token.is_some(),
        status: response.status().as_u16(),
    });
    response
}

fn secret_response(key: &str, decision: Decision) -> Response<Full<Bytes>> {
    match decision {
        Decision::Status(status, message) => error_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
        ),
        Decision::Unauthorized => {
            let mut response =
                error_response(StatusCode::UNAUTHORIZED, "missing or unknown bearer token");
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Decision::Forbidden => {
            error_response(StatusCode::FORBIDDEN, "this token may not read the key")
        }
        Decision::NotFound => error_response(StatusCode::NOT_FOUND, "no such key"),
        Decision::Found(secret) => {
            let mut body = json!({ "key": key, "value": secret.value });
            if let Some(ttl) = secret.ttl_secs {
                body["ttl"] = json!(ttl);
            }
            json_response(StatusCode::OK, &body)
        }
        Decision::Malformed(Fault::NotJson) => {
            let mut response = Response::new(Full::new(Bytes::from_static(
                b"<html><body>502 Bad Gateway</body></html>",
            )));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            response
        }
        Decision::Malformed(Fault::NonStringValue) => {
            json_response(StatusCode::OK, &json!({ "key": key, "value": 12345 }))
        }
        Decision::Malformed(_) => json_response(StatusCode::OK, &json!({ "key": key })),
    }
}

fn error_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message }))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
