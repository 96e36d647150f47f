//! Agent configuration: the TOML file and its defaults.
//!
//! The original EnvProxy file keeps working unchanged:
//!
//! ```toml
//! [agent]
//! socket = "/tmp/envproxy.sock"
//! log_level = "info"
//! [backend]
//! type = "file"
//! path = "secrets.json"
//! ```
//!
//! Further keys of `[agent]`: `mode` (`"local"`, the default, or `"node"`), `max_connections`
//! and `idle_timeout_secs`. Node mode reads its own keys from a `[node]` table, listed in the
//! [`crate::node::settings`] module. Relative paths are relative to the directory of the config file. Unknown
//! keys do not fail the load, so older and newer files both work: they are returned in
//! [`Config::warnings`] for the caller to log once logging is set up.
//!
//! The admin plane reads `[admin]` (`enabled`, `socket`, `health_listen`) and `[audit]` (`log`,
//! `buffer`); see [`AdminSettings`] and [`AuditSettings`]. `[metrics] listen` turns on the Prometheus metrics
//! listener; see [`MetricsSettings`]. An `[install]` table (`source`, `target`,
//! `sweep_interval_secs`) makes the agent install the library and hooks at start; see
//! [`InstallSettings`].
//!
//! Vault is configured in one of two ways. `[backend] type = "vault"` with the Vault keys in
//! `[backend]` serves only `vault:` references. `[backend] type = "file"` with a `[vault]`
//! table serves `envproxy:` references and bare names from the file and `vault:` references
//! from Vault. The Vault keys are listed in the `vault_table` module; `VAULT_ADDR`,
//! `VAULT_TOKEN` (then `~/.vault-token`), `VAULT_NAMESPACE` and `VAULT_CACERT` are their
//! defaults.
//!
//! `[backend] type = "http"` makes an HTTP secrets API the default backend for `envproxy:`
//! references and bare names; its keys are listed in the `http_table` module. A `[vault]`
//! table may be added beside it for `vault:` references.
//!
//! `[backend] type = "kubernetes"` serves `envproxy:` references and bare names from the keys
//! of one Kubernetes Secret (`namespace`, `secret_name`), read with the user's kubeconfig; its
//! keys are listed in the `kube_table` module. `k8s:` references are served in every local
//! configuration, with these settings or their defaults.

mod http_table;
mod kube_table;
mod vault_table;
mod webhook_table;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::admin::{AdminSettings, AuditSettings, MAX_AUDIT_BUFFER};
use crate::http_backend::HttpSettings;
use crate::install::InstallSettings;
use crate::kube_secrets::KubeSettings;
use crate::metrics::MetricsSettings;
use crate::node::settings::{NodeSettings, TokenSource, MAX_POD_WAIT, NODE_NAME_VARIABLE};
use crate::vault::settings::AuthSettings;
use crate::vault::{VaultEnvironment, VaultSettings};

/// Connections served at once when `max_connections` is not set.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Idle time after which a connection is closed when `idle_timeout_secs` is not set.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Log filter when `log_level` is not set.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Interval between checks of the secrets file for changes.
pub const DEFAULT_RELOAD_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Settings of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Socket path. `None` selects the per-user default.
    pub socket: Option<PathBuf>,
    /// A `tracing` filter: a level such as `info` or a directive such as `envproxy_agent=debug`.
    pub log_level: String,
    /// Maximum number of connections served at once. Further connections are closed at accept.
    pub max_connections: usize,
    /// A connection that sends no complete request within this time is closed.
    pub idle_timeout: Duration,
    /// The secrets file of the file backend, for `envproxy:` references and bare names.
    pub secrets_file: Option<PathBuf>,
    /// The Vault backend, for `vault:` references. The agent needs this, a secrets file or the
    /// HTTP backend.
    pub vault: Option<VaultSettings>,
    /// The HTTP secrets backend, which replaces the secrets file for `envproxy:` references and
    /// bare names.
    pub http: Option<HttpSettings>,
    /// The Kubernetes Secret backend of `[backend] type = "kubernetes"`, which replaces the
    /// secrets file for `envproxy:` references and bare names.
    pub kubernetes: Option<KubeSettings>,
    /// Interval between checks of the secrets file for changes.
    pub reload_poll_interval: Duration,
    /// Node mode and its settings; `None` in local mode.
    pub node: Option<NodeSettings>,
    /// The admin socket: `[admin]`.
    pub admin: AdminSettings,
    /// Audit events: `[audit]`.
    pub audit: AuditSettings,
    /// The Prometheus metrics listener: `[metrics]`.
    pub metrics: MetricsSettings,
    /// Installation of the library and hooks at start: `[install]`; `None` without the table.
    pub install: Option<InstallSettings>,
    /// The config file this was loaded from, read again by the admin API's `ReloadConfig`.
    pub source: Option<PathBuf>,
    /// One message per unknown key found in the config file.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            log_level: DEFAULT_LOG_LEVEL.to_string(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            secrets_file: None,
            vault: None,
            http: None,
            kubernetes: None,
            reload_poll_interval: DEFAULT_RELOAD_POLL_INTERVAL,
            node: None,
            admin: AdminSettings::default(),
            audit: AuditSettings::default(),
            metrics: MetricsSettings::default(),
            install: None,
            source: None,
            warnings: Vec::new(),
        }
    }
}

/// A config file that cannot be used. Each message names the file and, where one applies, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: invalid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: invalid {key}: {reason}", path.display())]
    InvalidValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(
        "{}: {section} has no Vault address: set `address` there or the VAULT_ADDR environment \
         variable",
        path.display()
    )]
    MissingVaultAddress {
        path: PathBuf,
        section: &'static str,
    },
    #[error(
        "{}: {section} sets auth_method = \"kubernetes\" but no `role`: set the Vault role to \
         log in as",
        path.display()
    )]
    MissingKubernetesRole {
        path: PathBuf,
        section: &'static str,
    },
    #[error(
        "{}: both [backend] type = \"vault\" and a [vault] table are set; keep one of them \
         (use [backend] type = \"file\" with [vault] to serve both)",
        path.display()
    )]
    VaultConfiguredTwice { path: PathBuf },
    #[error(
        "{}: [agent] mode = \"node\" needs the node's name: set `name` in [node] or the \
         NODE_NAME environment variable (from the downward API, spec.nodeName)",
        path.display()
    )]
    MissingNodeName { path: PathBuf },
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let (path, text) = read_config_file(path)?;
        let mut config = Config::parse(&text, &path)?;
        config.source = Some(path);
        Ok(config)
    }

    /// Validates config text that was read from `path`, with this process's `VAULT_*`
    /// variables as Vault defaults. Relative paths in it are resolved against the directory
    /// of `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with_environment(text, path, &VaultEnvironment::from_process())
    }

    /// Enables Vault from the environment alone when the config does not mention Vault and
    /// `VAULT_ADDR` is set, as for a developer who has run `vault login`.
    pub fn enable_vault_from_environment(&mut self, environment: &VaultEnvironment) {
        if self.vault.is_none() {
            self.vault = environment.settings();
        }
    }

    /// Like [`Config::parse`] with the given Vault environment.
    pub fn parse_with_environment(
        text: &str,
        path: &Path,
        environment: &VaultEnvironment,
    ) -> Result<Config, ConfigError> {
        let node_name = std::env::var(NODE_NAME_VARIABLE).ok();
        Config::parse_with(text, path, environment, node_name)
    }

    /// Like [`Config::parse_with_environment`] with `node_name` as the value of `NODE_NAME`.
    pub fn parse_with(
        text: &str,
        path: &Path,
        environment: &VaultEnvironment,
        node_name: Option<String>,
    ) -> Result<Config, ConfigError> {
        let table = parse_table(text, path)?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let mut reader = TableReader {
            path,
            base,
            environment,
            warnings: Vec::new(),
        };
        let mut config = Config::default();

        for key in table.keys() {
            if !matches!(
                key.as_str(),
                "agent" | "backend" | "vault" | "node" | "admin" | "audit" | "metrics" | "install"
                    // Read by `envproxy-agent webhook`, which may share this file.
                    | "webhook"
            ) {
                reader.warn_unknown(&format!("top-level key `{key}`"));
            }
        }
        let mut node_mode = false;
        if let Some(agent) = reader.section(&table, "agent", "[agent]")? {
            node_mode = reader.read_agent(agent, &mut config)?;
        }
        if let Some(backend) = reader.section(&table, "backend", "[backend]")? {
            reader.read_backend(backend, &mut config)?;
        }
        if let Some(vault) = reader.section(&table, "vault", "[vault]")? {
            if config.vault.is_some() {
                return Err(ConfigError::VaultConfiguredTwice {
                    path: path.to_path_buf(),
                });
            }
            config.vault = Some(reader.read_vault(vault, "[vault]")?);
        }

        if let Some(admin) = reader.section(&table, "admin", "[admin]")? {
            reader.read_admin(admin, &mut config.admin)?;
        }
        if let Some(audit) = reader.section(&table, "audit", "[audit]")? {
            reader.read_audit(audit, &mut config.audit)?;
        }
        if let Some(metrics) = reader.section(&table, "metrics", "[metrics]")? {
            reader.read_metrics(metrics, &mut config.metrics)?;
        }
        if let Some(install) = reader.section(&table, "install", "[install]")? {
            config.install = Some(reader.read_install(install)?);
        }

        let node_table = reader.section(&table, "node", "[node]")?;
        if node_mode {
            let mut settings = NodeSettings::from_environment();
            settings.node_name = node_name.unwrap_or_default();
            if let Some(node) = node_table {
                reader.read_node(node, &mut settings)?;
            }
            if config.http.is_some() {
                // NOTE: node mode serves envproxy: references from a node-wide secrets file
                // only; the HTTP backend is wired into local mode.
                return Err(reader.invalid(
                    "[backend] type",
                    "\"http\" is served in local mode only; node mode serves envproxy: \
                     references from a secrets file ([backend] path)"
                        .to_string(),
                ));
            }
            if config.kubernetes.is_some() {
                // The agent's own service account gets no permission on Secrets in node mode,
                // so a node-wide Secret backend would have no credentials to read with.
                return Err(reader.invalid(
                    "[backend] type",
                    "\"kubernetes\" is served in local mode only; in node mode each pod reads \
                     Secrets with its own service account through k8s: references"
                        .to_string(),
                ));
            }
            if settings.node_name.is_empty() {
                return Err(ConfigError::MissingNodeName {
                    path: path.to_path_buf(),
                });
            }
            if let Err(reason) = check_node_name(&settings.node_name) {
                return Err(reader.invalid("the node name ([node] name or NODE_NAME)", reason));
            }
            if let Some(vault) = &config.vault {
                if matches!(vault.auth, AuthSettings::Kubernetes { .. }) {
                    reader.warnings.push(format!(
                        "{}: the Vault `auth_method`, `role` and `jwt_path` are ignored in node \
                         mode: each pod logs in with its own service account and role",
                        path.display()
                    ));
                }
            }
            config.node = Some(settings);
        } else if node_table.is_some() {
            reader.warnings.push(format!(
                "{}: [node] is used only with [agent] mode = \"node\" and is ignored",
                path.display()
            ));
        }

        config.warnings = reader.warnings;
        Ok(config)
    }
}

/// Walks the tables of one config file, collecting warnings about unknown keys.
struct TableReader<'a> {
    path: &'a Path,
    base: &'a Path,
    environment: &'a VaultEnvironment,
    warnings: Vec<String>,
}

impl TableReader<'_> {
    /// Reads `[agent]` into `config` and returns whether it selects node mode.
    fn read_agent(&mut self, agent: &Table, config: &mut Config) -> Result<bool, ConfigError> {
        let mut node_mode = false;
        for (key, value) in agent {
            match key.as_str() {
                "socket" => {
                    config.socket = Some(self.path_value(value, "[agent] socket")?);
                }
                "log_level" => {
                    let level = self.string(value, "[agent] log_level")?;
                    if let Err(reason) = crate::logging::parse_filter(level) {
                        return Err(self.invalid("[agent] log_level", reason));
                    }
                    config.log_level = level.to_string();
                }
                "mode" => match self.string(value, "[agent] mode")? {
                    "local" => node_mode = false,
                    "node" => node_mode = true,
                    other => {
                        return Err(self.invalid(
                            "[agent] mode",
                            format!("expected \"local\" or \"node\", found {other:?}"),
                        ))
                    }
                },
                "max_connections" => {
                    let count = self.positive_integer(value, "[agent] max_connections")?;
                    config.max_connections = usize::try_from(count)
                        .unwrap_or(usize::MAX)
                        .min(tokio::sync::Semaphore::MAX_PERMITS);
                }
                "idle_timeout_secs" => {
                    let secs = self.positive_integer(value, "[agent] idle_timeout_secs")?;
                    config.idle_timeout = Duration::from_secs(secs);
                }
                _ => self.warn_unknown(&format!("key `{key}` in [agent]")),
            }
        }
        Ok(node_mode)
    }

    fn read_node(&mut self, node: &Table, settings: &mut NodeSettings) -> Result<(), ConfigError> {
        for (key, value) in node {
            let name = format!("[node] {key}");
            match key.as_str() {
                "name" => {
                    let node_name = self.string(value, &name)?;
                    if let Err(reason) = check_node_name(node_name) {
                        return Err(self.invalid(&name, reason));
                    }
                    settings.node_name = node_name.to_string();
                }
                "kubeconfig" => settings.kubeconfig = Some(self.path_value(value, &name)?),
                "pod_wait_ms" => {
                    let millis = self.positive_integer(value, &name)?;
                    settings.pod_wait = Duration::from_millis(millis);
                    if settings.pod_wait > MAX_POD_WAIT {
                        return Err(self.invalid(
                            &name,
                            format!(
                                "expected at most {} ms, found {millis}",
                                MAX_POD_WAIT.as_millis()
                            ),
                        ));
                    }
                }
                "max_connections_per_pod" => {
                    let count = self.positive_integer(value, &name)?;
                    settings.max_connections_per_pod = usize::try_from(count).unwrap_or(usize::MAX);
                }
                "token_path" | "kube_token_path" => {
                    let text = self.string(value, &name)?;
                    if !text.starts_with('/') {
                        return Err(self.invalid(
                            &name,
                            format!(
                                "expected an absolute path inside the container, found {text:?}"
                            ),
                        ));
                    }
                    if key == "token_path" {
                        settings.token_path = PathBuf::from(text);
                    } else {
                        settings.kube_token_path = PathBuf::from(text);
                    }
                }
                "token_audience" => {
                    let text = self.string(value, &name)?;
                    if text.is_empty() {
                        return Err(self.invalid(&name, "expected an audience".to_string()));
                    }
                    settings.token_audience = text.to_string();
                }
                "token_source" => {
                    settings.token_source = match self.string(value, &name)? {
                        "projected" => TokenSource::Projected,
                        "token-request" => TokenSource::TokenRequest,
                        other => {
                            return Err(self.invalid(
                                &name,
                                format!(
                                    "expected \"projected\" or \"token-request\", found {other:?}"
                                ),
                            ))
                        }
                    };
                }
                "kube_cache_ttl" => settings.kube_cache_ttl = self.duration(value, &name)?,
                "vault_addr_allowlist" => {
                    let Value::Array(items) = value else {
                        return Err(self.invalid(
                            &name,
                            format!(
                                "expected an array of strings, found {}",
                                describe_type(value)
                            ),
                        ));
                    };
                    let mut addresses = Vec::with_capacity(items.len());
                    for item in items {
                        let address = self.string(item, &name)?.trim_end_matches('/');
                        if !(address.starts_with("https://") || address.starts_with("http://")) {
                            return Err(self.invalid(
                                &name,
                                format!(
                                    "expected http:// or https:// addresses, found {address:?}"
                                ),
                            ));
                        }
                        addresses.push(address.to_string());
                    }
                    settings.vault_addr_allowlist = addresses;
                }
                _ => self.warn_unknown(&format!("key `{key}` in [node]")),
            }
        }
        Ok(())
    }

    fn read_admin(
        &mut self,
        admin: &Table,
        settings: &mut AdminSettings,
    ) -> Result<(), ConfigError> {
        for (key, value) in admin {
            let name = format!("[admin] {key}");
            match key.as_str() {
                "enabled" => settings.enabled = Some(self.flag(value, &name)?),
                "socket" => settings.socket = Some(self.path_value(value, &name)?),
                "health_listen" => {
                    let text = self.string(value, &name)?;
                    let address = text.parse().map_err(|_| {
                        self.invalid(
                            &name,
                            format!(
                                "expected an IP address and port such as \"0.0.0.0:9465\", \
                                 found {text:?}"
                            ),
                        )
                    })?;
                    settings.health_listen = Some(address);
                }
                _ => self.warn_unknown(&format!("key `{key}` in [admin]")),
            }
        }
        Ok(())
    }

    fn read_audit(
        &mut self,
        audit: &Table,
        settings: &mut AuditSettings,
    ) -> Result<(), ConfigError> {
        for (key, value) in audit {
            let name = format!("[audit] {key}");
            match key.as_str() {
                "log" => settings.log = self.flag(value, &name)?,
                "buffer" => {
                    let events = self.positive_integer(value, &name)?;
                    if events > MAX_AUDIT_BUFFER as u64 {
                        return Err(self.invalid(
                            &name,
                            format!("expected at most {MAX_AUDIT_BUFFER} events, found {events}"),
                        ));
                    }
                    settings.buffer = events as usize;
                }
                _ => self.warn_unknown(&format!("key `{key}` in [audit]")),
            }
        }
        Ok(())
    }

    fn read_metrics(
        &mut self,
        metrics: &Table,
        settings: &mut MetricsSettings,
    ) -> Result<(), ConfigError> {
        for (key, value) in metrics {
            let name = format!("[metrics] {key}");
            match key.as_str() {
                "listen" => {
                    let text = self.string(value, &name)?;
                    let address = text.parse().map_err(|_| {
                        self.invalid(
                            &name,
                            format!(
                                "expected an IP address and port such as \"127.0.0.1:9464\" or \
                                 \"[::]:9464\", found {text:?}"
                            ),
                        )
                    })?;
                    settings.listen = Some(address);
                }
                _ => self.warn_unknown(&format!("key `{key}` in [metrics]")),
            }
        }
        Ok(())
    }

    fn read_install(&mut self, install: &Table) -> Result<InstallSettings, ConfigError> {
        let mut settings = InstallSettings::default();
        for (key, value) in install {
            let name = format!("[install] {key}");
            match key.as_str() {
                "source" => settings.source = self.path_value(value, &name)?,
                "target" => settings.target = self.path_value(value, &name)?,
                "sweep_interval_secs" => {
                    let secs = self.positive_integer(value, &name)?;
                    settings.sweep_interval = Duration::from_secs(secs);
                }
                _ => self.warn_unknown(&format!("key `{key}` in [install]")),
            }
        }
        if settings.source == settings.target {
            return Err(self.invalid(
                "[install] target",
                format!(
                    "{} is also the source; set target to the hostPath directory that pods mount",
                    settings.target.display()
                ),
            ));
        }
        Ok(settings)
    }

    fn read_backend(&mut self, backend: &Table, config: &mut Config) -> Result<(), ConfigError> {
        // The type decides which other keys are valid, so it is checked first. A missing type
        // means the file backend, as in the original format.
        if let Some(kind) = backend.get("type") {
            match self.string(kind, "[backend] type")? {
                "file" => {}
                "vault" => {
                    config.vault = Some(self.read_vault(backend, "[backend]")?);
                    return Ok(());
                }
                "http" => {
                    config.http = Some(self.read_http(backend)?);
                    return Ok(());
                }
                "kubernetes" => {
                    config.kubernetes = Some(self.read_kubernetes(backend)?);
                    return Ok(());
                }
                _ => {
                    return Err(self.invalid(
                        "[backend] type",
                        "expected \"file\", \"vault\", \"http\" or \"kubernetes\"".to_string(),
                    ))
                }
            }
        }
        for (key, value) in backend {
            match key.as_str() {
                "type" => {}
                "path" => {
                    config.secrets_file = Some(self.path_value(value, "[backend] path")?);
                }
                _ => self.warn_unknown(&format!("key `{key}` in [backend]")),
            }
        }
        Ok(())
    }

    fn section<'t>(
        &self,
        table: &'t Table,
        name: &str,
        key: &str,
    ) -> Result<Option<&'t Table>, ConfigError> {
        match table.get(name) {
            None => Ok(None),
            Some(Value::Table(section)) => Ok(Some(section)),
            Some(other) => Err(self.invalid(
                key,
                format!("expected a table, found {}", describe_type(other)),
            )),
        }
    }

    fn string<'v>(&self, value: &'v Value, key: &str) -> Result<&'v str, ConfigError> {
        match value {
            Value::String(text) => Ok(text),
            other => Err(self.invalid(
                key,
                format!("expected a string, found {}", describe_type(other)),
            )),
        }
    }

    /// Reads a boolean key of the `[admin]` and `[audit]` tables.
    fn flag(&self, value: &Value, key: &str) -> Result<bool, ConfigError> {
        match value {
            Value::Boolean(flag) => Ok(*flag),
            other => Err(self.invalid(
                key,
                format!("expected true or false, found {}", describe_type(other)),
            )),
        }
    }

    fn path_value(&self, value: &Value, key: &str) -> Result<PathBuf, ConfigError> {
        let text = self.string(value, key)?;
        if text.is_empty() {
            return Err(self.invalid(key, "expected a path, found an empty string".to_string()));
        }
        Ok(self.base.join(text))
    }

    fn positive_integer(&self, value: &Value, key: &str) -> Result<u64, ConfigError> {
        match value {
            Value::Integer(n) if *n >= 1 => Ok(*n as u64),
            Value::Integer(n) => {
                Err(self.invalid(key, format!("expected an integer of at least 1, found {n}")))
            }
            other => Err(self.invalid(
                key,
                format!(
                    "expected an integer of at least 1, found {}",
                    describe_type(other)
                ),
            )),
        }
    }

    fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            reason,
        }
    }

    fn warn_unknown(&mut self, what: &str) {
        self.warnings.push(format!(
            "{}: unknown {what} is ignored",
            self.path.display()
        ));
    }
}

/// Checks that `name` is a valid Kubernetes node name (a DNS subdomain: at most 253 lowercase
/// letters, digits, `-` and `.`, starting and ending with a letter or digit), as it goes into
/// the pod watch's field selector.
fn check_node_name(name: &str) -> Result<(), String> {
    let valid_characters = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let valid_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.len() <= 253 && valid_characters && valid_ends {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid node name: expected at most 253 lowercase letters, digits, \
             '-' and '.', starting and ending with a letter or digit"
        ))
    }
}

fn describe_type(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Reads the config file at `path` and returns its absolute path with its text.
pub(crate) fn read_config_file(path: &Path) -> Result<(PathBuf, String), ConfigError> {
    let path = std::path::absolute(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    Ok((path, text))
}

/// Parses config text read from `path` as a TOML table.
pub(crate) fn parse_table(text: &str, path: &Path) -> Result<Table, ConfigError> {
    text.parse().map_err(|err: toml::de::Error| {
        // The Display form of a TOML error quotes the offending source line, so only the
        // message and the position are kept.
        let (line, column) = err
            .span()
            .map(|span| line_and_column(text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Syntax {
            path: path.to_path_buf(),
            line,
            column,
            message: err.message().to_string(),
        }
    })
}

/// Converts a byte offset into `text` to a 1-based line and column (counted in characters).
pub(crate) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_on_node(text, None)
    }

    fn parse_on_node(text: &str, node_name: Option<&str>) -> Result<Config, ConfigError> {
        Config::parse_with(
            text,
            Path::new("/etc/envproxy/config.toml"),
            &VaultEnvironment::default(),
            node_name.map(str::to_string),
        )
    }

    #[test]
    fn original_format_loads() {
        let config = parse(
            "[agent]\nsocket = \"/tmp/envproxy.sock\"\nlog_level = \"info\"\n\
             [backend]\ntype = \"file\"\npath = \"secrets.json\"\n",
        )
        .unwrap();
        assert_eq!(
            config.socket.as_deref(),
            Some(Path::new("/tmp/envproxy.sock"))
        );
        assert_eq!(config.log_level, "info");
        assert_eq!(
            config.secrets_file.as_deref(),
            Some(Path::new("/etc/envproxy/secrets.json"))
        );
        assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(config.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn all_agent_keys_load() {
        let config = parse(
            "[agent]\nmode = \"local\"\nmax_connections = 10\nidle_timeout_secs = 7\n\
             log_level = \"envproxy_agent=debug\"\n",
        )
        .unwrap();
        assert_eq!(config.max_connections, 10);
        assert_eq!(config.idle_timeout, Duration::from_secs(7));
        assert_eq!(config.log_level, "envproxy_agent=debug");
        assert_eq!(config.secrets_file, None);
        assert_eq!(config.socket, None);
    }

    #[test]
    fn empty_file_uses_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn relative_paths_use_config_directory() {
        let config = parse(
            "[agent]\nsocket = \"run/agent.sock\"\n[backend]\npath = \"../secrets/app.env\"\n",
        )
        .unwrap();
        assert_eq!(
            config.socket.as_deref(),
            Some(Path::new("/etc/envproxy/run/agent.sock"))
        );
        assert_eq!(
            config.secrets_file.as_deref(),
            Some(Path::new("/etc/envproxy/../secrets/app.env"))
        );
    }

    #[test]
    fn load_reads_file_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[backend]\npath = \"s.json\"\n").unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.secrets_file, Some(dir.path().join("s.json")));
    }

    #[test]
    fn load_missing_file_names_it() {
        let error = Config::load(Path::new("/nonexistent/envproxy.toml")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/nonexistent/envproxy.toml"), "{message}");
    }

    #[test]
    fn unknown_keys_become_warnings() {
        let config = parse(
            "cache = true\n[agent]\nsocket = \"/s\"\nworkers = 4\n\
             [backend]\ntype = \"file\"\npath = \"/x.json\"\nformat = \"json\"\n",
        )
        .unwrap();
        assert_eq!(config.socket.as_deref(), Some(Path::new("/s")));
        assert_eq!(config.warnings.len(), 3, "{:?}", config.warnings);
        let all = config.warnings.join("\n");
        assert!(all.contains("top-level key `cache`"), "{all}");
        assert!(all.contains("key `workers` in [agent]"), "{all}");
        assert!(all.contains("key `format` in [backend]"), "{all}");
        assert!(all.contains("/etc/envproxy/config.toml"), "{all}");
    }

    #[test]
    fn node_mode_needs_node_name() {
        let error = parse("[agent]\nmode = \"node\"\n").unwrap_err().to_string();
        assert!(error.contains("needs the node's name"), "{error}");
        assert!(error.contains("NODE_NAME"), "{error}");
        assert!(error.contains("/etc/envproxy/config.toml"), "{error}");
    }

    #[test]
    fn node_mode_defaults() {
        let config = parse_on_node("[agent]\nmode = \"node\"\n", Some("worker-1")).unwrap();
        let node = config.node.unwrap();
        assert_eq!(node.node_name, "worker-1");
        assert_eq!(node.kubeconfig, None);
        assert_eq!(node.pod_wait, crate::node::settings::DEFAULT_POD_WAIT);
        assert_eq!(
            node.token_path,
            Path::new(crate::node::settings::DEFAULT_TOKEN_PATH)
        );
        assert_eq!(node.token_audience, "vault");
        assert!(node.vault_addr_allowlist.is_empty());
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn node_table_keys() {
        let config = parse_on_node(
            "[agent]\nmode = \"node\"\n[node]\nname = \"worker-2\"\n\
             kubeconfig = \"kube.yaml\"\npod_wait_ms = 250\n\
             token_path = \"/run/token\"\ntoken_audience = \"vault.example\"\n\
             vault_addr_allowlist = [\"https://vault-b:8200/\"]\n\
             token_source = \"token-request\"\n\
             kube_token_path = \"/run/kube-token\"\nkube_cache_ttl = \"15s\"\n",
            Some("from-environment"),
        )
        .unwrap();
        let node = config.node.unwrap();
        assert_eq!(node.node_name, "worker-2");
        assert_eq!(
            node.kubeconfig.as_deref(),
            Some(Path::new("/etc/envproxy/kube.yaml"))
        );
        assert_eq!(node.pod_wait, Duration::from_millis(250));
        assert_eq!(node.token_path, Path::new("/run/token"));
        assert_eq!(node.token_audience, "vault.example");
        assert_eq!(node.vault_addr_allowlist, ["https://vault-b:8200"]);
        assert_eq!(node.token_source, TokenSource::TokenRequest);
        assert_eq!(node.kube_token_path, Path::new("/run/kube-token"));
        assert_eq!(node.kube_cache_ttl, Duration::from_secs(15));
    }

    #[test]
    fn node_table_invalid_values() {
        let cases = [
            ("token_path = \"run/token\"", "[node] token_path"),
            ("pod_wait_ms = 0", "[node] pod_wait_ms"),
            (
                "vault_addr_allowlist = \"https://v\"",
                "[node] vault_addr_allowlist",
            ),
            ("vault_addr_allowlist = [1]", "[node] vault_addr_allowlist"),
            ("token_audience = \"\"", "[node] token_audience"),
            ("token_source = \"kubelet\"", "[node] token_source"),
            ("pod_wait_ms = 99999999999", "[node] pod_wait_ms"),
            (
                "vault_addr_allowlist = [\"not a url\"]",
                "[node] vault_addr_allowlist",
            ),
            ("name = \"bad name,=x\"", "[node] name"),
            (
                "max_connections_per_pod = 0",
                "[node] max_connections_per_pod",
            ),
        ];
        for (line, key) in cases {
            let text = format!("[agent]\nmode = \"node\"\n[node]\n{line}\n");
            let error = parse_on_node(&text, Some("n")).unwrap_err().to_string();
            assert!(error.contains(key), "{line}: {error}");
        }
    }

    #[test]
    fn node_table_ignored_in_local_mode() {
        let config = parse("[node]\nname = \"worker-1\"\n").unwrap();
        assert_eq!(config.node, None);
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("[node] is used only"));
    }

    #[test]
    fn unknown_mode_lists_allowed() {
        let error = parse("[agent]\nmode = \"cluster\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("[agent] mode"), "{error}");
        assert!(error.contains("\"local\""), "{error}");
    }

    #[test]
    fn admin_and_audit_tables() {
        let config = parse(
            "[admin]\nenabled = true\nsocket = \"run/admin.sock\"\n\
             health_listen = \"0.0.0.0:9465\"\n\
             [audit]\nlog = true\nbuffer = 64\n",
        )
        .unwrap();
        assert_eq!(config.admin.enabled, Some(true));
        assert_eq!(
            config.admin.socket,
            Some(PathBuf::from("/etc/envproxy/run/admin.sock"))
        );
        assert_eq!(
            config.admin.health_listen,
            Some("0.0.0.0:9465".parse().unwrap())
        );
        assert!(config.audit.log);
        assert_eq!(config.audit.buffer, 64);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);

        let defaults = parse("").unwrap();
        assert_eq!(defaults.admin, AdminSettings::default());
        assert_eq!(defaults.audit, AuditSettings::default());
    }

    #[test]
    fn admin_and_audit_invalid_values() {
        let cases = [
            ("[admin]\nenabled = \"yes\"\n", "[admin] enabled"),
            ("[admin]\nsocket = \"\"\n", "[admin] socket"),
            (
                "[admin]\nhealth_listen = \"localhost:1\"\n",
                "[admin] health_listen",
            ),
            ("[audit]\nlog = 1\n", "[audit] log"),
            ("[audit]\nbuffer = 0\n", "[audit] buffer"),
            ("[audit]\nbuffer = 10000000\n", "[audit] buffer"),
        ];
        for (text, key) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn unknown_backend_type_lists_allowed() {
        let error = parse("[backend]\ntype = \"s3\"\n").unwrap_err().to_string();
        assert!(error.contains("[backend] type"), "{error}");
        assert!(
            error.contains("\"file\", \"vault\", \"http\" or \"kubernetes\""),
            "{error}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (
                "[agent]\nmax_connections = 0\n",
                "[agent] max_connections",
                "at least 1",
            ),
            (
                "[agent]\nmax_connections = \"many\"\n",
                "[agent] max_connections",
                "a string",
            ),
            (
                "[agent]\nidle_timeout_secs = -5\n",
                "[agent] idle_timeout_secs",
                "found -5",
            ),
            (
                "[agent]\nidle_timeout_secs = 1.5\n",
                "[agent] idle_timeout_secs",
                "a float",
            ),
            ("[agent]\nsocket = 3\n", "[agent] socket", "an integer"),
            ("[agent]\nsocket = \"\"\n", "[agent] socket", "empty string"),
            (
                "[agent]\nlog_level = \"info,[\"\n",
                "[agent] log_level",
                "trace, debug",
            ),
            (
                "[agent]\nlog_level = \"warning\"\n",
                "[agent] log_level",
                "`warning` is not a log level; use one of trace, debug, info, warn, error",
            ),
            ("[backend]\npath = [\"a\"]\n", "[backend] path", "an array"),
            ("agent = 1\n", "[agent]", "expected a table"),
        ];
        for (text, key, detail) in cases {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text:?}: {error}");
            assert!(error.contains(detail), "{text:?}: {error}");
            assert!(
                error.starts_with("/etc/envproxy/config.toml"),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn metrics_listen_off_by_default_and_parsed() {
        let local = parse("[backend]\npath = \"s.json\"\n").unwrap();
        assert_eq!(local.metrics.listen, None);
        let node = parse_on_node("[agent]\nmode = \"node\"\n", Some("worker-1")).unwrap();
        assert_eq!(node.metrics.listen, None);

        let v4 = parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(v4.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        let v6 = parse("[metrics]\nlisten = \"[::]:9464\"\n").unwrap();
        assert_eq!(v6.metrics.listen, Some("[::]:9464".parse().unwrap()));
        assert!(v6.warnings.is_empty(), "{:?}", v6.warnings);
    }

    #[test]
    fn metrics_listen_invalid_names_key() {
        for (text, detail) in [
            (
                "[metrics]\nlisten = \"localhost:9464\"\n",
                "\"localhost:9464\"",
            ),
            ("[metrics]\nlisten = \"127.0.0.1\"\n", "\"127.0.0.1\""),
            (
                "[metrics]\nlisten = \"127.0.0.1:99999\"\n",
                "\"127.0.0.1:99999\"",
            ),
            ("[metrics]\nlisten = 9464\n", "string"),
        ] {
            let error = parse(text).unwrap_err().to_string();
            assert!(error.contains("[metrics] listen"), "{text:?}: {error}");
            assert!(error.contains(detail), "{text:?}: {error}");
        }
        let unknown = parse("[metrics]\nport = 9464\n").unwrap();
        assert_eq!(unknown.warnings.len(), 1, "{:?}", unknown.warnings);
        assert!(unknown.warnings[0].contains("`port` in [metrics]"));
    }

    #[test]
    fn install_table_defaults_and_keys() {
        assert_eq!(parse("").unwrap().install, None);
        let defaults = parse("[install]\n").unwrap().install.unwrap();
        assert_eq!(defaults, InstallSettings::default());
        let config = parse(
            "[install]\nsource = \"/usr/lib/envproxy\"\ntarget = \"host/envproxy\"\n\
             sweep_interval_secs = 5\n",
        )
        .unwrap();
        let install = config.install.unwrap();
        assert_eq!(install.source, Path::new("/usr/lib/envproxy"));
        assert_eq!(install.target, Path::new("/etc/envproxy/host/envproxy"));
        assert_eq!(install.sweep_interval, Duration::from_secs(5));
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn install_table_invalid_values() {
        let cases = [
            ("sweep_interval_secs = 0", "[install] sweep_interval_secs"),
            ("source = \"\"", "[install] source"),
            ("target = 3", "[install] target"),
            ("source = \"/x\"\ntarget = \"/x\"", "[install] target"),
        ];
        for (line, key) in cases {
            let error = parse(&format!("[install]\n{line}\n"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(key), "{line}: {error}");
        }
    }

    #[test]
    fn syntax_error_has_position_without_source_line() {
        let text = "[agent]\nsocket = \"/tmp/a.sock\"\nlog_level = info-and-more\n";
        let error = parse(text).unwrap_err();
        let ConfigError::Syntax { line, .. } = &error else {
            panic!("expected a syntax error, got {error:?}");
        };
        assert_eq!(*line, 3);
        let message = error.to_string();
        assert!(!message.contains("info-and-more"), "{message}");
    }

    #[test]
    fn line_and_column_counts_from_one() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("é\nx", 1), (1, 1));
        assert_eq!(line_and_column("ab", 99), (1, 3));
    }
}
