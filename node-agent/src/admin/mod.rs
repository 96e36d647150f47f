//! The admin plane: a gRPC API (`envproxy.admin.v1.Admin`) with `grpc.health.v1` and server
//! reflection, on its own Unix socket, plus the audit events of every request.
//!
//! # Socket
//!
//! The admin socket is never the socket that pods connect to. By default it is `admin.sock` in
//! a directory `admin/` beside the agent socket, which the agent creates with mode 0700, and
//! the socket itself has mode 0600, both owned by the agent's user. `[admin] socket` sets
//! another path. It is on by default in node mode and off by default in local mode, where
//! `[admin] enabled = true` or an `[admin] socket` turns it on.
//!
//! `[admin] health_listen` also serves `grpc.health.v1`, and nothing else, on a TCP address, for
//! the kubelet's gRPC probes, which cannot reach a Unix socket. It reports the same status.
//!
//! Every connection to the admin socket is checked with `SO_PEERCRED`: only the agent's uid is served. In node mode
//! the agent socket's directory is mounted into pods, and a container running as root has the
//! agent's uid, so a process in a pod is also rejected unless it runs in the agent's own pod.
//!
//! # Layout
//!
//! - [`audit`]: audit events, their channel and the JSON audit log.
//! - `workloads`: requests and denials per container.
//! - `service`: the `Admin` service.
//! - `flush`: `Flush`, over the caches of Vault, the HTTP API and Kubernetes Secrets.
//! - `reload`: `ReloadConfig`, compared with the settings the agent runs with.
//! - `health`: the `grpc.health.v1` status, updated as the agent's state changes.

pub mod audit;
mod cache;
mod flush;
mod health;
mod reload;
mod service;
mod workloads;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envproxy_admin_proto::v1::admin_server::AdminServer;
use futures::StreamExt;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use audit::{AuditEvent, AuditSettings, CacheOutcome, DEFAULT_AUDIT_BUFFER, MAX_AUDIT_BUFFER};

use crate::handler::Backends;
use crate::listener::{self, ListenerError, SocketFile};
use crate::node::caller::{BootTime, Caller};
use crate::node::cgroup;
use crate::node::identities::Identities;
use crate::node::pods::PodWatch;
use crate::peer;
use crate::refusals::{Refusals, RefusingSocket, Verdict};
use audit::AuditLog;
pub(crate) use reload::{reload as reload_config, RunningConfig};

/// Name of the admin socket's directory beside the agent socket.
const DEFAULT_DIRECTORY: &str = "admin";
/// File name of the admin socket.
const DEFAULT_FILE: &str = "admin.sock";
/// Pause after a failed `accept`, so a persistent error such as `EMFILE` does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// Time that open admin calls get to finish at shutdown before they are cut off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The `[admin]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdminSettings {
    /// `None` means on in node mode and off in local mode unless `socket` is set.
    pub enabled: Option<bool>,
    /// `None` selects `admin/admin.sock` beside the agent socket.
    pub socket: Option<PathBuf>,
    /// TCP address that serves only `grpc.health.v1`; `None` turns it off.
    pub health_listen: Option<SocketAddr>,
}

impl AdminSettings {
    /// Returns the admin socket path for an agent listening on `agent_socket`, or `None` when
    /// the admin socket is off.
    pub fn socket_path(&self, agent_socket: &Path, node_mode: bool) -> Option<PathBuf> {
        let enabled = self.enabled.unwrap_or(node_mode || self.socket.is_some());
        if !enabled {
            return None;
        }
        let path = match &self.socket {
            Some(path) => path.clone(),
            None => default_admin_socket(agent_socket),
        };
        Some(path)
    }
}

/// Returns `admin/admin.sock` in the directory of `agent_socket`.
pub fn default_admin_socket(agent_socket: &Path) -> PathBuf {
    agent_socket
        .parent()
        .unwrap_or(Path::new("/"))
        .join(DEFAULT_DIRECTORY)
        .join(DEFAULT_FILE)
}

/// The node-mode state that the admin API reads.
#[derive(Clone)]
pub(crate) struct NodeView {
    pub node_name: String,
    /// The agent's kube API client, for health probes.
    pub kube: kube::Client,
    pub pods: PodWatch,
    pub identities: Identities,
}

/// State shared by the admin service and the health updater.
pub(crate) struct AdminState {
    /// `"local"` or `"node"`.
    pub mode: &'static str,
    pub started: Instant,
    /// Local mode's backends; in node mode only the node-wide secrets file, if any.
    pub backends: Backends,
    pub node: Option<NodeView>,
    pub audit: Arc<AuditLog>,
    /// The config file the agent was started with, read again by `ReloadConfig`.
    pub config_source: Option<PathBuf>,
    /// The settings the agent runs with, to tell which keys a reload changes.
    pub running_config: Mutex<RunningConfig>,
    /// The error of the latest config reload when it failed, on one line.
    pub config_reload_error: Mutex<Option<String>>,
    pub health: health::Health,
    /// Cancelled when the agent shuts down; ends `WatchAudit` streams.
    pub stop: CancellationToken,
}

/// An admin socket that is bound but not yet served.
pub(crate) struct AdminListener {
    listener: UnixListener,
    socket: SocketFile,
    agent_uid: u32,
    /// The pod UID of the agent's own pod, when it runs in one.
    own_pod_uid: Option<String>,
    node_mode: bool,
    /// The TCP listener of `[admin] health_listen`.
    health: Option<TcpListener>,
}

/// A health listener that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on [admin] health_listen {address}: {source} (pick a free port, or an \
     address of this host)"
)]
pub struct HealthListenError {
    address: SocketAddr,
    #[source]
    source: std::io::Error,
}

impl AdminListener {
    /// Binds the admin socket at `path`: its directory 0700 and the socket 0600, owned by
    /// `agent_uid`.
    pub(crate) fn bind(
        path: &Path,
        agent_uid: u32,
        node_mode: bool,
    ) -> Result<AdminListener, ListenerError> {
        let (listener, socket) = listener::bind(path, agent_uid)?;
        let own_pod_uid = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| cgroup::parse_cgroup_file(&text).ok().flatten())
            .map(|pod| pod.pod_uid);
        Ok(AdminListener {
            listener,
            socket,
            agent_uid,
            own_pod_uid,
            node_mode,
            health: None,
        })
    }

    /// Binds the TCP listener that serves only `grpc.health.v1`.
    pub(crate) async fn bind_health(
        &mut self,
        address: SocketAddr,
    ) -> Result<(), HealthListenError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| HealthListenError { address, source })?;
        self.health = Some(listener);
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        self.socket.path()
    }

    /// Returns the address of the health listener, or `None` when it is off.
    pub(crate) fn health_address(&self) -> Option<SocketAddr> {
        self.health
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }
}

/// A running admin server.
pub(crate) struct AdminTask {
    task: JoinHandle<()>,
    stop: CancellationToken,
    socket: SocketFile,
}

impl AdminTask {
    /// Stops the server, gives open calls [`SHUTDOWN_GRACE`] to finish, and removes the socket.
    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        drop(self.socket);
    }
}

/// Starts serving the admin API on `admin` with `state`.
pub(crate) async fn serve(admin: AdminListener, state: Arc<AdminState>) -> AdminTask {
    let AdminListener {
        listener,
        socket,
        agent_uid,
        own_pod_uid,
        node_mode,
        health,
    } = admin;
    let stop = state.stop.clone();
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health_task = health::start_updater(Arc::clone(&state), reporter).await;
    // Some reflection clients ask only v1alpha, the older version of the same protocol.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(envproxy_admin_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => Some((v1, v1alpha)),
        (Err(err), _) | (_, Err(err)) => {
            tracing::error!(%err, "cannot build the gRPC reflection service; serving without it");
            None
        }
    };
    let (reflection_v1, reflection_v1alpha) = match reflection {
        Some((v1, v1alpha)) => (Some(v1), Some(v1alpha)),
        None => (None, None),
    };
    let path = socket.path().display().to_string();
    let admin_service = AdminServer::new(service::AdminService::new(Arc::clone(&state)));

    let refusals = Refusals::new(RefusingSocket::Admin, Arc::clone(&state.audit.metrics));
    let refusal_summaries = Refusals::spawn_summaries(&refusals);
    let checks = Arc::new(PeerCheck {
        agent_uid,
        own_pod_uid,
        node_mode,
        refusals,
    });
    let incoming = futures::stream::unfold((listener, checks), |(listener, checks)| async move {
        let stream = accept_authorized(&listener, &checks).await;
        Some((Ok::<_, std::io::Error>(stream), (listener, checks)))
    })
    .boxed();

    let health_tcp = health.map(|listener| {
        let health_service = health_service.clone();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let address = listener.local_addr().ok();
            tracing::info!(address = ?address, "gRPC health listener serving");
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let stream = accept_tcp(&listener).await;
                Some((Ok::<_, std::io::Error>(stream), listener))
            })
            .boxed();
            let result = tonic::transport::Server::builder()
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                .await;
            if let Err(err) = result {
                tracing::error!(address = ?address, %err, "the gRPC health listener stopped");
            }
        })
    });

    let shutdown = stop.clone();
    let task = tokio::spawn(async move {
        tracing::info!(socket = %path, "admin API listening");
        let result = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_optional_service(reflection_v1)
            .add_optional_service(reflection_v1alpha)
            .add_service(admin_service)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await;
        if let Err(err) = result {
            tracing::error!(socket = %path, %err, "the admin API stopped");
        }
        if let Some(health_tcp) = health_tcp {
            // The cancellation stopped it too, so this only cuts off probes that are still open.
            health_tcp.abort();
        }
        health_task.abort();
        refusal_summaries.abort();
    });
    AdminTask { task, stop, socket }
}

/// The rules that admit a connection to the admin socket.
struct PeerCheck {
    agent_uid: u32,
    own_pod_uid: Option<String>,
    node_mode: bool,
    /// Counts and rate-limits the warnings about refused connections.
    refusals: Arc<Refusals>,
}

/// A refused connection to the admin socket: its source, reason code and message.
struct AdminRefusal {
    /// The pod UID of the caller, or its uid outside pods, to group repeated refusals.
    source: String,
    /// A stable code for metrics.
    reason: &'static str,
    message: String,
}

impl PeerCheck {
    /// Returns why the peer of `stream` may not use the admin API, or `None` when it may.
    fn rejection(&self, stream: &UnixStream) -> Option<AdminRefusal> {
        let refusal = |source: String, reason, message| {
            Some(AdminRefusal {
                source,
                reason,
                message,
            })
        };
        let peer = match peer::peer_of(stream) {
            Ok(peer) => peer,
            Err(err) => {
                return refusal(
                    "unknown".to_string(),
                    "no_peer_credentials",
                    format!("cannot read peer credentials: {err}"),
                )
            }
        };
        let uid_source = format!("uid {}", peer.uid);
        if peer.uid != self.agent_uid {
            return refusal(
                uid_source,
                "other_uid",
                format!(
                    "pid {} runs as uid {}, not the agent's uid {}",
                    peer.pid, peer.uid, self.agent_uid
                ),
            );
        }
        if !self.node_mode {
            return None;
        }
        let caller = match Caller::from_socket(stream, BootTime::now()) {
            Ok(caller) => caller,
            Err(_) if peer::peer_closed(stream) => {
                return refusal(
                    uid_source,
                    "closed_before_identified",
                    format!(
                        "pid {} closed its connection before the agent identified it",
                        peer.pid
                    ),
                )
            }
            Err(err) => {
                return refusal(
                    uid_source,
                    "unidentified",
                    format!("cannot identify pid {}: {err}", peer.pid),
                )
            }
        };
        match caller.pod() {
            Ok(None) => None,
            Ok(Some(pod)) if Some(&pod.pod_uid) == self.own_pod_uid.as_ref() => None,
            Ok(Some(pod)) => refusal(
                pod.pod_uid.clone(),
                "in_pod",
                format!(
                    "pid {} runs in pod UID {}, and only processes outside pods or in the \
                     agent's own pod may use the admin API",
                    peer.pid, pod.pod_uid
                ),
            ),
            Err(err) => refusal(
                uid_source,
                "cgroup_unreadable",
                format!("cannot read the cgroup of pid {}: {err}", peer.pid),
            ),
        }
    }
}

/// Accepts the next connection on the health listener.
async fn accept_tcp(listener: &TcpListener) -> tokio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(err) => {
                tracing::warn!(%err, "gRPC health listener accept failed; retrying");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Accepts the next connection whose peer passes `checks`; closes the others.
async fn accept_authorized(listener: &UnixListener, checks: &PeerCheck) -> UnixStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match checks.rejection(&stream) {
                None => return stream,
                Some(refusal) => {
                    let verdict =
                        checks
                            .refusals
                            .refuse(&refusal.source, refusal.reason, Instant::now());
                    if let Verdict::Log { unlogged } = verdict {
                        tracing::warn!(
                            reason = %refusal.message,
                            code = refusal.reason,
                            unlogged,
                            "rejected an admin API connection (later rejections from the same \
                             source are counted in envproxy_refused_connections_total and \
                             logged as a summary)"
                        );
                    }
                }
            },
            Err(err) => {
                tracing::warn!(%err, "admin API accept failed; retrying");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_socket_defaults_by_mode() {
        let agent = Path::new("/run/envproxy/agent.sock");
        let settings = AdminSettings::default();
        assert_eq!(
            settings.socket_path(agent, true),
            Some(PathBuf::from("/run/envproxy/admin/admin.sock"))
        );
        assert_eq!(settings.socket_path(agent, false), None);
    }

    #[test]
    fn admin_socket_explicit_settings() {
        let agent = Path::new("/run/user/1000/envproxy/agent.sock");
        let with_socket = AdminSettings {
            enabled: None,
            socket: Some(PathBuf::from("/srv/admin.sock")),
            health_listen: None,
        };
        assert_eq!(
            with_socket.socket_path(agent, false),
            Some(PathBuf::from("/srv/admin.sock"))
        );
        let enabled = AdminSettings {
            enabled: Some(true),
            socket: None,
            health_listen: None,
        };
        assert_eq!(
            enabled.socket_path(agent, false),
            Some(PathBuf::from("/run/user/1000/envproxy/admin/admin.sock"))
        );
        let disabled = AdminSettings {
            enabled: Some(false),
            socket: Some(PathBuf::from("/srv/admin.sock")),
            health_listen: None,
        };
        assert_eq!(disabled.socket_path(agent, true), None);
    }
}
