//! A local agent's life: bind the socket, serve until shutdown, clean up.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envproxy_proto::socket_path::local_socket_path;
use tokio::sync::Notify;

use crate::admin::audit::AuditLog;
use crate::admin::{self, AdminListener, AdminState, NodeView, RunningConfig};
use crate::backend::FileBackend;
use crate::config::Config;
use crate::connection::Context;
use crate::handler::Backends;
use crate::http_backend::{HttpBackend, HttpError};
use crate::install::{self, InstallError, InstallSettings};
use crate::kube_secrets::{KubeSecretError, KubeSecrets};
use crate::listener::{self, Access, ListenerError, SocketFile};
use crate::metrics::{Metrics, MetricsError, MetricsListener};
use crate::node::identities::Identities;
use crate::node::pods::PodWatch;
use crate::node::serve::{CheckedTokens, NodeContext, PodSlots};
use crate::node::settings::NodeSettings;
use crate::refusals::{Refusals, RefusingSocket};
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
    #[error("cannot set up the HTTP secrets backend: {0}")]
    Http(#[from] HttpError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("cannot set up the kube API client for node mode: {0}")]
    Kube(String),
    #[error("cannot set up the Kubernetes Secret backend: {0}")]
    KubeSecrets(Box<KubeSecretError>),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    HealthListen(#[from] admin::HealthListenError),
    #[error(
        "[admin] health_listen is set but the admin API is off: {fix} (the health status is \
         computed by the admin API)"
    )]
    HealthWithoutAdmin { fix: &'static str },
    #[error(
        "[admin] socket is set but `enabled = false` in [admin] turns the admin API off: remove \
         `socket`, or remove `enabled = false` to serve the admin API on that socket"
    )]
    SocketWithoutAdmin,
    #[error(
        "[admin] socket and [agent] socket (or --socket) both name {}: the two must differ, \
         because the admin API listens on its own socket (remove [admin] socket to use \
         admin/admin.sock beside the agent socket)",
        path.display()
    )]
    SameSockets { path: PathBuf },
    #[error("cannot install the library ([install]): {0}")]
    Install(#[from] InstallError),
}

impl From<KubeSecretError> for AgentError {
    fn from(err: KubeSecretError) -> AgentError {
        AgentError::KubeSecrets(Box::new(err))
    }
}

/// Entry point of the agent library.
pub struct Agent;

impl Agent {
    /// Loads the secrets file, sets up Vault, and listens on the configured socket.
    ///
    /// The socket accepts connections from here on, but requests wait until
    /// [`BoundAgent::serve`] runs. Must be called from within a Tokio runtime.
    pub async fn bind(config: Config) -> Result<BoundAgent, AgentError> {
        check_distinct_sockets(&config)?;
        if let Some(settings) = &config.install {
            install_library(settings.clone()).await?;
        }
        if let Some(node) = config.node.clone() {
            return Agent::bind_node(config, node).await;
        }
        if config.secrets_file.is_none()
            && config.vault.is_none()
            && config.http.is_none()
            && config.kubernetes.is_none()
        {
            return Err(AgentError::NoBackend);
        }
        let socket_path = agent_socket_path(&config);
        let metrics = Arc::new(Metrics::new());

        let file = match &config.secrets_file {
            Some(path) => Some(FileBackend::open(path)?),
            None => None,
        };
        let vault = match &config.vault {
            Some(settings) => {
                let auth = crate::vault::auth::from_settings(&settings.auth);
                let metrics = Arc::clone(&metrics);
                Some(VaultBackend::start_observed(settings.clone(), auth, metrics).await?)
            }
            None => None,
        };
        let http = match &config.http {
            Some(settings) => Some(HttpBackend::start_observed(
                settings.clone(),
                Arc::clone(&metrics),
            )?),
            None => None,
        };
        // `k8s:` references are served in every local configuration; the kubeconfig is read at
        // the first one, unless a default Secret is configured and watched from the start.
        let kube_settings = config.kubernetes.clone().unwrap_or_default();
        let kube = KubeSecrets::with_kubeconfig(kube_settings, Arc::clone(&metrics));
        if kube.has_default_secret() {
            kube.start_default_watch().await?;
        }
        let metrics_listener = bind_metrics(&config).await?;
        let agent_uid = nix::unistd::geteuid().as_raw();
        let (listener, socket) = listener::bind(&socket_path, agent_uid)?;
        let admin = bind_admin(&config, agent_uid).await?;

        tracing::info!(
            socket = %socket_path.display(),
            secrets = config.secrets_file.as_ref().map(|path| path.display().to_string()),
            keys = file.as_ref().map_or(0, |file| file.key_names().len()),
            vault = config.vault.as_ref().map(|vault| vault.address.as_str()),
            http = config.http.as_ref().map(|http| http.url.as_str()),
            kubernetes_secret = kube.status().default_secret,
            max_connections = config.max_connections,
            "agent listening"
        );
        Ok(BoundAgent {
            listener,
            socket,
            backends: Backends {
                file,
                vault,
                http,
                kube: Some(kube),
            },
            agent_uid,
            node: None,
            admin,
            metrics,
            metrics_listener,
            config,
            reload_requests: Arc::default(),
        })
    }

    /// Binds an agent in node mode: starts the watch of this node's pods and listens on a
    /// socket that every uid may connect to.
    async fn bind_node(config: Config, node: NodeSettings) -> Result<BoundAgent, AgentError> {
        let socket_path = agent_socket_path(&config);
        let file = match &config.secrets_file {
            Some(path) => Some(FileBackend::open(path)?),
            None => None,
        };
        let kube_config = kube_config(&node).await?;
        let server = kube_config.cluster_url.to_string();
        let client = kube::Client::try_from(kube_config.clone())
            .map_err(|err| AgentError::Kube(err.to_string()))?;
        let metrics = Arc::new(Metrics::new());
        let kube_settings = crate::kube_secrets::KubeSettings {
            cache_ttl: node.kube_cache_ttl,
            ..Default::default()
        };
        let kube_secrets = KubeSecrets::for_pods(kube_config, kube_settings, Arc::clone(&metrics))?;
        let metrics_listener = bind_metrics(&config).await?;
        let pods = PodWatch::start_observed(
            client.clone(),
            &node.node_name,
            server,
            Arc::clone(&metrics),
        );
        let agent_uid = nix::unistd::geteuid().as_raw();
        let (listener, socket) =
            listener::bind_with_access(&socket_path, agent_uid, Access::Shared)?;
        let admin = bind_admin(&config, agent_uid).await?;
        tracing::info!(
            socket = %socket_path.display(),
            node = %node.node_name,
            vault = config.vault.as_ref().map(|vault| vault.address.as_str()),
            secrets = config.secrets_file.as_ref().map(|path| path.display().to_string()),
            "agent listening in node mode"
        );
        warn_unset_node_backends(&config);
        let node_context = NodeContext {
            settings: node,
            kube: client,
            pods,
            vault: config.vault.clone(),
            identities: Identities::with_metrics(Arc::clone(&metrics)),
            file: file.clone(),
            agent_uid,
            slots: PodSlots::default(),
            checked_tokens: CheckedTokens::default(),
            kube_secrets: kube_secrets.clone(),
            checked_kube_tokens: CheckedTokens::default(),
            refusals: Refusals::new(RefusingSocket::Agent, Arc::clone(&metrics)),
            denials: Refusals::for_denied_requests(),
            failures: Refusals::for_failed_requests(),
        };
        Ok(BoundAgent {
            listener,
            socket,
            backends: Backends {
                file,
                vault: None,
                http: None,
                kube: Some(kube_secrets),
            },
            agent_uid,
            node: Some(node_context),
            admin,
            metrics,
            metrics_listener,
            config,
            reload_requests: Arc::default(),
        })
    }
}

/// Warns at start when node mode has no Vault address or no secrets file, because pods then
/// get refusals for those references with no earlier sign in the agent's log. The agent still
/// starts: `k8s:` references need neither.
fn warn_unset_node_backends(config: &Config) {
    match (&config.vault, &config.secrets_file) {
        (None, None) => tracing::warn!(
            "node mode has no Vault address ([vault] address or VAULT_ADDR) and no secrets file \
             ([backend] path): only k8s: references are served; vault: references are refused, \
             and envproxy: references and v1 requests find nothing"
        ),
        (None, Some(_)) => tracing::warn!(
            "node mode has no Vault address ([vault] address or VAULT_ADDR): vault: references \
             are refused; set it to serve them"
        ),
        _ => {}
    }
}

/// Rejects an admin socket that resolves to the agent socket. Binding both would fail with a
/// misleading "already listening" error from the second bind.
fn check_distinct_sockets(config: &Config) -> Result<(), AgentError> {
    let Some(admin) = admin_socket_path(config) else {
        return Ok(());
    };
    let agent = resolve_socket_path(&agent_socket_path(config));
    if resolve_socket_path(&admin) == agent {
        return Err(AgentError::SameSockets { path: agent });
    }
    Ok(())
}

/// Returns `path` made absolute, without `.` and `..` components, and with its directory's
/// symbolic links resolved when that directory exists.
fn resolve_socket_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut normal = PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let (Some(directory), Some(name)) = (normal.parent(), normal.file_name()) else {
        return normal;
    };
    match std::fs::canonicalize(directory) {
        Ok(directory) => directory.join(name),
        Err(_) => normal,
    }
}

/// Binds the admin socket when `[admin]` and the mode turn it on, and the health listener when
/// `[admin] health_listen` is set.
async fn bind_admin(config: &Config, agent_uid: u32) -> Result<Option<AdminListener>, AgentError> {
    let Some(path) = admin_socket_path(config) else {
        let disabled = config.admin.enabled == Some(false);
        if config.admin.health_listen.is_some() {
            let fix = if disabled {
                "remove `enabled = false` from [admin]"
            } else {
                "set `enabled = true` in [admin]"
            };
            return Err(AgentError::HealthWithoutAdmin { fix });
        }
        if disabled && config.admin.socket.is_some() {
            return Err(AgentError::SocketWithoutAdmin);
        }
        return Ok(None);
    };
    let mut admin = AdminListener::bind(&path, agent_uid, config.node.is_some())?;
    tracing::debug!(socket = %admin.path().display(), "admin socket bound");
    if let Some(address) = config.admin.health_listen {
        admin.bind_health(address).await?;
    }
    Ok(Some(admin))
}

/// Installs the library and hooks as `[install]` sets, before the socket accepts requests.
async fn install_library(settings: InstallSettings) -> Result<(), InstallError> {
    let installed = tokio::task::spawn_blocking(move || {
        install::install(&settings).map(|installed| (installed, settings))
    })
    .await
    .expect("bug: the install task panicked")?;
    let (installed, settings) = installed;
    tracing::info!(
        version = %installed.version,
        target = %settings.target.display(),
        switched = installed.switched,
        "installed the library and hooks"
    );
    Ok(())
}

/// Removes old installed versions that no process uses, every `[install] sweep_interval_secs`.
fn spawn_sweeper(settings: InstallSettings) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(settings.sweep_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Foreign entries are reported once, and again only when they change.
        let mut reported_foreign = Vec::new();
        loop {
            interval.tick().await;
            let target = settings.target.clone();
            let result = tokio::task::spawn_blocking(move || {
                install::sweep(&target, Path::new("/proc"), install::RETIRE_GRACE)
            })
            .await;
            match result {
                Ok(Ok(report)) => {
                    if !report.foreign.is_empty() && report.foreign != reported_foreign {
                        tracing::warn!(
                            directory = %settings.target.join("versions").display(),
                            entries = ?report.foreign,
                            "entries that the agent did not install are in the versions \
                             directory; they are left alone, move them elsewhere"
                        );
                    }
                    reported_foreign = report.foreign;
                    for version in &report.removed {
                        tracing::info!(%version, "removed an installed version no process uses");
                    }
                    if report.unreadable_processes > 0 {
                        tracing::warn!(
                            processes = report.unreadable_processes,
                            kept = ?report.in_use,
                            "cannot read the maps or file descriptors of some processes in pods, so old \
                             library versions are kept (the agent needs CAP_SYS_PTRACE and \
                             hostPID)"
                        );
                    } else if !report.in_use.is_empty() {
                        tracing::debug!(kept = ?report.in_use, "old library versions still in use");
                    }
                }
                Ok(Err(err)) => tracing::warn!(%err, "sweep of old library versions failed"),
                Err(err) => tracing::error!(%err, "bug: the sweep task panicked"),
            }
        }
    })
}

/// Binds the metrics listener when `[metrics] listen` is set.
async fn bind_metrics(config: &Config) -> Result<Option<MetricsListener>, AgentError> {
    let Some(address) = config.metrics.listen else {
        return Ok(None);
    };
    let listener = MetricsListener::bind(address).await?;
    tracing::debug!(address = %listener.address(), "metrics listener bound");
    Ok(Some(listener))
}

/// Socket path in node mode when none is configured: the hostPath directory that the DaemonSet
/// shares with the pods.
pub const DEFAULT_NODE_SOCKET: &str = "/run/envproxy/agent.sock";

/// Returns the agent socket that `config` selects: `[agent] socket`, else the default of its
/// mode.
pub fn agent_socket_path(config: &Config) -> PathBuf {
    match (&config.socket, &config.node) {
        (Some(path), _) => path.clone(),
        (None, Some(_)) => PathBuf::from(DEFAULT_NODE_SOCKET),
        (None, None) => default_socket_path(),
    }
}

/// Returns the admin socket of an agent started with `config`, or `None` when its admin API is
/// off.
pub fn admin_socket_path(config: &Config) -> Option<PathBuf> {
    let agent_socket = agent_socket_path(config);
    config
        .admin
        .socket_path(&agent_socket, config.node.is_some())
}

/// Builds the kube client config from the configured kubeconfig, or infers it: in-cluster,
/// else `KUBECONFIG` or `~/.kube/config`.
async fn kube_config(node: &NodeSettings) -> Result<kube::Config, AgentError> {
    let mut config = match &node.kubeconfig {
        Some(path) => {
            let setting = format!("[node] kubeconfig {}", path.display());
            let text = std::fs::read_to_string(path).map_err(|err| {
                AgentError::Kube(format!(
                    "cannot read {setting}: {err}; set it to a readable kubeconfig file, or \
                     remove it to use the in-cluster config"
                ))
            })?;
            let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)
                .map_err(|err| AgentError::Kube(format!("invalid {setting}: {err}")))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|err| AgentError::Kube(format!("unusable {setting}: {err}")))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|err| AgentError::Kube(err.to_string()))?,
    };
    // kube-client 4 retries 429, 503 and 504 responses up to 15 times with delays growing to
    // 1000 s, which hides an API server outage from the pod watch (and from the health status)
    // for minutes. The watcher backs off on its own, and a TokenRequest call fails fast so the
    // caller gets an error instead of waiting.
    config.default_retry = false;
    Ok(config)
}

/// An agent whose socket is bound, ready to serve.
pub struct BoundAgent {
    listener: tokio::net::UnixListener,
    socket: SocketFile,
    backends: Backends,
    agent_uid: u32,
    /// Node mode's shared state; `None` in local mode.
    node: Option<NodeContext>,
    /// The admin socket, when it is on.
    admin: Option<AdminListener>,
    metrics: Arc<Metrics>,
    /// The metrics listener, when `[metrics] listen` is set.
    metrics_listener: Option<MetricsListener>,
    config: Config,
    /// Notified by [`ConfigReloader::request`].
    reload_requests: Arc<Notify>,
}

/// A handle that requests a config reload from a serving agent, as `envproxy admin reload`
/// does, such as on SIGHUP.
#[derive(Debug, Clone)]
pub struct ConfigReloader(Arc<Notify>);

impl ConfigReloader {
    /// Requests a config reload. Requests made before [`BoundAgent::serve`] runs, or during a
    /// reload, are merged into one later reload.
    pub fn request(&self) {
        self.0.notify_one();
    }
}

impl BoundAgent {
    /// Returns a handle that requests config reloads from this agent while it serves.
    pub fn config_reloader(&self) -> ConfigReloader {
        ConfigReloader(Arc::clone(&self.reload_requests))
    }

    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Returns the admin socket path, or `None` when the admin socket is off.
    pub fn admin_socket_path(&self) -> Option<&Path> {
        self.admin.as_ref().map(AdminListener::path)
    }

    /// Returns the address of the `[admin] health_listen` listener, or `None` when it is off.
    /// With port 0 this is the port the system picked.
    pub fn health_address(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(AdminListener::health_address)
    }

    /// Returns the address the metrics listener is bound to, or `None` when it is off. With
    /// port 0 in `[metrics] listen` this is the port the system picked.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(MetricsListener::address)
    }

    /// Returns the key names of the default backend, sorted, or `None` when it cannot list
    /// them: the HTTP API has no listing, and a Kubernetes Secret that cannot be read now is
    /// logged as a warning. Empty without a default backend.
    ///
    /// A Kubernetes Secret that its watch has not delivered yet is read once through the
    /// cache, so this may wait for the API server up to the backend's `timeout_ms`.
    pub async fn default_key_names(&self) -> Option<Vec<String>> {
        if self.backends.http.is_some() {
            return None;
        }
        if let Some(kube) = self
            .backends
            .kube
            .as_ref()
            .filter(|kube| kube.has_default_secret())
        {
            return match kube.default_key_names().await {
                Ok(keys) => Some(keys),
                Err(err) => {
                    tracing::warn!(%err, "cannot list the keys of the default Secret");
                    None
                }
            };
        }
        Some(
            self.backends
                .file
                .as_ref()
                .map(FileBackend::key_names)
                .unwrap_or_default(),
        )
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
            node,
            admin,
            metrics,
            metrics_listener,
            config,
            reload_requests,
        } = self;
        let mode = if node.is_some() { "node" } else { "local" };
        let forget_deleted_pods = node.as_ref().map(|node| {
            let mut deletions = node.pods.deletions();
            let identities = node.identities.clone();
            let checked_tokens = node.checked_tokens.clone();
            let checked_kube_tokens = node.checked_kube_tokens.clone();
            tokio::spawn(async move {
                loop {
                    match deletions.recv().await {
                        Ok(pod) => {
                            tracing::debug!(pod = %format!("{}/{}", pod.namespace, pod.name), "pod deleted");
                            identities.forget_pod(&pod.uid).await;
                            checked_tokens.forget(&pod.uid);
                            checked_kube_tokens.forget(&pod.uid);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "missed pod deletions; their Vault identities stay until agent restart");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            })
        });
        let identities = node.as_ref().map(|node| node.identities.clone());
        let refusal_summaries = node.as_ref().map(|node| {
            [
                Refusals::spawn_summaries(&node.refusals),
                Refusals::spawn_summaries(&node.denials),
                Refusals::spawn_summaries(&node.failures),
            ]
        });
        let reloader = backends
            .file
            .as_ref()
            .map(|file| file.spawn_reloader(config.reload_poll_interval));
        let vault = backends.vault.clone();
        let kube = backends.kube.clone();
        let audit = AuditLog::start(&config.audit, Arc::clone(&metrics));
        let metrics_task = metrics_listener.map(|listener| listener.serve(Arc::clone(&metrics)));
        let sweeper = config.install.clone().map(spawn_sweeper);
        // The admin API and SIGHUP reload through the same state, so both compare the config
        // file with the same running settings.
        let state = Arc::new(admin_state(&config, mode, &backends, node.as_ref(), &audit));
        let reloads = spawn_reloads(Arc::clone(&state), reload_requests);
        let admin_task = match admin {
            Some(admin) => Some(admin::serve(admin, state).await),
            None => None,
        };
        let context = Arc::new(Context {
            status: StatusReporter::new(socket.path().to_path_buf(), backends.clone(), mode),
            backends,
            agent_uid,
            idle_timeout: config.idle_timeout,
            node,
            audit,
            metrics,
        });

        server::accept_loop(listener, context, config.max_connections, shutdown).await;

        if let Some(admin_task) = admin_task {
            admin_task.shutdown().await;
        }
        if let Some(metrics_task) = metrics_task {
            metrics_task.shutdown().await;
        }

        if let Some(reloader) = reloader {
            reloader.abort();
        }
        if let Some(vault) = vault {
            vault.shutdown().await;
        }
        if let Some(kube) = kube {
            kube.stop();
        }
        if let Some(task) = forget_deleted_pods {
            task.abort();
        }
        if let Some(task) = sweeper {
            task.abort();
        }
        reloads.abort();
        for task in refusal_summaries.into_iter().flatten() {
            task.abort();
        }
        if let Some(identities) = identities {
            identities.shutdown().await;
        }
        let socket_path = socket.path().display().to_string();
        drop(socket);
        tracing::info!(socket = %socket_path, "agent stopped");
    }
}

/// Reloads the config each time `requests` is notified, and logs the result.
fn spawn_reloads(state: Arc<AdminState>, requests: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            requests.notified().await;
            // A successful reload and a config file that cannot be read are logged by
            // `reload_config` itself.
            if let Err(status) = admin::reload_config(&state) {
                if status.code() == tonic::Code::FailedPrecondition {
                    tracing::info!("config not reloaded: {}", status.message());
                }
            }
        }
    })
}

/// Builds the state that the admin API reads.
fn admin_state(
    config: &Config,
    mode: &'static str,
    backends: &Backends,
    node: Option<&NodeContext>,
    audit: &Arc<AuditLog>,
) -> AdminState {
    AdminState {
        mode,
        started: std::time::Instant::now(),
        backends: backends.clone(),
        node: node.map(|node| NodeView {
            node_name: node.settings.node_name.clone(),
            kube: node.kube.clone(),
            pods: node.pods.clone(),
            identities: node.identities.clone(),
        }),
        audit: Arc::clone(audit),
        config_source: config.source.clone(),
        running_config: std::sync::Mutex::new(RunningConfig::new(config)),
        config_reload_error: Default::default(),
        health: Default::default(),
        stop: tokio_util::sync::CancellationToken::new(),
    }
}

/// Returns the per-user default socket path: under `$XDG_RUNTIME_DIR` when it is set, else
/// under `/tmp`.
pub fn default_socket_path() -> PathBuf {
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
    local_socket_path(runtime_dir.as_deref(), nix::unistd::getuid().as_raw())
}
