//! Settings of the admission webhook.
//!
//! The webhook reads the same TOML file format as the agent, so one file can configure both and
//! the paths they share cannot drift apart. It reads its own `[webhook]` table and the keys it
//! shares with the agent in node mode:
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `[webhook] listen` | `0.0.0.0:8443` | HTTPS address the API server sends AdmissionReviews to |
//! | `[webhook] tls_cert` | `/etc/envproxy/webhook/tls.crt` | PEM certificate chain, reloaded when it changes |
//! | `[webhook] tls_key` | `/etc/envproxy/webhook/tls.key` | PEM private key, reloaded when it changes |
//! | `[webhook] library_dir` | `/opt/envproxy` | node directory with `lib/libenvproxy.so` and `hooks/` |
//! | `[webhook] token_expiration_secs` | `3600` | lifetime of the projected token, 600 to 86400 |
//! | `[webhook] max_connections` | `1024` | connections served at once; idle ones are closed to make room |
//! | `[agent] socket` | `/run/envproxy/agent.sock` | the agent socket; its directory is mounted |
//! | `[agent] log_level` | `info` | a `tracing` filter |
//! | `[node] token_path` | `/var/run/secrets/envproxy.dev/serviceaccount/token` | where the token is mounted |
//! | `[node] token_audience` | `vault` | audience of the projected token |
//! | `[node] vault_addr_allowlist` | empty | addresses `envproxy.dev/vault-addr` may name |
//!
//! Other keys of `[agent]` and `[node]`, and the other tables, belong to the agent and are
//! ignored by the webhook.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::DEFAULT_LOG_LEVEL;
use crate::node::settings::{DEFAULT_TOKEN_AUDIENCE, DEFAULT_TOKEN_PATH};
use crate::DEFAULT_NODE_SOCKET;

/// Listen address when `[webhook] listen` is not set. 8443 is the port the Service usually
/// maps 443 to, and needs no privilege to bind.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// Certificate path when `[webhook] tls_cert` is not set: the `tls.crt` key of a
/// `kubernetes.io/tls` Secret mounted at `/etc/envproxy/webhook`, as cert-manager writes it.
pub const DEFAULT_TLS_CERT: &str = "/etc/envproxy/webhook/tls.crt";
/// Private key path when `[webhook] tls_key` is not set.
pub const DEFAULT_TLS_KEY: &str = "/etc/envproxy/webhook/tls.key";
/// Connections served at once when `[webhook] max_connections` is not set.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Node directory of the library and the hooks when `[webhook] library_dir` is not set.
pub const DEFAULT_LIBRARY_DIR: &str = "/opt/envproxy";
/// Path of the glibc build of the library inside the library directory.
pub const LIBRARY_FILE: &str = "lib/libenvproxy.so";
/// Lifetime of the projected token when `[webhook] token_expiration_secs` is not set. The
/// kubelet renews the token when 80 % of it has passed.
pub const DEFAULT_TOKEN_EXPIRATION: Duration = Duration::from_secs(3600);
/// Minimum token lifetime the API server accepts for a projected token.
pub const MIN_TOKEN_EXPIRATION: Duration = Duration::from_secs(600);
/// Maximum token lifetime accepted. Longer tokens would stay valid long after their pod.
pub const MAX_TOKEN_EXPIRATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Settings of one webhook server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// PEM certificate chain file, server certificate first.
    pub tls_cert: PathBuf,
    /// PEM private key file (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: PathBuf,
    /// Agent socket path on the node. Its directory is mounted at the same path in containers.
    pub socket: PathBuf,
    /// Node directory with the library and the hooks, mounted at the same path in containers.
    pub library_dir: PathBuf,
    /// Absolute path of the projected token inside each container, as the agent reads it.
    pub token_path: PathBuf,
    /// Audience of the projected token.
    pub token_audience: String,
    /// Lifetime the projected token is requested with.
    pub token_expiration: Duration,
    /// Vault addresses that the `envproxy.dev/vault-addr` annotation may name.
    pub vault_addr_allowlist: Vec<String>,
    /// Connections served at once. At the limit a new connection closes an idle one.
    pub max_connections: usize,
    /// A `tracing` filter.
    pub log_level: String,
    /// The config file these settings were read from, if any.
    pub source: Option<PathBuf>,
    /// One message per unknown key of `[webhook]`.
    pub warnings: Vec<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("the default listen address is valid"),
            tls_cert: PathBuf::from(DEFAULT_TLS_CERT),
            tls_key: PathBuf::from(DEFAULT_TLS_KEY),
            socket: PathBuf::from(DEFAULT_NODE_SOCKET),
            library_dir: PathBuf::from(DEFAULT_LIBRARY_DIR),
            token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            token_audience: DEFAULT_TOKEN_AUDIENCE.to_string(),
            token_expiration: DEFAULT_TOKEN_EXPIRATION,
            vault_addr_allowlist: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            log_level: DEFAULT_LOG_LEVEL.to_string(),
            source: None,
            warnings: Vec::new(),
        }
    }
}

impl WebhookSettings {
    /// Returns the directory of the agent socket, which is mounted into containers.
    pub fn socket_dir(&self) -> &Path {
        self.socket.parent().unwrap_or(Path::new("/"))
    }

    /// Returns the directory that the projected token volume is mounted at.
    pub fn token_dir(&self) -> &Path {
        self.token_path.parent().unwrap_or(Path::new("/"))
    }

    /// Returns the token's file name inside its volume.
    pub fn token_file_name(&self) -> String {
        self.token_path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| "token".to_string())
    }

    /// Returns the library path that `LD_PRELOAD` names.
    pub fn library_path(&self) -> PathBuf {
        self.library_dir.join(LIBRARY_FILE)
    }
}
