//! The admin API's messages as serde structs for JSON and YAML output. Field names follow the
//! `.proto` file; Unix times in milliseconds become RFC 3339 texts in UTC, and empty texts that
//! mean "none" become `null`.

use envproxy_admin_proto::v1 as pb;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Formats Unix milliseconds as RFC 3339 in UTC, such as `2026-05-01T12:00:00.250Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms after the Unix epoch"))
}

fn non_empty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub version: String,
    pub mode: String,
    pub uptime_seconds: u64,
    pub node: Option<String>,
    pub kube_watch_synced: bool,
    pub kube_watch_connected: bool,
    pub serving: bool,
    /// The reason the agent is not serving, or `None` while it serves.
    pub not_serving_reason: Option<String>,
    /// The error of the latest config reload when it failed.
    pub config_reload_error: Option<String>,
    pub pods_watched: u64,
    pub counters: Counters,
    pub secrets_file: Option<SecretsFile>,
    pub http: Option<CachedBackend>,
    pub kubernetes: Option<CachedBackend>,
    pub vault: Vec<VaultSession>,
}

/// The HTTP secrets API or Kubernetes Secrets, with their cache figures.
#[derive(Debug, Serialize)]
pub struct CachedBackend {
    pub address: Option<String>,
    pub credentials: String,
    pub default_secret: Option<String>,
    pub cache_entries: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub stale_served: u64,
    pub last_error: Option<String>,
}

impl From<pb::CachedBackend> for CachedBackend {
    fn from(backend: pb::CachedBackend) -> CachedBackend {
        CachedBackend {
            address: non_empty(backend.address),
            credentials: backend.credentials,
            default_secret: non_empty(backend.default_secret),
            cache_entries: backend.cache_entries,
            cache_hits: backend.cache_hits,
            cache_misses: backend.cache_misses,
            stale_served: backend.stale_served,
            last_error: non_empty(backend.last_error),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub requests: u64,
    pub denials: u64,
    pub errors: u64,
    pub audit_events_dropped: u64,
    pub audit_watchers: u64,
}

#[derive(Debug, Serialize)]
pub struct SecretsFile {
    pub path: String,
    pub keys_loaded: u64,
    pub last_reload_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct VaultSession {
    pub identity: String,
    pub address: String,
    pub logged_in: bool,
    pub token_ttl_seconds: Option<u64>,
    pub token_renewable: bool,
    pub cache_entries: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub stale_served: u64,
    pub live_leases: u64,
    pub last_error: Option<String>,
}

impl From<pb::StatusResponse> for Status {
    fn from(status: pb::StatusResponse) -> Status {
        let counters = status.counters.unwrap_or_default();
        Status {
            version: status.version,
            mode: status.mode,
            uptime_seconds: status.uptime_seconds,
            node: non_empty(status.node),
            kube_watch_synced: status.kube_watch_synced,
            kube_watch_connected: status.kube_watch_connected,
            serving: status.serving,
            not_serving_reason: non_empty(status.not_serving_reason),
            config_reload_error: non_empty(status.config_reload_error),
            pods_watched: status.pods_watched,
            counters: Counters {
                requests: counters.requests,
                denials: counters.denials,
                errors: counters.errors,
                audit_events_dropped: counters.audit_events_dropped,
                audit_watchers: counters.audit_watchers,
            },
            secrets_file: status.secrets_file.map(|file| SecretsFile {
                path: file.path,
                keys_loaded: file.keys_loaded,
                last_reload_error: non_empty(file.last_reload_error),
            }),
            http: status.http.map(CachedBackend::from),
            kubernetes: status.kubernetes.map(CachedBackend::from),
            vault: status
                .vault
                .into_iter()
                .map(|session| VaultSession {
                    identity: session.identity,
                    address: session.address,
                    logged_in: session.logged_in,
                    token_ttl_seconds: session.token_ttl_seconds,
                    token_renewable: session.token_renewable,
                    cache_entries: session.cache_entries,
                    cache_hits: session.cache_hits,
                    cache_misses: session.cache_misses,
                    stale_served: session.stale_served,
                    live_leases: session.live_leases,
                    last_error: non_empty(session.last_error),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Workload {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub service_account: Option<String>,
    pub vault_role: Option<String>,
    pub last_request: String,
    pub requests: u64,
    pub denials: u64,
    pub pod_present: bool,
}

impl From<pb::Workload> for Workload {
    fn from(workload: pb::Workload) -> Workload {
        Workload {
            namespace: workload.namespace,
            pod: workload.pod,
            pod_uid: workload.pod_uid,
            container: workload.container,
            service_account: non_empty(workload.service_account),
            vault_role: non_empty(workload.vault_role),
            last_request: rfc3339(workload.last_request_unix_ms),
            requests: workload.requests,
            denials: workload.denials,
            pod_present: workload.pod_present,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CacheEntry {
    /// `vault`, `http` or `kubernetes`; `unspecified` from an agent that lists only Vault reads.
    pub backend: &'static str,
    pub identity: String,
    pub path: String,
    pub version: Option<u64>,
    pub age_seconds: u64,
    pub ttl_left_seconds: u64,
    pub lease_end: Option<String>,
    pub hits: u64,
    pub stale: bool,
    pub not_found: bool,
}

impl From<pb::CacheEntry> for CacheEntry {
    fn from(entry: pb::CacheEntry) -> CacheEntry {
        CacheEntry {
            backend: cache_backend_name(entry.backend()),
            identity: entry.identity,
            path: entry.path,
            version: entry.version,
            age_seconds: entry.age_seconds,
            ttl_left_seconds: entry.ttl_left_seconds,
            lease_end: entry.lease_end_unix_ms.map(rfc3339),
            hits: entry.hits,
            stale: entry.stale,
            not_found: entry.not_found,
        }
    }
}

fn cache_backend_name(backend: pb::CacheBackend) -> &'static str {
    match backend {
        pb::CacheBackend::Unspecified => "unspecified",
        pb::CacheBackend::Vault => "vault",
        pb::CacheBackend::Http => "http",
        pb::CacheBackend::Kubernetes => "kubernetes",
    }
}

#[derive(Debug, Serialize)]
pub struct Flush {
    pub entries_flushed: u64,
    pub flushed: Vec<FlushedEntry>,
}

#[derive(Debug, Serialize)]
pub struct FlushedEntry {
    pub identity: String,
    pub path: String,
    pub version: Option<u64>,
}

impl From<pb::FlushResponse> for Flush {
    fn from(response: pb::FlushResponse) -> Flush {
        Flush {
            entries_flushed: response.entries_flushed,
            flushed: response
                .flushed
                .into_iter()
                .map(|entry| FlushedEntry {
                    identity: entry.identity,
                    path: entry.path,
                    version: entry.version,
                })
                .collect(),
        }
    }
}

/// One audit event. It has the variable name and the reference, never a value.
#[derive(Debug, Serialize)]
pub struct AuditEvent {
    pub time: String,
    pub pid: i32,
    pub pod: Option<String>,
    pub container: Option<String>,
    pub variable: String,
    pub reference: Option<String>,
    pub decision: String,
    pub cache: Option<String>,
    pub latency_us: u64,
    pub reason: Option<String>,
    pub dropped_before: u64,
}

impl From<pb::AuditEvent> for AuditEvent {
    fn from(event: pb::AuditEvent) -> AuditEvent {
        AuditEvent {
            time: rfc3339(event.time_unix_ms),
            pid: event.pid,
            pod: non_empty(event.pod),
            container: non_empty(event.container),
            variable: event.variable,
            reference: non_empty(event.reference),
            decision: event.decision,
            cache: non_empty(event.cache),
            latency_us: event.latency_us,
            reason: non_empty(event.reason),
            dropped_before: event.dropped_before,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Reload {
    pub applied: Vec<String>,
    pub restart_required: Vec<String>,
    pub warnings: Vec<String>,
}

impl From<pb::ReloadConfigResponse> for Reload {
    fn from(response: pb::ReloadConfigResponse) -> Reload {
        Reload {
            applied: response.applied,
            restart_required: response.restart_required,
            warnings: response.warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_777_636_800_250), "2026-05-01T12:00:00.25Z");
    }
}
