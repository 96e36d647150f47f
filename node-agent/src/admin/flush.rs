//! `Flush`: drops cached reads of Vault, the HTTP secrets API and Kubernetes Secrets, so the
//! next request for them reads the backend again.
//!
//! A flushed entry's path names the cached read in the form of its reference:
//!
//! - Vault: the Vault path, such as `secret/data/app/config`.
//! - HTTP secrets API: `envproxy:<key>`.
//! - Kubernetes Secret: `k8s:<namespace>/<secret>`, the whole Secret, because the cache keeps
//!   every key of a Secret read together.
//!
//! A path prefix therefore selects one backend's entries by its scheme (`k8s:`, `envproxy:`)
//! and Vault paths by their first segments. The identity of an HTTP entry is
//! [`http_identity`], and that of a Secret read is [`kube_identity`] of the credentials it
//! used, so `--identity` and `--pod` select them too.

use envproxy_admin_proto::v1 as pb;
use tonic::Status;

use super::service::AdminService;
use crate::http_backend::HttpBackend;
use crate::kube_secrets::{CachedSecret, FlushedSecret, KubeSecrets};
use crate::node::pods::PodEntry;
use crate::vault::FlushedRead;

/// Scheme of the flushed paths of the HTTP secrets API.
const HTTP_SCHEME: &str = "envproxy:";
/// Scheme of the flushed paths of Kubernetes Secrets.
const KUBE_SCHEME: &str = "k8s:";
/// Start of the identity of Kubernetes Secret reads.
const KUBE_IDENTITY_PREFIX: &str = "Kubernetes API as ";

/// Returns the identity of the HTTP backend's entries.
pub(crate) fn http_identity(http: &HttpBackend) -> String {
    format!("HTTP API at {}", http.status().url)
}

/// Returns the identity of Secret reads made with `credentials`: `kubeconfig`, or
/// `system:serviceaccount:<namespace>:<name>` of the calling pod.
pub(crate) fn kube_identity(credentials: &str) -> String {
    format!("{KUBE_IDENTITY_PREFIX}{credentials}")
}

/// Returns the path of the HTTP secrets API's entry of `key`.
pub(crate) fn http_path(key: &str) -> String {
    format!("{HTTP_SCHEME}{key}")
}

/// Returns the path of the cached reads of Secret `namespace/name`.
pub(crate) fn kube_path(namespace: &str, name: &str) -> String {
    format!("{KUBE_SCHEME}{namespace}/{name}")
}

/// The entries dropped by one flush.
#[derive(Default)]
struct Flushed(Vec<pb::FlushedEntry>);

impl Flushed {
    fn vault(&mut self, identity: &str, reads: Vec<FlushedRead>) {
        self.0
            .extend(reads.into_iter().map(|read| pb::FlushedEntry {
                identity: identity.to_string(),
                path: read.path,
                version: read.version,
            }));
    }

    fn http(&mut self, identity: &str, keys: Vec<String>) {
        self.0.extend(keys.into_iter().map(|key| pb::FlushedEntry {
            identity: identity.to_string(),
            path: http_path(&key),
            version: None,
        }));
    }

    fn kube(&mut self, secrets: Vec<FlushedSecret>) {
        self.0
            .extend(secrets.into_iter().map(|secret| pb::FlushedEntry {
                identity: kube_identity(&secret.identity),
                path: kube_path(&secret.namespace, &secret.name),
                version: None,
            }));
    }
}

/// Runs one `Flush` call.
pub(super) async fn flush(
    service: &AdminService,
    target: pb::flush_request::Target,
) -> Result<pb::FlushResponse, Status> {
    use pb::flush_request::Target;
    let backends = service.vault_backends().await;
    let http = service.state().backends.http.as_ref();
    let kube = service.state().backends.kube.as_ref();
    let mut flushed = Flushed::default();
    match &target {
        Target::PathPrefix(prefix) => {
            for (identity, backend, _) in &backends {
                flushed.vault(identity, backend.flush(prefix).await);
            }
            if let Some(http) = http {
                let keys = http
                    .flush(|key| http_path(key).starts_with(prefix.as_str()))
                    .await;
                flushed.http(&http_identity(http), keys);
            }
            if let Some(kube) = kube {
                let secrets = kube
                    .flush(|secret| {
                        kube_path(secret.namespace, secret.name).starts_with(prefix.as_str())
                    })
                    .await;
                flushed.kube(secrets);
            }
        }
        Target::Pod(pod) => {
            let entries = service.pod_entries(pod)?;
            let uids: Vec<&str> = entries.iter().map(PodEntry::uid).collect();
            for (identity, backend, pods) in &backends {
                if pods.iter().any(|uid| uids.contains(&uid.as_str())) {
                    flushed.vault(identity, backend.flush("").await);
                }
            }
            if let Some(kube) = kube {
                let accounts: Vec<String> = entries.iter().map(service_account_user).collect();
                let secrets = kube
                    .flush(|secret| accounts.iter().any(|account| account == secret.identity))
                    .await;
                flushed.kube(secrets);
            }
            if flushed.0.is_empty() {
                return Err(Status::not_found(format!(
                    "pod {pod} has no cached reads on this node: it uses no Vault identity and \
                     no cached Kubernetes Secret yet"
                )));
            }
        }
        Target::Identity(identity) => {
            flush_identity(identity, &backends, http, kube, &mut flushed).await?;
        }
    }
    let mut flushed = flushed.0;
    flushed
        .sort_by(|a, b| (&a.identity, &a.path, a.version).cmp(&(&b.identity, &b.path, b.version)));
    tracing::info!(flush_target = ?target, entries = flushed.len(), "flushed cache entries");
    Ok(pb::FlushResponse {
        entries_flushed: flushed.len() as u64,
        flushed,
    })
}

/// Drops every entry of `identity`, whichever backend it belongs to.
async fn flush_identity(
    identity: &str,
    backends: &[(String, crate::vault::VaultBackend, Vec<String>)],
    http: Option<&HttpBackend>,
    kube: Option<&KubeSecrets>,
    flushed: &mut Flushed,
) -> Result<(), Status> {
    if let Some((_, backend, _)) = backends.iter().find(|(name, _, _)| name == identity) {
        flushed.vault(identity, backend.flush("").await);
        return Ok(());
    }
    if let Some(http) = http.filter(|http| http_identity(http) == identity) {
        flushed.http(identity, http.flush(|_| true).await);
        return Ok(());
    }
    if let Some(kube) = kube {
        if let Some(credentials) = identity.strip_prefix(KUBE_IDENTITY_PREFIX) {
            let matches = |secret: &CachedSecret<'_>| secret.identity == credentials;
            let secrets = kube.flush(matches).await;
            if !secrets.is_empty() {
                flushed.kube(secrets);
                return Ok(());
            }
        }
    }
    // Each identity is listed with its count, because a Vault or HTTP identity stays listed
    // after its entries expire or are flushed.
    let mut known = Vec::new();
    for (name, backend, _) in backends {
        backend.sync_cache().await;
        let reads = backend.status().cache_entries;
        known.push(format!("{name} (cached reads: {reads})"));
    }
    if let Some(http) = http {
        http.sync_cache().await;
        let reads = http.status().cache_entries;
        known.push(format!("{} (cached reads: {reads})", http_identity(http)));
    }
    if let Some(kube) = kube {
        known.extend(kube.cached_identities().iter().map(|id| kube_identity(id)));
    }
    let known = if known.is_empty() {
        "none".to_string()
    } else {
        known.join("; ")
    };
    Err(Status::not_found(format!(
        "no identity {identity:?} has cached reads; the agent has: {known}"
    )))
}

/// Returns the Kubernetes user name of a pod's service account.
fn service_account_user(entry: &PodEntry) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        entry.namespace(),
        entry.service_account()
    )
}
