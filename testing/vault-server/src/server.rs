//! The running server: its listener on 127.0.0.1, connection handling, and the control API
//! tests use to seed data, inject faults and inspect what clients did.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::api::{self, ApiRequest, ApiResponse};
use crate::clock::Clock;
use crate::control::NamespaceHandle;
use crate::faults::{InjectedFailure, RecordedRequest};
use crate::leases::{LeaseInfo, RevocationReason, RevokedLease};
use crate::options::{NodeState, ServerOptions};
use crate::state::{NewToken, ServerState, UnknownNamespace};
use crate::tls::{self, TlsError, TlsMaterial};
use crate::tokens::{IssuedToken, TokenSpec};

/// Vault's default limit on request bodies: 32 MiB.
const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;

/// The server could not start or resume listening.
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
    state: Arc<Mutex<ServerState>>,
    tls: Option<TlsMaterial>,
}

/// A Vault test server listening on 127.0.0.1. Dropping it stops the listener.
pub struct VaultTestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    root_token: String,
    listener: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl VaultTestServer {
    /// Starts the server with `options` and begins listening.
    pub async fn start(options: ServerOptions) -> Result<VaultTestServer, StartError> {
        let tls = if options.tls {
            Some(tls::generate()?)
        } else {
            None
        };
        let requested = SocketAddr::from(([127, 0, 0, 1], options.port));
        let listener = bind(requested)?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: requested,
            source,
        })?;

        let clock = Clock::new(options.clock);
        let mut state = ServerState::new(options.clone(), clock);
        let root = state.new_token_entry(NewToken {
            id: options.root_token.clone(),
            namespace: String::new(),
            namespace_id: None,
            policies: vec!["root".to_owned()],
            display_name: "root".to_owned(),
            path: "auth/token/root".to_owned(),
            meta: None,
            ttl: Duration::ZERO,
            max_ttl: Duration::ZERO,
            explicit_max_ttl: Duration::ZERO,
            renewable: false,
            orphan: true,
            role: None,
            with_entity: false,
        });
        let root_token = root.id.clone();
        state.tokens.insert(root);

        let shared = Arc::new(Shared {
            state: Arc::new(Mutex::new(state)),
            tls,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        info!(%addr, tls = shared.tls.is_some(), "vault test server listening");
        Ok(VaultTestServer {
            shared,
            addr,
            root_token,
            listener: tokio::sync::Mutex::new(Some(task)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` or `https://...` when TLS is on; the value for `VAULT_ADDR`.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Returns the root token, which has every capability on every path and never expires.
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// PEM of the CA that signed the server certificate; `None` without TLS.
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.shared.tls.as_ref().map(|t| t.ca_cert_pem.as_str())
    }

    /// Returns the root namespace, for seeding secrets, roles and policies.
    pub fn root(&self) -> NamespaceHandle {
        NamespaceHandle {
            state: self.shared.state.clone(),
            path: String::new(),
        }
    }

    /// Returns an existing namespace such as `team-a` or `team-a/sub`.
    pub fn namespace(&self, path: &str) -> Result<NamespaceHandle, UnknownNamespace> {
        NamespaceHandle::new(self.shared.state.clone(), path)
    }

    /// Creates a namespace (and missing parents) with the default mounts and returns it.
    pub fn create_namespace(&self, path: &str) -> NamespaceHandle {
        self.shared.state.lock().create_namespace(path);
        self.namespace(path).expect("namespace was just created")
    }

    /// Issues a token as `auth/token/create` would.
    pub fn create_token(&self, spec: TokenSpec) -> Result<IssuedToken, UnknownNamespace> {
        self.shared.state.lock().issue_token(&spec)
    }

    /// Revokes a token and its leases, as if it had been revoked through the API.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.shared.state.lock().revoke_token(token)
    }

    /// Returns whether the token is live (exists and has not expired).
    pub fn token_is_live(&self, token: &str) -> bool {
        let mut state = self.shared.state.lock();
        state.expire();
        let now = state.now();
        state.tokens.get(token, now).is_some()
    }

    /// Returns the server's current time.
    pub fn now(&self) -> SystemTime {
        self.shared.state.lock().now()
    }

    /// Moves the server clock forward and expires what ran out.
    pub fn advance_clock(&self, by: Duration) {
        let mut state = self.shared.state.lock();
        state.clock.advance(by);
        state.expire();
    }

    /// Seals the server: every request but `sys/health` and `sys/seal-status` gets 503.
    pub fn seal(&self) {
        self.shared.state.lock().sealed = true;
    }

    pub fn unseal(&self) {
        self.shared.state.lock().sealed = false;
    }

    /// Sets the HA or replication role that `sys/health` reports.
    pub fn set_node_state(&self, node_state: NodeState) {
        self.shared.state.lock().node_state = node_state;
    }

    /// Leases that are live now.
    pub fn live_leases(&self) -> Vec<LeaseInfo> {
        let mut state = self.shared.state.lock();
        state.expire();
        state.leases.live()
    }

    /// Leases that ended, in order, with the reason.
    pub fn revoked_leases(&self) -> Vec<RevokedLease> {
        let mut state = self.shared.state.lock();
        state.expire();
        state.leases.revoked()
    }

    /// Revokes a lease as an operator would; returns whether it was live.
    pub fn revoke_lease(&self, lease_id: &str) -> bool {
        let mut state = self.shared.state.lock();
        let now = state.now();
        state
            .leases
            .revoke(lease_id, RevocationReason::Revoked, now)
    }

    /// Delays every request whose path (after `/v1/`) starts with `prefix`.
    pub fn inject_latency(&self, prefix: &str, delay: Duration) {
        self.shared.state.lock().faults.add_latency(prefix, delay);
    }

    /// Fails the next `count` requests under `prefix` with `status` and the body Vault sends
    /// for it (for example 429 with the rate-limit message, 503 with `Vault is sealed`).
    pub fn inject_failures(&self, prefix: &str, count: u32, status: u16) {
        let failure = InjectedFailure {
            status,
            message: None,
        };
        self.shared
            .state
            .lock()
            .faults
            .add_failures(prefix, count, failure);
    }

    /// Like [`VaultTestServer::inject_failures`] with `{"errors":[message]}` as the body.
    pub fn inject_failures_with_message(
        &self,
        prefix: &str,
        count: u32,
        status: u16,
        message: &str,
    ) {
        let failure = InjectedFailure {
            status,
            message: Some(message.to_owned()),
        };
        self.shared
            .state
            .lock()
            .faults
            .add_failures(prefix, count, failure);
    }

    /// Removes all injected latency and failures.
    pub fn clear_faults(&self) {
        self.shared.state.lock().faults.clear();
    }

    /// How many requests arrived with this method (`GET`, `PUT`, `LIST`, ...) and path (after
    /// `/v1/`, without query), including injected failures.
    pub fn request_count(&self, method: &str, path: &str) -> u64 {
        self.shared.state.lock().requests.count(method, path)
    }

    /// Arrival counts for every (method, path).
    pub fn request_counts(&self) -> BTreeMap<(String, String), u64> {
        self.shared.state.lock().requests.counts()
    }

    /// Returns every completed request in order, with its status.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.completed()
    }

    pub fn clear_request_log(&self) {
        self.shared.state.lock().requests.clear();
    }

    /// Closes the listening socket and every open connection. State is kept.
    pub async fn stop_listening(&self) {
        let task = self.listener.lock().await.take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
            info!(addr = %self.addr, "vault test server stopped listening");
        }
    }

    /// Listens again on the same address after [`VaultTestServer::stop_listening`].
    pub async fn start_listening(&self) -> Result<(), StartError> {
        let mut guard = self.listener.lock().await;
        if guard.is_some() {
            return Ok(());
        }
        let listener = bind(self.addr)?;
        *guard = Some(tokio::spawn(accept_loop(listener, self.shared.clone())));
        info!(addr = %self.addr, "vault test server listening again");
        Ok(())
    }

    pub async fn is_listening(&self) -> bool {
        self.listener.lock().await.is_some()
    }

    /// Stops listening and drops the server.
    pub async fn shutdown(self) {
        self.stop_listening().await;
    }
}

impl Drop for VaultTestServer {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().take() {
            task.abort();
        }
    }
}

/// Binds with `SO_REUSEADDR`, so the port can be bound again while old connections linger in
/// TIME_WAIT after [`VaultTestServer::stop_listening`].
fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let socket = TcpSocket::new_v4().map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    socket.listen(1024).map_err(bind_error)
}

/// Accepts connections until aborted. Dropping the task drops the `JoinSet`, which aborts
/// every connection it spawned.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    debug!(%peer, "connection accepted");
                    connections.spawn(serve_connection(stream, shared.clone()));
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
    let service_shared = shared.clone();
    let service = service_fn(move |request| {
        let shared = service_shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, request).await) }
    });
    let builder = hyper::server::conn::http1::Builder::new();
    let result = match &shared.tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config.clone());
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

/// Handles one HTTP request: counts it, applies injected latency and failures, then routes it.
async fn respond(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let Some(encoded_path) = parts.uri.path().strip_prefix("/v1/") else {
        // Vault's Go HTTP mux returns a plain-text 404 for paths outside /v1/.
        return plain_response(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    let path = percent_decode(encoded_path);
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let namespace = header("x-vault-namespace").map(str::to_owned);
    let token = header("x-vault-token").map(str::to_owned).or_else(|| {
        header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
    });

    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            debug!(%err, "failed to read request body");
            let response = ApiResponse::errors(413, &["http: request body too large"]);
            return to_http(response, false);
        }
    };

    let (delay, failure) = {
        let mut state = shared.state.lock();
        state.requests.count_arrival(&method, &path);
        (
            state.faults.latency_for(&path),
            state.faults.take_failure(&path),
        )
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }

    let response = {
        let mut state = shared.state.lock();
        state.expire();
        let now = state.now();
        let accessor = token
            .as_deref()
            .and_then(|t| state.tokens.get(t, now))
            .map(|t| t.accessor.clone());
        let response = match failure {
            Some(failure) => {
                ApiResponse::for_status(failure.status, &path, failure.message.as_deref())
            }
            None => {
                let request = ApiRequest::new(
                    &method,
                    &path,
                    query,
                    namespace.as_deref(),
                    token,
                    body.to_vec(),
                );
                api::handle(&mut state, request)
            }
        };
        state.requests.push(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            namespace: namespace.unwrap_or_default().trim_matches('/').to_owned(),
            status: response.status,
            token_accessor: accessor,
        });
        response
    };
    debug!(%method, %path, status = response.status, "response sent");
    to_http(response, method == "HEAD")
}

fn to_http(response: ApiResponse, head: bool) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match (&response.body, head) {
        (Some(body), false) => Bytes::from(body.to_string()),
        _ => Bytes::new(),
    };
    let mut builder = Response::builder()
        .status(status)
        .header("cache-control", "no-store");
    if response.body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in response.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(body))
        .expect("static header names and values are valid")
}

fn plain_response(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(text.as_bytes())))
        .expect("static header names and values are valid")
}

/// Decodes `%XX` escapes; invalid escapes are kept as they are, as Go's URL parser would
/// reject them before Vault saw them.
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(&v.replace('+', " "))),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decode_handles_escapes() {
        assert_eq!(percent_decode("%09/auth/token"), "\t/auth/token");
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("x%zz"), "x%zz");
    }

    #[test]
    fn query_pairs_are_decoded() {
        let query = parse_query("version=2&list=true&flag");
        assert_eq!(query["version"], "2");
        assert_eq!(query["list"], "true");
        assert_eq!(query["flag"], "");
    }
}
