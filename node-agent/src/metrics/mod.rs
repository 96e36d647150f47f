//! Prometheus metrics of one agent, served on `[metrics] listen` by the `server` module.
//!
//! Every counter exists whether or not the listener is on, because the admin API's status reads
//! the request counters too. Each increment on the request path is one atomic add on a counter
//! whose labels were resolved when the agent started. The latency histogram takes the short
//! mutex that `prometheus-client` holds while it updates one observation. Label values come
//! from fixed sets (decisions, backends, cache outcomes, operation names and the `&'static str`
//! codes of denials and errors), so the number of series is bounded.
//!
//! | metric | labels |
//! | --- | --- |
//! | `envproxy_requests_total` | `decision` |
//! | `envproxy_request_duration_seconds` | none (histogram) |
//! | `envproxy_cache_requests_total` | `backend` (`vault`, `http`, `kubernetes`), `outcome` (`hit`, `miss`, `stale`) |
//! | `envproxy_denials_total` | `reason` |
//! | `envproxy_open_connections` | none (gauge) |
//! | `envproxy_refused_connections_total` | `socket` (`agent`, `admin`), `reason` |
//! | `envproxy_vault_requests_total` | `operation` |
//! | `envproxy_vault_errors_total` | `operation`, `kind` |
//! | `envproxy_http_backend_requests_total` | none |
//! | `envproxy_http_backend_errors_total` | `kind` |
//! | `envproxy_kube_secret_requests_total` | none |
//! | `envproxy_kube_secret_errors_total` | `kind` |
//! | `envproxy_pod_watch_relists_total` | none |
//! | `envproxy_pod_watch_errors_total` | none |

mod server;

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

pub use server::MetricsError;
pub(crate) use server::MetricsListener;

use crate::admin::audit::{AuditNote, CacheOutcome};
use crate::handler::Decision;

/// The `[metrics]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Address of the HTTP listener that serves `/metrics`; `None` turns it off.
    pub listen: Option<SocketAddr>,
}

/// Upper bounds of the request latency buckets, in seconds: 25 µs to about 3.3 s, doubling.
/// A request served from memory takes tens of microseconds and a Vault read milliseconds.
const LATENCY_BUCKET_START: f64 = 25e-6;
const LATENCY_BUCKET_COUNT: u16 = 18;

/// The backend of a cache that a request was served through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheBackend {
    Vault,
    Http,
    Kubernetes,
}

/// Every cache backend, in the order of the cache counters.
const CACHE_BACKENDS: [CacheBackend; 3] = [
    CacheBackend::Vault,
    CacheBackend::Http,
    CacheBackend::Kubernetes,
];

/// A kind of request the agent sends to Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VaultOperation {
    /// A secret read.
    Read,
    /// A login: Kubernetes auth, or the lookup of a token read from `VAULT_TOKEN` or a file.
    Login,
    TokenRenew,
    LeaseRenew,
    LeaseRevoke,
}

impl CacheBackend {
    /// Returns the backend's label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CacheBackend::Vault => "vault",
            CacheBackend::Http => "http",
            CacheBackend::Kubernetes => "kubernetes",
        }
    }
}

impl VaultOperation {
    /// Returns the operation's label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            VaultOperation::Read => "read",
            VaultOperation::Login => "login",
            VaultOperation::TokenRenew => "token_renew",
            VaultOperation::LeaseRenew => "lease_renew",
            VaultOperation::LeaseRevoke => "lease_revoke",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CacheLabels {
    backend: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    socket: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VaultErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

const DECISIONS: [Decision; 6] = [
    Decision::Found,
    Decision::NotFound,
    Decision::Passthrough,
    Decision::Error,
    Decision::Denied,
    Decision::Status,
];

const CACHE_OUTCOMES: [CacheOutcome; 3] =
    [CacheOutcome::Hit, CacheOutcome::Miss, CacheOutcome::Stale];

const VAULT_OPERATIONS: [VaultOperation; 5] = [
    VaultOperation::Read,
    VaultOperation::Login,
    VaultOperation::TokenRenew,
    VaultOperation::LeaseRenew,
    VaultOperation::LeaseRevoke,
];

/// The metrics of one agent and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// One counter per [`Decision`], in the order of [`DECISIONS`].
    requests: [Counter; DECISIONS.len()],
    request_duration: Histogram,
    /// One counter per backend and outcome, in the order of [`CACHE_BACKENDS`] and
    /// [`CACHE_OUTCOMES`].
    cache: [Counter; CACHE_BACKENDS.len() * CACHE_OUTCOMES.len()],
    denials: Family<ReasonLabels, Counter>,
    open_connections: Gauge,
    refused_connections: Family<RefusalLabels, Counter>,
    /// One counter per [`VaultOperation`], in the order of [`VAULT_OPERATIONS`].
    vault_requests: [Counter; VAULT_OPERATIONS.len()],
    vault_errors: Family<VaultErrorLabels, Counter>,
    http_requests: Counter,
    http_errors: Family<KindLabels, Counter>,
    kube_requests: Counter,
    kube_errors: Family<KindLabels, Counter>,
    pod_watch_relists: Counter,
    pod_watch_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates the metrics, each at zero, and registers them.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("envproxy");

        let requests_family = Family::<DecisionLabels, Counter>::default();
        let requests = DECISIONS.map(|decision| {
            requests_family.get_or_create_owned(&DecisionLabels {
                decision: decision.as_str(),
            })
        });
        registry.register(
            "requests",
            "Requests the agent responded to, by decision",
            requests_family,
        );

        let request_duration =
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                LATENCY_BUCKET_START,
                2.0,
                LATENCY_BUCKET_COUNT,
            ));
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its response",
            Unit::Seconds,
            request_duration.clone(),
        );

        let cache_family = Family::<CacheLabels, Counter>::default();
        let cache = std::array::from_fn(|index| {
            let backend = CACHE_BACKENDS[index / CACHE_OUTCOMES.len()];
            let outcome = CACHE_OUTCOMES[index % CACHE_OUTCOMES.len()];
            cache_family.get_or_create_owned(&CacheLabels {
                backend: backend.as_str(),
                outcome: outcome.as_str(),
            })
        });
        registry.register(
            "cache_requests",
            "Requests served through a backend's cache, by backend and outcome",
            cache_family,
        );

        let denials = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "denials",
            "Requests denied by node mode's policy, by reason",
            denials.clone(),
        );

        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Connections open on the agent socket",
            open_connections.clone(),
        );

        let refused_connections = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refused_connections",
            "Connections refused before their first request, by socket and reason",
            refused_connections.clone(),
        );

        let vault_family = Family::<OperationLabels, Counter>::default();
        let vault_requests = VAULT_OPERATIONS.map(|operation| {
            vault_family.get_or_create_owned(&OperationLabels {
                operation: operation.as_str(),
            })
        });
        registry.register(
            "vault_requests",
            "Requests sent to Vault, by operation",
            vault_family,
        );
        let vault_errors = Family::<VaultErrorLabels, Counter>::default();
        registry.register(
            "vault_errors",
            "Failed Vault requests, by operation and error kind",
            vault_errors.clone(),
        );

        let http_requests = Counter::default();
        registry.register(
            "http_backend_requests",
            "Requests sent to the HTTP secrets API",
            http_requests.clone(),
        );
        let http_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "http_backend_errors",
            "Failed requests to the HTTP secrets API, by error kind",
            http_errors.clone(),
        );

        let kube_requests = Counter::default();
        registry.register(
            "kube_secret_requests",
            "Secret reads sent to the Kubernetes API server",
            kube_requests.clone(),
        );
        let kube_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "kube_secret_errors",
            "Failed Secret reads from the Kubernetes API server, by error kind",
            kube_errors.clone(),
        );

        let pod_watch_relists = Counter::default();
        registry.register(
            "pod_watch_relists",
            "Full lists of the node's pods after the first, when the watch restarted",
            pod_watch_relists.clone(),
        );
        let pod_watch_errors = Counter::default();
        registry.register(
            "pod_watch_errors",
            "Failed list or watch requests of the node's pods",
            pod_watch_errors.clone(),
        );

        Metrics {
            registry,
            requests,
            request_duration,
            cache,
            denials,
            open_connections,
            refused_connections,
            vault_requests,
            vault_errors,
            http_requests,
            http_errors,
            kube_requests,
            kube_errors,
            pod_watch_relists,
            pod_watch_errors,
        }
    }

    /// Encodes every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a `String` cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts one request with its decision, the cache outcome and denial reason noted while
    /// it was handled, and its latency.
    pub(crate) fn observe_request(&self, decision: Decision, note: &AuditNote, latency: Duration) {
        self.requests[decision_index(decision)].inc();
        self.request_duration.observe(latency.as_secs_f64());
        if let Some((backend, outcome)) = note.cache {
            self.cache[cache_index(backend, outcome)].inc();
        }
        if let Some(reason) = note.denial {
            self.denials.get_or_create(&ReasonLabels { reason }).inc();
        }
    }

    /// Returns the number of requests with `decision` so far.
    pub(crate) fn requests(&self, decision: Decision) -> u64 {
        self.requests[decision_index(decision)].get()
    }

    /// Returns the number of requests of any decision so far.
    pub(crate) fn requests_total(&self) -> u64 {
        self.requests.iter().map(Counter::get).sum()
    }

    /// Counts a connection opened on the agent socket until the returned guard is dropped.
    pub(crate) fn open_connection(&self) -> OpenConnection {
        self.open_connections.inc();
        OpenConnection(self.open_connections.clone())
    }

    /// Counts one connection that `socket` refused for `reason`.
    pub(crate) fn refused_connection(&self, socket: &'static str, reason: &'static str) {
        self.refused_connections
            .get_or_create(&RefusalLabels { socket, reason })
            .inc();
    }

    /// Counts one request to Vault.
    pub(crate) fn vault_request(&self, operation: VaultOperation) {
        self.vault_requests[operation as usize].inc();
    }

    /// Counts one failed request to Vault, by the error's kind.
    pub(crate) fn vault_error(&self, operation: VaultOperation, kind: &'static str) {
        self.vault_errors
            .get_or_create(&VaultErrorLabels {
                operation: operation.as_str(),
                kind,
            })
            .inc();
    }

    /// Counts one request to the HTTP secrets API.
    pub(crate) fn http_request(&self) {
        self.http_requests.inc();
    }

    /// Counts one failed request to the HTTP secrets API, by the error's kind.
    pub(crate) fn http_error(&self, kind: &'static str) {
        self.http_errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts one Secret read sent to the Kubernetes API server.
    pub(crate) fn kube_request(&self) {
        self.kube_requests.inc();
    }

    /// Counts one failed Secret read, by the error's kind.
    pub(crate) fn kube_error(&self, kind: &'static str) {
        self.kube_errors.get_or_create(&KindLabels { kind }).inc();
    }

    /// Counts one full list of the node's pods after the first.
    pub(crate) fn pod_watch_relisted(&self) {
        self.pod_watch_relists.inc();
    }

    /// Counts one failed list or watch request of the node's pods.
    pub(crate) fn pod_watch_failed(&self) {
        self.pod_watch_errors.inc();
    }
}

/// A connection counted in `envproxy_open_connections` until it is dropped.
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn decision_index(decision: Decision) -> usize {
    match decision {
        Decision::Found => 0,
        Decision::NotFound => 1,
        Decision::Passthrough => 2,
        Decision::Error => 3,
        Decision::Denied => 4,
        Decision::Status => 5,
    }
}

fn cache_index(backend: CacheBackend, outcome: CacheOutcome) -> usize {
    let backend_offset = match backend {
        CacheBackend::Vault => 0,
        CacheBackend::Http => CACHE_OUTCOMES.len(),
        CacheBackend::Kubernetes => 2 * CACHE_OUTCOMES.len(),
    };
    let outcome_offset = match outcome {
        CacheOutcome::Hit => 0,
        CacheOutcome::Miss => 1,
        CacheOutcome::Stale => 2,
    };
    backend_offset + outcome_offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_tables_match_label_order() {
        for (index, decision) in DECISIONS.iter().enumerate() {
            assert_eq!(decision_index(*decision), index, "{decision}");
        }
        for (index, operation) in VAULT_OPERATIONS.iter().enumerate() {
            assert_eq!(*operation as usize, index, "{operation:?}");
        }
        for (index, outcome) in CACHE_OUTCOMES.iter().enumerate() {
            assert_eq!(cache_index(CacheBackend::Vault, *outcome), index);
            assert_eq!(
                cache_index(CacheBackend::Http, *outcome),
                CACHE_OUTCOMES.len() + index
            );
            assert_eq!(
                cache_index(CacheBackend::Kubernetes, *outcome),
                2 * CACHE_OUTCOMES.len() + index
            );
        }
    }

    #[test]
    fn request_counted_with_cache_and_denial() {
        let metrics = Metrics::new();
        let note = AuditNote {
            cache: Some((CacheBackend::Vault, CacheOutcome::Hit)),
            denial: Some("reference_not_declared"),
            ..AuditNote::default()
        };
        metrics.observe_request(Decision::Denied, &note, Duration::from_micros(40));
        metrics.observe_request(Decision::Found, &AuditNote::default(), Duration::ZERO);

        assert_eq!(metrics.requests(Decision::Denied), 1);
        assert_eq!(metrics.requests(Decision::Found), 1);
        assert_eq!(metrics.requests_total(), 2);
        let text = metrics.encode();
        assert!(
            text.contains("envproxy_requests_total{decision=\"denied\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("envproxy_cache_requests_total{backend=\"vault\",outcome=\"hit\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("envproxy_cache_requests_total{backend=\"http\",outcome=\"miss\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("envproxy_denials_total{reason=\"reference_not_declared\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("envproxy_request_duration_seconds_count 2\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn open_connection_counted_until_dropped() {
        let metrics = Metrics::new();
        let first = metrics.open_connection();
        let second = metrics.open_connection();
        assert_eq!(metrics.open_connections.get(), 2);
        drop(first);
        assert_eq!(metrics.open_connections.get(), 1);
        drop(second);
        assert_eq!(metrics.open_connections.get(), 0);
    }
}
