//! An agent inside the `envproxy` process, on a background Tokio runtime, for the lifetime of one
//! command.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use envproxy_agent::{Agent, Config};
use envproxy_proto::socket_path::SOCKET_FILE_NAME;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Mode of the temporary socket directory: only this user may enter it.
const PRIVATE_DIRECTORY_MODE: u32 = 0o700;
/// Maximum wait for the agent to close its connections and remove its socket at the end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running embedded agent. [`EmbeddedAgent::stop`] shuts it down and removes its socket and
/// any temporary directory.
pub struct EmbeddedAgent {
    runtime: Runtime,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    socket: PathBuf,
    keys: Option<Vec<String>>,
    /// The private directory that contains the socket, when the agent created one.
    directory: Option<tempfile::TempDir>,
}

impl EmbeddedAgent {
    /// Starts an agent for `config` on a socket in a new private directory (mode 0700) under
    /// `$XDG_RUNTIME_DIR`, or under `/tmp` when that is not set.
    pub fn start_private(config: Config) -> anyhow::Result<EmbeddedAgent> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute() && dir.is_dir())
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let directory = tempfile::Builder::new()
            .prefix("envproxy-run-")
            .permissions(Permissions::from_mode(PRIVATE_DIRECTORY_MODE))
            .tempdir_in(&base)
            .with_context(|| format!("cannot create a private directory in {}", base.display()))?;
        crate::run_startup::note_directory(directory.path());
        let socket = directory.path().join(SOCKET_FILE_NAME);
        let mut agent = EmbeddedAgent::start(config, &socket)?;
        agent.directory = Some(directory);
        Ok(agent)
    }

    /// Starts an agent for `config` listening on `socket`.
    pub fn start(mut config: Config, socket: &Path) -> anyhow::Result<EmbeddedAgent> {
        config.socket = Some(socket.to_path_buf());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("envproxy-agent")
            .enable_all()
            .build()
            .context("cannot start the Tokio runtime for the agent")?;
        let agent = runtime.block_on(Agent::bind(config))?;
        let keys = runtime.block_on(agent.default_key_names());
        let socket = agent.socket_path().to_path_buf();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(agent.serve(async {
            let _ = stopped.await;
        }));
        Ok(EmbeddedAgent {
            runtime,
            stop,
            task,
            socket,
            keys,
            directory: None,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Returns the key names of the default backend as listed at start, or `None` when it
    /// cannot list them (the HTTP API, an unreadable Kubernetes Secret).
    pub fn keys(&self) -> Option<&[String]> {
        self.keys.as_deref()
    }

    /// Shuts the agent down, waiting up to 5 s for it to remove its socket, then removes the
    /// temporary directory.
    pub fn stop(self) {
        let EmbeddedAgent {
            runtime,
            stop,
            task,
            directory,
            ..
        } = self;
        let _ = stop.send(());
        let finished = runtime.block_on(async { tokio::time::timeout(STOP_TIMEOUT, task).await });
        if finished.is_err() {
            tracing::warn!("the embedded agent did not stop within 5 s");
        }
        runtime.shutdown_timeout(STOP_TIMEOUT);
        drop(directory);
    }
}
