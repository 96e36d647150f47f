//! A local agent's life: bind the socket, serve until shutdown, clean up.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envproxy_proto::socket_path::local_socket_path;

use crate::backend::FileBackend;
use crate::config::Config;
use crate::connection::Context;
use crate::handler::Backends;
use crate::listener::{self, ListenerError, SocketFile};
use crate::secrets::SecretsError;
use crate::server;
use crate::status::StatusReporter;
use crate::vault::{VaultBackend, VaultError};

/// An agent that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no secrets file is configured: set `path` in the [backend] section of the config file \
         or pass --secrets FILE"
    )]
    NoSecretsFile,
    #[error(
        "no backend is configured: pass --secrets FILE, set `path` in the [backend] section of \
         the config file, or configure Vault ([vault] in the config file, or VAULT_ADDR)"
    )]
    NoBackend,
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("cannot set up the Vault backend: {0}")]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
}

/// Entry point of the agent library.
pub struct Agent;

impl Agent {
    /// Loads the secrets file, sets up Vault, and listens on the configured socket.
    ///
    /// The socket accepts connections from here on, but requests wait until
    /// [`BoundAgent::serve`] runs. Must be called from within a Tokio runtime.
    pub async fn bind(config: Config) -> Result<BoundAgent, AgentError> {
        if config.secrets_file.is_none() && config.vault.is_none() {
            return Err(AgentError::NoBackend);
        }
        let socket_path = config.socket.clone().unwrap_or_else(default_socket_path);

        let file = match &config.secrets_file {
            Some(path) => Some(FileBackend::open(path)?),
            None => None,
        };
        let vault = match &config.vault {
            Some(settings) => Some(VaultBackend::start(settings.clone()).await?),
            None => None,
        };
        let agent_uid = nix::unistd::geteuid().as_raw();
        let (listener, socket) = listener::bind(&socket_path, agent_uid)?;

        tracing::info!(
            socket = %socket_path.display(),
            secrets = config.secrets_file.as_ref().map(|path| path.display().to_string()),
            keys = file.as_ref().map_or(0, |file| file.key_names().len()),
            vault = config.vault.as_ref().map(|vault| vault.address.as_str()),
            max_connections = config.max_connections,
            "agent listening"
        );
        Ok(BoundAgent {
            listener,
            socket,
            backends: Backends { file, vault },
            agent_uid,
            config,
        })
    }
}

/// An agent whose socket is bound, ready to serve.
pub struct BoundAgent {
    listener: tokio::net::UnixListener,
    socket: SocketFile,
    backends: Backends,
    agent_uid: u32,
    config: Config,
}

impl BoundAgent {
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Returns the key names of the secrets file, sorted; empty without a secrets file.
    pub fn key_names(&self) -> Vec<String> {
        self.backends
            .file
            .as_ref()
            .map(FileBackend::key_names)
            .unwrap_or_default()
    }

    /// Returns the Vault backend, when configured.
    pub fn vault(&self) -> Option<&VaultBackend> {
        self.backends.vault.as_ref()
    }

    /// Serves requests and reloads the secrets file on change until `shutdown` completes, then
    /// closes every connection, stops Vault renewals (revoking leases when configured) and
    /// removes the socket file.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let BoundAgent {
            listener,
            socket,
            backends,
            agent_uid,
            config,
        } = self;
        let reloader = backends
            .file
            .as_ref()
            .map(|file| file.spawn_reloader(config.reload_poll_interval));
        let vault = backends.vault.clone();
        let context = Arc::new(Context {
            status: StatusReporter::new(socket.path().to_path_buf(), backends.clone()),
            backends,
            agent_uid,
            idle_timeout: config.idle_timeout,
        });

        server::accept_loop(listener, context, config.max_connections, shutdown).await;

        if let Some(reloader) = reloader {
            reloader.abort();
        }
        if let Some(vault) = vault {
            vault.shutdown().await;
        }
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
