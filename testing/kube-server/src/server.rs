//! The running server: its listener on 127.0.0.1, connection handling, and the control API
//! tests use to change pods, tokens and availability and to inspect what clients did.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Pod, Secret};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::api::{self, ApiRequest, Body, Route};
use crate::auth::Rule;
use crate::jwt::DEFAULT_ISSUER;
use crate::state::{PodTokenRequest, RecordedRequest, ServerState};
use crate::status::ApiError;

/// The API server's default limit on request bodies: 3 MiB.
const MAX_REQUEST_BODY: usize = 3 * 1024 * 1024;

/// Settings of a [`KubeTestServer`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// `iss` of issued service account tokens.
    pub issuer: String,
    /// Period of `BOOKMARK` events on watches that allow them (the API server sends one about
    /// every minute).
    pub bookmark_interval: Duration,
    /// Bearer token with every permission; a random one when `None`.
    pub admin_token: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            port: 0,
            issuer: DEFAULT_ISSUER.to_owned(),
            bookmark_interval: Duration::from_secs(60),
            admin_token: None,
        }
    }
}

/// The server could not start or resume listening.
#[derive(Debug, thiserror::Error)]
#[error("failed to listen on {addr}: {source}")]
pub struct StartError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// State shared by the connection tasks and the control handle.
pub(crate) struct Shared {
    pub(crate) state: Mutex<ServerState>,
    pub(crate) bookmark_interval: Duration,
    /// Bumped to end every open watch.
    pub(crate) close_watches: tokio::sync::watch::Sender<u64>,
}

/// A Kubernetes API test server listening on 127.0.0.1. Dropping it stops the listener.
pub struct KubeTestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    admin_token: String,
    listener: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl KubeTestServer {
    /// Starts the server with `options` and begins listening.
    pub async fn start(options: ServerOptions) -> Result<KubeTestServer, StartError> {
        let requested = SocketAddr::from(([127, 0, 0, 1], options.port));
        let listener = bind(requested)?;
        let addr = listener.local_addr().map_err(|source| StartError {
            addr: requested,
            source,
        })?;

        let mut state = ServerState::new(options.issuer.clone());
        let admin_token = options
            .admin_token
            .clone()
            .unwrap_or_else(|| format!("admin-{}", crate::ids::uuid()));
        state.auth.register(
            &admin_token,
            "kubernetes-admin",
            vec![Rule::new(&["*"], &["*"])],
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            bookmark_interval: options.bookmark_interval,
            close_watches: tokio::sync::watch::channel(0).0,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        info!(%addr, "kube test server listening");
        Ok(KubeTestServer {
            shared,
            addr,
            admin_token,
            listener: tokio::sync::Mutex::new(Some(task)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, the cluster's `server` in a kubeconfig.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the bearer token of `kubernetes-admin`, which may do anything.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Builds a kubeconfig (JSON, which YAML readers accept) that reaches this server with
    /// `token` as the bearer token.
    pub fn kubeconfig(&self, token: &str) -> String {
        let name = "envproxy-test";
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": name, "cluster": { "server": self.url() } }],
            "users": [{ "name": name, "user": { "token": token } }],
            "contexts": [{
                "name": name,
                "context": { "cluster": name, "user": name, "namespace": "default" },
            }],
            "current-context": name,
        })
        .to_string()
    }

    /// Registers a bearer token for `user` with the permissions in `rules`.
    pub fn register_token(&self, token: &str, user: &str, rules: Vec<Rule>) {
        self.shared.state.lock().auth.register(token, user, rules);
    }

    /// Grants `rules` to service account `namespace/name`, as a RoleBinding (rules limited to
    /// namespaces) or a ClusterRoleBinding (rules without) would. Requests with a token this
    /// server issued for the service account are then allowed what the rules allow.
    pub fn grant_service_account(&self, namespace: &str, name: &str, rules: Vec<Rule>) {
        let mut state = self.shared.state.lock();
        state.add_service_account(namespace, name);
        state.auth.grant_service_account(namespace, name, rules);
    }

    /// Returns the audience the server accepts in service account tokens: its issuer, as an
    /// API server started without `--api-audiences` does.
    pub fn api_audience(&self) -> String {
        self.shared.state.lock().issuer.clone()
    }

    /// Forgets a bearer token; returns whether it was registered.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.shared.state.lock().auth.revoke(token)
    }

    /// Creates or replaces a pod (an `ADDED` or `MODIFIED` event) and returns it as stored.
    pub fn apply_pod(&self, pod: Pod) -> Result<Pod, ApiError> {
        self.shared.state.lock().apply_pod(pod)
    }

    /// Changes a stored pod with `change` and stores it (a `MODIFIED` event); `None` when no
    /// such pod exists.
    pub fn modify_pod(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Pod),
    ) -> Option<Pod> {
        let mut state = self.shared.state.lock();
        let mut pod = Pod::clone(state.pods.get(&(namespace.to_owned(), name.to_owned()))?);
        change(&mut pod);
        pod.metadata.namespace = Some(namespace.to_owned());
        pod.metadata.name = Some(name.to_owned());
        Some(state.apply_pod(pod).expect("a stored pod has a name"))
    }

    /// Deletes a pod (a `DELETED` event) and returns its last state.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.shared.state.lock().delete_pod(namespace, name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let state = self.shared.state.lock();
        let pod = state.pods.get(&(namespace.to_owned(), name.to_owned()))?;
        Some(Pod::clone(pod))
    }

    /// Creates or replaces a Secret as a create or update request would (an `ADDED` or
    /// `MODIFIED` event) and returns it as stored: `stringData` merged into `data`.
    pub fn apply_secret(&self, secret: Secret) -> Result<Secret, ApiError> {
        self.shared.state.lock().apply_secret(secret)
    }

    /// Deletes a Secret (a `DELETED` event) and returns its last state.
    pub fn delete_secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.shared.state.lock().delete_secret(namespace, name)
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        let state = self.shared.state.lock();
        let secret = state
            .secrets
            .get(&(namespace.to_owned(), name.to_owned()))?;
        Some(Secret::clone(secret))
    }

    /// Creates a service account; pods create their own when they are applied.
    pub fn add_service_account(&self, namespace: &str, name: &str) {
        self.shared
            .state
            .lock()
            .add_service_account(namespace, name);
    }

    /// Returns the UID the server gave a node when a pod first named it.
    pub fn node_uid(&self, name: &str) -> Option<String> {
        self.shared.state.lock().node_uid(name)
    }

    /// Returns the latest resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.state.lock().resource_version
    }

    /// Drops the watch history up to now: a watch that resumes from an earlier resource
    /// version gets an `ERROR` event with 410 Expired. Open watches are not affected.
    pub fn compact(&self) {
        self.shared.state.lock().compact();
    }

    /// Ends every open watch, as an API server restart or a load balancer would; clients
    /// resume from their last resource version.
    pub fn close_watches(&self) {
        self.shared
            .close_watches
            .send_modify(|generation| *generation += 1);
    }

    /// While unavailable, every request gets 503 `ServiceUnavailable`; turning it on also
    /// ends open watches.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.state.lock().unavailable = unavailable;
        if unavailable {
            self.close_watches();
        }
    }

    /// Mints the token the kubelet would project into pod `namespace/pod_name` for its service
    /// account: RS256-signed, bound to the pod and its node, for `audience`.
    ///
    /// Unlike the TokenRequest API, any `lifetime` is accepted, so tests can mint short-lived
    /// tokens.
    pub fn mint_projected_token(
        &self,
        namespace: &str,
        pod_name: &str,
        audience: &str,
        lifetime: Duration,
    ) -> Result<String, ApiError> {
        let audiences = [audience.to_owned()];
        let request = PodTokenRequest {
            namespace,
            service_account: None,
            pod_name,
            pod_uid: None,
            audiences: &audiences,
            lifetime,
        };
        self.shared
            .state
            .lock()
            .issue_pod_token(&request, SystemTime::now())
    }

    /// Returns the JSON Web Key Set that verifies issued tokens.
    pub fn jwks(&self) -> Value {
        self.shared.state.lock().signing_key.jwks()
    }

    /// Counts the requests with this verb (`list`, `watch`, `get`, `create`) on this resource
    /// (`pods`, `secrets`, `serviceaccounts/token`), whatever their outcome.
    pub fn request_count(&self, verb: &str, resource: &str) -> usize {
        let state = self.shared.state.lock();
        state
            .requests
            .iter()
            .filter(|r| r.verb == verb && r.resource == resource)
            .count()
    }

    /// Returns every request in order of arrival, with its status.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.clone()
    }

    /// Closes the listening socket and every open connection. State is kept.
    pub async fn stop_listening(&self) {
        let task = self.listener.lock().await.take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
            info!(addr = %self.addr, "kube test server stopped listening");
        }
    }

    /// Listens again on the same address after [`KubeTestServer::stop_listening`].
    pub async fn start_listening(&self) -> Result<(), StartError> {
        let mut guard = self.listener.lock().await;
        if guard.is_some() {
            return Ok(());
        }
        let listener = bind(self.addr)?;
        *guard = Some(tokio::spawn(accept_loop(listener, self.shared.clone())));
        info!(addr = %self.addr, "kube test server listening again");
        Ok(())
    }

    /// Stops listening and drops the server.
    pub async fn shutdown(self) {
        self.stop_listening().await;
    }
}

impl Drop for KubeTestServer {
    fn drop(&mut self) {
        if let Some(task) = self.listener.get_mut().take() {
            task.abort();
        }
    }
}

/// Binds with `SO_REUSEADDR`, so the port can be bound again while old connections linger in
/// TIME_WAIT after [`KubeTestServer::stop_listening`].
fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    let bind_error = |source| StartError { addr, source };
    let socket = TcpSocket::new_v4().map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    socket.listen(1024).map_err(bind_error)
}

/// Accepts connections until aborted. Dropping the task drops the `JoinSet`, which aborts
/// every connection it spawned and so ends their watches.
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
    let service = service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, request).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = result {
        debug!(%err, "connection ended with an error");
    }
}

/// Handles one request: authenticates and authorizes it, routes it and records it.
async fn respond(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let raw_query = parts.uri.query().unwrap_or_default().to_owned();
    let token = parts
        .headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            debug!(%err, "failed to read request body");
            let error = ApiError {
                code: 413,
                reason: "RequestEntityTooLarge",
                message: "request entity too large".to_owned(),
                details: None,
                causes: &[],
                retry_after_seconds: None,
            };
            return api::error_response(&error);
        }
    };
    let request = ApiRequest {
        method: parts.method.clone(),
        route: Route::parse(parts.uri.path()),
        query: parse_query(&raw_query),
        raw_query,
        token,
        body,
    };

    let (verb, resource, namespace) = match request.attributes() {
        Some((verb, resource, namespace)) => (
            verb.to_owned(),
            resource.to_owned(),
            namespace.map(str::to_owned),
        ),
        None => (
            parts.method.as_str().to_lowercase(),
            parts.uri.path().to_owned(),
            None,
        ),
    };
    let denied = {
        let state = shared.state.lock();
        if state.unavailable {
            Some(ApiError::unavailable())
        } else if request.attributes().is_some() {
            state
                .authorize(
                    request.token.as_deref(),
                    &verb,
                    &resource,
                    namespace.as_deref(),
                    SystemTime::now(),
                )
                .err()
        } else {
            None
        }
    };
    let raw_query = request.raw_query.clone();
    let response = match denied {
        Some(error) => api::error_response(&error),
        None => {
            wait_for_resource_version(shared, &request).await;
            api::dispatch(shared, request)
        }
    };
    let status = response.status().as_u16();
    debug!(%verb, %resource, ?namespace, status, "request served");
    shared.state.lock().requests.push(RecordedRequest {
        verb,
        resource,
        namespace,
        query: raw_query,
        status,
    });
    response
}

/// Decodes `%XX` escapes and `+`; an invalid escape is kept as it is.
fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(value) => {
                        out.push(value);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((key, value)) => (percent_decode(key), percent_decode(value)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

/// Time the API server waits for its cache to reach a requested resource version before it
/// responds with 504 "Too large resource version" (`blockTimeout` of the watch cache in
/// k8s.io/apiserver).
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);

/// Waits up to [`TOO_LARGE_WAIT`] while a list or watch requests a resource version newer than
/// the server's, as the API server does before it gives up.
async fn wait_for_resource_version(shared: &Shared, request: &ApiRequest) {
    let Some(requested) = request
        .query
        .get("resourceVersion")
        .and_then(|text| text.parse::<u64>().ok())
    else {
        return;
    };
    let deadline = tokio::time::Instant::now() + TOO_LARGE_WAIT;
    while shared.state.lock().resource_version < requested {
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let query = parse_query("fieldSelector=spec.nodeName%3Dnode-a&watch=true&x=a+b&flag");
        assert_eq!(query["fieldSelector"], "spec.nodeName=node-a");
        assert_eq!(query["watch"], "true");
        assert_eq!(query["x"], "a b");
        assert_eq!(query["flag"], "");
    }

    #[test]
    fn invalid_escapes_are_kept() {
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("x%zz"), "x%zz");
        assert_eq!(percent_decode("%41"), "A");
    }
}
