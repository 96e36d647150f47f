//! Settings of node mode: the `[node]` table of the config file.
//!
//! | key | default | meaning |
//! | --- | --- | --- |
//! | `name` | `NODE_NAME` | this node's name, as in the pods' `spec.nodeName` |
//! | `kubeconfig` | in-cluster config, else `KUBECONFIG` or `~/.kube/config` | kube API access |
//! | `pod_wait_ms` | `1000` | how long a request waits for a pod the watch has not delivered |
//! | `token_path` | `/var/run/secrets/envproxy.dev/serviceaccount/token` | projected token in each container |
//! | `kube_token_path` | `/var/run/secrets/kubernetes.io/serviceaccount/token` | the API server token in each container, for `k8s:` references |
//! | `kube_cache_ttl` | `1m` | the agent's cache lifetime of a Secret read for `k8s:` references |
//! | `token_audience` | `vault` | audience the projected token must carry |
//! | `token_source` | `projected` | `projected`, or `token-request` to mint pod tokens through the kube API |
//! | `vault_addr_allowlist` | empty | Vault addresses a pod may choose with `envproxy.dev/vault-addr` |
//! | `max_connections_per_pod` | `256` | connections one pod may hold open at once |

use std::path::PathBuf;
use std::time::Duration;

/// Environment variable that names the node, set from the downward API in the DaemonSet.
pub const NODE_NAME_VARIABLE: &str = "NODE_NAME";
/// Wait for a pod that the watch has not delivered yet, when `pod_wait_ms` is not set. It is
/// shorter than the library's default 2 s wait for the agent, so a late pod ends as a clear
/// denial rather than as a silent agent.
pub const DEFAULT_POD_WAIT: Duration = Duration::from_millis(1000);
/// Path of the projected service account token inside each selected container, where the
/// webhook mounts it.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/envproxy.dev/serviceaccount/token";
/// Path of the service account token the kubelet mounts in each container for the API server,
/// unless the pod sets `automountServiceAccountToken: false`.
pub const DEFAULT_KUBE_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Connections one pod may hold open at once when `max_connections_per_pod` is not set. It
/// keeps one pod from taking every connection of `[agent] max_connections`.
pub const DEFAULT_MAX_CONNECTIONS_PER_POD: usize = 256;
/// Longest `pod_wait_ms` accepted: a request must not wait longer than a client would.
pub const MAX_POD_WAIT: Duration = Duration::from_secs(60);

/// Audience of the projected token when `token_audience` is not set.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "vault";

/// Source of the service account token a pod logs in to Vault with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The projected token in the calling container, at `token_path`: the agent needs no
    /// power over service accounts.
    Projected,
    /// A token the agent requests for the attested pod through the TokenRequest API
    /// (`serviceaccounts/token` create). For pods without the projected token, at the price
    /// of a cluster-wide power: the agent can then mint a token of any service account.
    TokenRequest,
}

/// Lifetime the agent requests for a pod's token from the TokenRequest API, the shortest the
/// API server accepts.
pub const TOKEN_REQUEST_LIFETIME_SECS: i64 = 600;

/// Settings of an agent in node mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// This node's name. Only pods whose `spec.nodeName` equals it are served.
    pub node_name: String,
    /// A kubeconfig file. `None` infers the config: in-cluster, else `KUBECONFIG` or
    /// `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Maximum time a request waits for its pod to appear in the watch.
    pub pod_wait: Duration,
    /// Absolute path of the projected token inside each container.
    pub token_path: PathBuf,
    /// Audience the projected token must carry, as the Vault role expects.
    pub token_audience: String,
    /// Absolute path inside each container of the token that `k8s:` references are read with.
    pub kube_token_path: PathBuf,
    /// Cache lifetime of a Secret read for `k8s:` references, per service account.
    pub kube_cache_ttl: Duration,
    /// Vault addresses that the `envproxy.dev/vault-addr` annotation may select.
    pub vault_addr_allowlist: Vec<String>,
    /// Source of pod tokens.
    pub token_source: TokenSource,
    /// Connections one pod may hold open at once.
    pub max_connections_per_pod: usize,
}

impl NodeSettings {
    /// Returns the defaults, with the node name from `NODE_NAME` when it is set.
    pub fn from_environment() -> NodeSettings {
        NodeSettings {
            node_name: std::env::var(NODE_NAME_VARIABLE).unwrap_or_default(),
            kubeconfig: None,
            pod_wait: DEFAULT_POD_WAIT,
            token_path: PathBuf::from(DEFAULT_TOKEN_PATH),
            token_audience: DEFAULT_TOKEN_AUDIENCE.to_string(),
            kube_token_path: PathBuf::from(DEFAULT_KUBE_TOKEN_PATH),
            kube_cache_ttl: crate::kube_secrets::settings::DEFAULT_CACHE_TTL,
            vault_addr_allowlist: Vec::new(),
            token_source: TokenSource::Projected,
            max_connections_per_pod: DEFAULT_MAX_CONNECTIONS_PER_POD,
        }
    }
}
