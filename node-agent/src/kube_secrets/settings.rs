//! Settings of the Kubernetes Secret backend, read from `[backend]` with
//! `type = "kubernetes"`.

use std::path::PathBuf;
use std::time::Duration;

/// Cache lifetime of a Secret's data when `cache_ttl` is not set. The watched Secret of the
/// default backend is refreshed by its watch before that.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long past its cache lifetime a Secret may be served while the API server is
/// unavailable, when `max_stale` is not set.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(3600);
/// Bound of one read when `timeout_ms` is not set. It is shorter than the library's default
/// 2 s wait for the agent (`ENVPROXY_TIMEOUT_MS`), so a program gets the API server's timeout
/// error rather than a silent agent.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Maximum number of cached Secrets when `max_entries` is not set.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;

/// Settings of the Kubernetes Secret backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// Namespace of `secret_name`; `None` takes the kubeconfig context's namespace.
    pub namespace: Option<String>,
    /// The Secret that serves `envproxy:KEY` and bare names, watched while the agent runs.
    /// `None` when the settings only serve `k8s:` references.
    pub secret_name: Option<String>,
    /// A kubeconfig file; `None` infers the config: `KUBECONFIG` or `~/.kube/config`, else
    /// in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// Bound of one read.
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub max_stale: Duration,
    pub max_entries: u64,
}

impl Default for KubeSettings {
    fn default() -> KubeSettings {
        KubeSettings {
            namespace: None,
            secret_name: None,
            kubeconfig: None,
            timeout: DEFAULT_TIMEOUT,
            cache_ttl: DEFAULT_CACHE_TTL,
            max_stale: DEFAULT_MAX_STALE,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}
