//! `ListCacheEntries`: lists the cached reads of Vault, the HTTP secrets API and Kubernetes
//! Secrets, without their values. Paths and identities are named as `Flush` selects them (see
//! [`super::flush`]).

use std::time::SystemTime;

use envproxy_admin_proto::v1 as pb;

use super::audit::unix_millis;
use super::flush::{http_identity, http_path, kube_identity, kube_path};
use super::service::AdminService;
use crate::value_cache::EntryInfo;

/// Runs one `ListCacheEntries` call. Entries are sorted by identity, path and version.
pub(super) async fn list(service: &AdminService) -> pb::ListCacheEntriesResponse {
    let now = SystemTime::now();
    let mut entries = Vec::new();
    for (identity, backend, _) in service.vault_backends().await {
        for entry in backend.cache_entries() {
            entries.push(pb::CacheEntry {
                identity: identity.clone(),
                path: entry.path,
                version: entry.version,
                age_seconds: entry.age.as_secs(),
                ttl_left_seconds: entry.ttl_left.as_secs(),
                lease_end_unix_ms: entry.lease_left.map(|left| unix_millis(now + left)),
                hits: entry.hits,
                stale: entry.stale,
                backend: pb::CacheBackend::Vault.into(),
                not_found: false,
            });
        }
    }
    let backends = &service.state().backends;
    if let Some(http) = &backends.http {
        let identity = http_identity(http);
        for (key, info) in http.cache_entries() {
            let path = http_path(&key);
            entries.push(value_entry(&identity, path, pb::CacheBackend::Http, &info));
        }
    }
    if let Some(kube) = &backends.kube {
        for secret in kube.cache_entries() {
            let identity = kube_identity(&secret.identity);
            let path = kube_path(&secret.namespace, &secret.name);
            let backend = pb::CacheBackend::Kubernetes;
            entries.push(value_entry(&identity, path, backend, &secret.info));
        }
    }
    entries
        .sort_by(|a, b| (&a.identity, &a.path, a.version).cmp(&(&b.identity, &b.path, b.version)));
    pb::ListCacheEntriesResponse { entries }
}

/// Returns the listed form of an entry of the HTTP or Kubernetes Secret backend, which have
/// no versions and no leases.
fn value_entry(
    identity: &str,
    path: String,
    backend: pb::CacheBackend,
    info: &EntryInfo,
) -> pb::CacheEntry {
    pb::CacheEntry {
        identity: identity.to_string(),
        path,
        version: None,
        age_seconds: info.age.as_secs(),
        ttl_left_seconds: info.ttl_left.as_secs(),
        lease_end_unix_ms: None,
        hits: info.hits,
        stale: info.stale,
        backend: backend.into(),
        not_found: info.not_found,
    }
}
