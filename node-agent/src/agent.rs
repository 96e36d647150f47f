//! A local agent's life: bind the socket, serve until shutdown, clean up.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envproxy_proto::socket_path::local_socket_path;

use crate::backend::FileBackend;
use crate::config::Config;
use crate::connection::Context;
use crate::listener::{self, ListenerError, SocketFile};
use crate::secrets::SecretsError;
use crate::server;
use crate::status::StatusReporter;

/// An agent that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no secrets file is configured: set `path` in the [backend] section of the config file \
         or pass --secrets FILE"
    )]
    NoSecretsFile,
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
}

/// Entry point of the agent library.
pub struct Agent;

impl Agent {
    /// Loads the secrets file and listens on the configured socket.
    ///
    /// The socket accepts connections from here on, but requests wait until
    /// [`BoundAgent::serve`] runs. Must be called from within a Tokio runtime.
    pub async fn bind(config: Config) -> Result<BoundAgent, AgentError> {
        let secrets_file = config
            .secrets_file
            .clone()
            .ok_or(AgentError::NoSecretsFile)?;
        let socket_path = config.socket.clone().unwrap_or_else(default_socket_path);

        let backend = FileBackend::open(&secrets_file)?;
        let agent_uid = nix::unistd::geteuid().as_raw();
        let (listener, socket) = listener::bind(&socket_path, agent_uid)?;

        tracing::info!(
            socket = %socket_path.display(),
            secrets = %secrets_file.display(),
            keys = backend.key_names().len(),
            max_connections = config.max_connections,
            "agent listening"
        );
        Ok(BoundAgent {
            listener,
            socket,
            backend,
            agent_uid,
            config,
        })
    }
}

/// An agent whose socket is bound, ready to serve.
pub struct BoundAgent {
    listener: tokio::net::UnixListener,
    socket: SocketFile,
    backend: FileBackend,
    agent_uid: u32,
    config: Config,
}

impl BoundAgent {
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Returns the key names of the secrets file, sorted.
    pub fn key_names(&self) -> Vec<String> {
        self.backend.key_names()
    }

    /// Serves requests and reloads the secrets file on change until `shutdown` completes, then
    /// closes every connection and removes the socket file.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let BoundAgent {
            listener,
            socket,
            backend,
            agent_uid,
            config,
        } = self;
        let reloader = backend.spawn_reloader(config.reload_poll_interval);
        let context = Arc::new(Context {
            status: StatusReporter::new(socket.path().to_path_buf(), backend.clone()),
            backend,
            agent_uid,
            idle_timeout: config.idle_timeout,
        });

        server::accept_loop(listener, context, config.max_connections, shutdown).await;

        reloader.abort();
        let socket_path = socket.path().display().to_string();
        drop(socket);
        tracing::info!(socket = %socket_path, "agent stopped");
    }
}

/// Returns the per-user default socket path: under `$XDG_RUNTIME_DIR` when it is set, else
/// under `/tmp`.
pub fn default_socket_path() -> PathBuf {
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    local_socket_path(runtime_dir.as_deref(), nix::unistd::getuid().as_raw())
}
