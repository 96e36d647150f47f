//! The admin socket to use, the gRPC connection over it, and the errors of both.

use std::future::Future;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envproxy_admin_proto::v1 as pb;
use envproxy_agent::admin::default_admin_socket;
use envproxy_agent::{admin_socket_path, default_socket_path, Config, DEFAULT_NODE_SOCKET};
use hyper_util::rt::TokioIo;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{geteuid, Uid, User};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;

use super::{EXIT_CALL_FAILED, EXIT_PERMISSION, EXIT_UNREACHABLE, EXIT_USAGE};
use crate::client::{self, ClientError};

/// Maximum wait for the agent's response when checking whether a socket is the agent's own.
const AGENT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Environment variable that names the admin socket when `--socket` and `--config` are absent.
pub const ADMIN_SOCKET_VARIABLE: &str = "ENVPROXY_ADMIN_SOCKET";

/// Why an admin command failed. Each variant maps to one exit status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "no admin socket at {}: no agent is running, or its admin API is off; the agent \
         serves it when its config sets `[admin] enabled = true` (the default in node mode) or \
         `[admin] socket`. Point --socket, --config or {ADMIN_SOCKET_VARIABLE} at an admin \
         socket elsewhere",
        join_paths(tried)
    )]
    NoSocket { tried: Vec<PathBuf> },
    #[error(
        "no agent is listening on {}: connection refused, so the socket file is left from an \
         agent that stopped",
        path.display()
    )]
    Stale { path: PathBuf },
    #[error("{} is not a socket; point --socket at the agent's admin socket", path.display())]
    NotASocket { path: PathBuf },
    #[error(
        "{} is the agent's socket for programs, not its admin socket: it answered the agent's \
         request protocol instead of gRPC. The admin socket is {} unless the agent config sets \
         `[admin] socket`; point --socket there, or pass the agent config with --config",
        path.display(),
        default_admin_socket(path).display()
    )]
    AgentSocket { path: PathBuf },
    #[error(
        "permission denied on the admin socket {}: it belongs to {}, and only that user may \
         connect; run the command as that user{}",
        path.display(),
        describe_user(*owner),
        if *owner == 0 { " (for example with sudo)" } else { "" }
    )]
    PermissionDenied { path: PathBuf, owner: u32 },
    #[error("cannot connect to the admin socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the agent at {} rejected the connection: its admin API admits only the user the agent \
         runs as, {}, and this command runs as {}; run it as {}",
        path.display(),
        describe_user(*agent_uid),
        describe_user(*own_uid),
        user_name(*agent_uid).unwrap_or_else(|| format!("uid {agent_uid}"))
    )]
    Rejected {
        path: PathBuf,
        agent_uid: u32,
        own_uid: u32,
    },
    #[error(
        "the agent at {} rejected the connection: this process runs in pod UID {pod_uid}, and \
         the admin API admits only processes outside pods or in the agent's own pod; run the \
         command on the node or in the agent's pod",
        path.display()
    )]
    RejectedInPod { path: PathBuf, pod_uid: String },
    #[error(
        "the agent at {} closed the connection without answering ({detail}); it may be \
         stopping, and its log says why",
        path.display()
    )]
    Unavailable { path: PathBuf, detail: String },
    #[error(
        "the agent at {} did not answer within {}s; raise --timeout if it is busy",
        path.display(),
        timeout.as_secs()
    )]
    TimedOut { path: PathBuf, timeout: Duration },
    #[error("the agent at {} refused {call}: {message} ({code:?})", path.display())]
    Call {
        path: PathBuf,
        call: &'static str,
        code: Code,
        message: String,
    },
    #[error("the audit stream from {} ended: the agent stopped", path.display())]
    StreamEnded { path: PathBuf },
    // Every ConfigError names the file, so the message does not repeat `path`.
    #[error("--config: {source}")]
    Config {
        path: PathBuf,
        #[source]
        source: envproxy_agent::ConfigError,
    },
    #[error(
        "the agent config {} turns the admin API off; set `[admin] enabled = true` or \
         `[admin] socket` there and restart the agent",
        path.display()
    )]
    AdminOff { path: PathBuf },
    #[error("cannot write to stdout: {source}")]
    Stdout {
        #[source]
        source: io::Error,
    },
}

impl AdminError {
    /// Returns the exit status documented for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            AdminError::Call { .. } | AdminError::Stdout { .. } => EXIT_CALL_FAILED,
            AdminError::Config { .. }
            | AdminError::NotASocket { .. }
            | AdminError::AgentSocket { .. } => EXIT_USAGE,
            AdminError::PermissionDenied { .. }
            | AdminError::Rejected { .. }
            | AdminError::RejectedInPod { .. } => EXIT_PERMISSION,
            AdminError::NoSocket { .. }
            | AdminError::Stale { .. }
            | AdminError::Connect { .. }
            | AdminError::Unavailable { .. }
            | AdminError::TimedOut { .. }
            | AdminError::StreamEnded { .. }
            | AdminError::AdminOff { .. } => EXIT_UNREACHABLE,
        }
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    names.join(" or ")
}

fn user_name(uid: u32) -> Option<String> {
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// Describes a uid as `root (uid 0)`, or `uid 1234` when no user has it.
fn describe_user(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The admin socket that a command uses, with the paths it was chosen from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketChoice {
    pub path: PathBuf,
    /// Every path considered, named when none of them exists.
    pub tried: Vec<PathBuf>,
}

impl SocketChoice {
    /// Chooses the admin socket: `--socket`, else the one of the agent config `--config`,
    /// else [`ADMIN_SOCKET_VARIABLE`], else the local-mode default of this user when it
    /// exists, else the node-mode default.
    pub fn resolve(
        socket: Option<PathBuf>,
        config: Option<PathBuf>,
    ) -> Result<SocketChoice, AdminError> {
        if let Some(path) = socket {
            return Ok(SocketChoice::single(path));
        }
        if let Some(config_path) = config {
            let config = Config::load(&config_path).map_err(|source| AdminError::Config {
                path: config_path.clone(),
                source,
            })?;
            return match admin_socket_path(&config) {
                Some(path) => Ok(SocketChoice::single(path)),
                None => Err(AdminError::AdminOff { path: config_path }),
            };
        }
        if let Some(path) = std::env::var_os(ADMIN_SOCKET_VARIABLE).filter(|path| !path.is_empty())
        {
            return Ok(SocketChoice::single(PathBuf::from(path)));
        }
        Ok(SocketChoice::default_for(
            default_admin_socket(&default_socket_path()),
            default_admin_socket(Path::new(DEFAULT_NODE_SOCKET)),
        ))
    }

    fn single(path: PathBuf) -> SocketChoice {
        SocketChoice {
            tried: vec![path.clone()],
            path,
        }
    }

    /// Picks `local` when anything exists at that path, else `node`.
    fn default_for(local: PathBuf, node: PathBuf) -> SocketChoice {
        let path = if std::fs::symlink_metadata(&local).is_ok() {
            local.clone()
        } else {
            node.clone()
        };
        SocketChoice {
            path,
            tried: vec![local, node],
        }
    }
}

/// A gRPC client on one connection to the admin socket.
pub struct AdminClient {
    client: pb::admin_client::AdminClient<Channel>,
    context: CallContext,
}

/// What the errors of one connection name.
struct CallContext {
    path: PathBuf,
    /// The agent's uid from `SO_PEERCRED`, to explain a rejected connection.
    agent_uid: u32,
    timeout: Duration,
}

impl AdminClient {
    /// Connects to the admin socket of `choice` within `timeout`, which also bounds each call.
    pub async fn connect(
        choice: &SocketChoice,
        timeout: Duration,
    ) -> Result<AdminClient, AdminError> {
        let path = choice.path.clone();
        let stream = client::connect(&path, timeout).map_err(|err| connect_error(choice, err))?;
        let io_error = |source: io::Error| AdminError::Connect {
            path: path.clone(),
            source,
        };
        let agent_uid = getsockopt(&stream, PeerCredentials)
            .map_err(|errno| io_error(errno.into()))?
            .uid();
        stream.set_nonblocking(true).map_err(io_error)?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(io_error)?;
        let context = CallContext {
            path,
            agent_uid,
            timeout,
        };

        // The connector hands out the connection made above, once. The URI is required by the
        // endpoint but never resolved.
        let slot = Arc::new(Mutex::new(Some(stream)));
        let connector = tower::service_fn(move |_: Uri| {
            let stream = slot.lock().unwrap_or_else(|err| err.into_inner()).take();
            async move {
                match stream {
                    Some(stream) => Ok(TokioIo::new(stream)),
                    None => Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the connection to the admin socket closed",
                    )),
                }
            }
        });
        let endpoint = Endpoint::from_static("http://admin.invalid");
        let connecting = endpoint.connect_with_connector(connector);
        let channel = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => return Err(context.timed_out()),
            Ok(Err(err)) => {
                let detail = envproxy_agent::logging::error_chain(&err);
                if context.is_agent_socket().await {
                    return Err(context.agent_socket());
                }
                return Err(context.closed(detail));
            }
            Ok(Ok(channel)) => channel,
        };
        Ok(AdminClient {
            client: pb::admin_client::AdminClient::new(channel),
            context,
        })
    }

    pub async fn status(&mut self) -> Result<pb::StatusResponse, AdminError> {
        let call = self.client.status(pb::StatusRequest {});
        self.context.finish("Status", call).await
    }

    pub async fn workloads(&mut self) -> Result<pb::ListWorkloadsResponse, AdminError> {
        let call = self.client.list_workloads(pb::ListWorkloadsRequest {});
        self.context.finish("ListWorkloads", call).await
    }

    pub async fn cache_entries(&mut self) -> Result<pb::ListCacheEntriesResponse, AdminError> {
        let call = self
            .client
            .list_cache_entries(pb::ListCacheEntriesRequest {});
        self.context.finish("ListCacheEntries", call).await
    }

    pub async fn flush(
        &mut self,
        target: pb::flush_request::Target,
    ) -> Result<pb::FlushResponse, AdminError> {
        let request = pb::FlushRequest {
            target: Some(target),
        };
        let call = self.client.flush(request);
        self.context.finish("Flush", call).await
    }

    pub async fn reload(&mut self) -> Result<pb::ReloadConfigResponse, AdminError> {
        let call = self.client.reload_config(pb::ReloadConfigRequest {});
        self.context.finish("ReloadConfig", call).await
    }

    /// Opens the audit stream. Only opening it is bounded by the timeout.
    pub async fn watch_audit(&mut self) -> Result<AuditStream<'_>, AdminError> {
        let call = self.client.watch_audit(pb::WatchAuditRequest {});
        let stream = self.context.finish("WatchAudit", call).await?;
        Ok(AuditStream {
            stream,
            context: &self.context,
        })
    }
}

/// An open `WatchAudit` stream.
pub struct AuditStream<'a> {
    stream: tonic::Streaming<pb::AuditEvent>,
    context: &'a CallContext,
}

impl AuditStream<'_> {
    /// Waits without bound for the next event. Returns [`AdminError::StreamEnded`] when the
    /// agent ends the stream, which it does when it stops.
    pub async fn next(&mut self) -> Result<pb::AuditEvent, AdminError> {
        match self.stream.message().await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(AdminError::StreamEnded {
                path: self.context.path.clone(),
            }),
            Err(status) => Err(self.context.explain("WatchAudit", status).await),
        }
    }
}

impl CallContext {
    /// Awaits `call` within the timeout and maps its failure to an [`AdminError`].
    async fn finish<T>(
        &self,
        name: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, AdminError> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(self.timed_out()),
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.explain(name, status).await),
        }
    }

    /// Maps a failed call to an [`AdminError`]. A connection that failed at the HTTP/2 or
    /// transport level is first checked for being the agent's own socket, which speaks the
    /// agent's request protocol: the h2 client reports that only as a protocol error.
    async fn explain(&self, name: &'static str, status: tonic::Status) -> AdminError {
        let transport = match status.code() {
            Code::Internal | Code::Unavailable => true,
            Code::Unknown => std::error::Error::source(&status).is_some(),
            _ => false,
        };
        if transport && self.is_agent_socket().await {
            return self.agent_socket();
        }
        self.call_error(name, status)
    }

    /// Returns whether the socket responds to the agent's `Status` request, which only the
    /// agent's socket for programs does.
    async fn is_agent_socket(&self) -> bool {
        let path = self.path.clone();
        let timeout = self.timeout.min(AGENT_PROBE_TIMEOUT);
        let probe = tokio::task::spawn_blocking(move || client::fetch_status(&path, timeout));
        matches!(probe.await, Ok(Ok(_)))
    }

    fn agent_socket(&self) -> AdminError {
        AdminError::AgentSocket {
            path: self.path.clone(),
        }
    }

    fn call_error(&self, name: &'static str, status: tonic::Status) -> AdminError {
        match status.code() {
            Code::DeadlineExceeded => self.timed_out(),
            // tonic reports a connection that broke, or never carried HTTP/2, as Unavailable
            // or as Unknown with the transport error as its source.
            Code::Unavailable => self.closed(status.message().to_string()),
            Code::Unknown if std::error::Error::source(&status).is_some() => {
                self.closed(envproxy_agent::logging::error_chain(&status))
            }
            code => AdminError::Call {
                path: self.path.clone(),
                call: name,
                code,
                message: status.message().to_string(),
            },
        }
    }

    fn timed_out(&self) -> AdminError {
        AdminError::TimedOut {
            path: self.path.clone(),
            timeout: self.timeout,
        }
    }

    /// Explains a connection that the agent closed before answering. The agent closes the
    /// connections it rejects at once, without a reason on the wire, so the reason is derived
    /// from the same rules the agent applies.
    fn closed(&self, detail: String) -> AdminError {
        let own_uid = geteuid().as_raw();
        if self.agent_uid != own_uid {
            return AdminError::Rejected {
                path: self.path.clone(),
                agent_uid: self.agent_uid,
                own_uid,
            };
        }
        if let Some(pod_uid) = own_pod_uid() {
            return AdminError::RejectedInPod {
                path: self.path.clone(),
                pod_uid,
            };
        }
        AdminError::Unavailable {
            path: self.path.clone(),
            detail,
        }
    }
}

/// Returns the UID of the pod this process runs in, if any.
fn own_pod_uid() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let pod = envproxy_agent::node::cgroup::parse_cgroup_file(&text).ok()??;
    Some(pod.pod_uid)
}

/// Maps a failed connection to the admin socket.
fn connect_error(choice: &SocketChoice, err: ClientError) -> AdminError {
    match err {
        ClientError::NoSocket { .. } => AdminError::NoSocket {
            tried: choice.tried.clone(),
        },
        ClientError::Refused { path } => AdminError::Stale { path },
        ClientError::NotASocket { path } => AdminError::NotASocket { path },
        ClientError::ForeignAgent {
            path,
            agent_uid,
            own_uid,
        } => AdminError::Rejected {
            path,
            agent_uid,
            own_uid,
        },
        ClientError::TimedOut { path, timeout } => AdminError::TimedOut { path, timeout },
        ClientError::Connect { path, source }
            if source.kind() == io::ErrorKind::PermissionDenied =>
        {
            let owner = owner_of(&path).unwrap_or(0);
            AdminError::PermissionDenied { path, owner }
        }
        ClientError::Connect { path, source } | ClientError::Io { path, source } => {
            AdminError::Connect { path, source }
        }
        other => AdminError::Connect {
            path: choice.path.clone(),
            source: io::Error::other(other.to_string()),
        },
    }
}

/// Returns the owner of `path`, or of its nearest ancestor this user may inspect: the socket
/// sits in a 0700 directory, so only that directory can be inspected by another user.
fn owner_of(path: &Path) -> Option<u32> {
    path.ancestors()
        .find_map(|ancestor| std::fs::metadata(ancestor).ok())
        .map(|metadata| metadata.uid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefers_existing_local_socket() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("admin/admin.sock");
        let node = dir.path().join("node/admin/admin.sock");
        let choice = SocketChoice::default_for(local.clone(), node.clone());
        assert_eq!(choice.path, node);
        assert_eq!(choice.tried, vec![local.clone(), node.clone()]);

        std::fs::create_dir(dir.path().join("admin")).unwrap();
        std::os::unix::net::UnixListener::bind(&local).unwrap();
        let choice = SocketChoice::default_for(local.clone(), node);
        assert_eq!(choice.path, local);
    }

    #[test]
    fn missing_socket_names_every_path_and_the_key() {
        let error = AdminError::NoSocket {
            tried: vec![
                "/run/user/1000/envproxy/admin/admin.sock".into(),
                "/run/envproxy/admin/admin.sock".into(),
            ],
        };
        let message = error.to_string();
        assert!(
            message.contains(
                "/run/user/1000/envproxy/admin/admin.sock or /run/envproxy/admin/admin.sock"
            ),
            "{message}"
        );
        assert!(message.contains("[admin] enabled = true"), "{message}");
        assert_eq!(error.exit_code(), EXIT_UNREACHABLE);
    }

    #[test]
    fn owner_from_nearest_readable_ancestor() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("admin/admin.sock");
        let own = nix::unistd::getuid().as_raw();
        assert_eq!(owner_of(&missing), Some(own));
    }
}
