//! Start-up options of the test server.

use serde::Deserialize;

use crate::clock::ClockMode;

/// Vault's default `lease_duration` for KV v1 reads: the 768 hour mount default TTL.
pub const KV1_DEFAULT_LEASE_SECONDS: u64 = 2_764_800;

/// How the server is set up when it starts. Every namespace created later gets the same
/// mounts.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct ServerOptions {
    /// Serve HTTPS with a certificate from a CA generated at start.
    pub tls: bool,
    /// Port on 127.0.0.1; 0 picks a free one. The port stays the same across
    /// stop/start of listening.
    pub port: u16,
    /// Root token id; random when `None`.
    pub root_token: Option<String>,
    pub kv2_mounts: Vec<String>,
    pub kv1_mounts: Vec<String>,
    /// `lease_duration` of KV v1 reads, in seconds, unless the secret has a `ttl` key.
    pub kv1_lease_duration: u64,
    pub database_mounts: Vec<String>,
    /// Mount paths of Kubernetes auth, without the `auth/` prefix.
    pub kubernetes_mounts: Vec<String>,
    /// Namespaces to create at start, such as `team-a` or `team-a/sub`.
    pub namespaces: Vec<String>,
    pub clock: ClockMode,
    /// `version` reported by `sys/health` and `sys/seal-status`.
    pub version: String,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            tls: false,
            port: 0,
            root_token: None,
            kv2_mounts: vec!["secret".to_owned()],
            kv1_mounts: vec!["kv".to_owned()],
            kv1_lease_duration: KV1_DEFAULT_LEASE_SECONDS,
            database_mounts: vec!["database".to_owned()],
            kubernetes_mounts: vec!["kubernetes".to_owned()],
            namespaces: Vec::new(),
            clock: ClockMode::System,
            version: "1.17.0+ent".to_owned(),
        }
    }
}

impl ServerOptions {
    /// Serves HTTPS instead of plain HTTP.
    pub fn with_tls(mut self) -> ServerOptions {
        self.tls = true;
        self
    }

    /// Stops the clock so time moves only by `advance_clock`.
    pub fn with_frozen_clock(mut self) -> ServerOptions {
        self.clock = ClockMode::Frozen;
        self
    }

    pub fn with_namespace(mut self, namespace: &str) -> ServerOptions {
        self.namespaces.push(namespace.to_owned());
        self
    }

    pub fn with_root_token(mut self, token: &str) -> ServerOptions {
        self.root_token = Some(token.to_owned());
        self
    }
}

/// The replication or HA role `sys/health` reports while unsealed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeState {
    #[default]
    Active,
    Standby,
    PerformanceStandby,
    DrSecondary,
    Uninitialized,
}
