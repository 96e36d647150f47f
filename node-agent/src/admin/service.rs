//! The `envproxy.admin.v1.Admin` service.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use envproxy_admin_proto::v1 as pb;
use envproxy_admin_proto::v1::admin_server::Admin;
use futures::{Stream, StreamExt};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::audit::{unix_millis, AuditEvent, RequestCounters};
use super::{cache, flush, reload, AdminState};
use crate::handler::Decision;
use crate::node::annotations;
use crate::node::pods::PodEntry;
use crate::vault::{VaultBackend, VaultStatus};

/// The admin API of one agent.
pub(crate) struct AdminService {
    state: Arc<AdminState>,
}

impl AdminService {
    pub(crate) fn new(state: Arc<AdminState>) -> AdminService {
        AdminService { state }
    }

    pub(super) fn state(&self) -> &AdminState {
        &self.state
    }

    /// Returns every Vault backend with its identity in words and the pods that use it (none
    /// in local mode).
    pub(super) async fn vault_backends(&self) -> Vec<(String, VaultBackend, Vec<String>)> {
        let mut backends = Vec::new();
        if let Some(vault) = &self.state.backends.vault {
            let status = vault.status();
            backends.push((local_identity(&status), vault.clone(), Vec::new()));
        }
        if let Some(node) = &self.state.node {
            for (identity, backend, pods) in node.identities.sessions().await {
                backends.push((identity.describe(), backend, pods));
            }
        }
        backends.sort_by(|a, b| a.0.cmp(&b.0));
        backends
    }
}

/// Describes the single Vault identity of local mode.
fn local_identity(status: &VaultStatus) -> String {
    format!("{} auth at {}", status.auth_method, status.address)
}

/// How long a `WatchAudit` stream gathers events after the first one of a quiet period.
const AUDIT_BATCH_DELAY: Duration = Duration::from_millis(5);

type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::AuditEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let state = &self.state;
        let mut vault = Vec::new();
        for (identity, backend, _) in self.vault_backends().await {
            // moka counts inserts and evictions in batches; applying them first makes the
            // entry count current.
            backend.sync_cache().await;
            vault.push(vault_session(identity, backend.status()));
        }
        let counters = &state.audit.counters;
        let metrics = &state.audit.metrics;
        let secrets_file = state.backends.file.as_ref().map(|file| {
            let status = file.status();
            pb::SecretsFile {
                path: status.path.display().to_string(),
                keys_loaded: status.keys_loaded as u64,
                last_reload_error: status.last_reload_error.unwrap_or_default(),
            }
        });
        let http = match &state.backends.http {
            Some(http) => {
                http.sync_cache().await;
                let status = http.status();
                Some(pb::CachedBackend {
                    address: status.url,
                    credentials: status.auth,
                    default_secret: String::new(),
                    cache_entries: status.cache_entries,
                    cache_hits: status.cache_hits,
                    cache_misses: status.cache_misses,
                    stale_served: status.stale_served,
                    last_error: status.last_error.unwrap_or_default(),
                })
            }
            None => None,
        };
        let kubernetes = match &state.backends.kube {
            Some(kube) => {
                kube.sync_cache().await;
                let status = kube.status();
                Some(pb::CachedBackend {
                    address: status.server.unwrap_or_default(),
                    credentials: status.credentials.to_string(),
                    default_secret: status.default_secret.unwrap_or_default(),
                    cache_entries: status.cache_entries,
                    cache_hits: status.cache_hits,
                    cache_misses: status.cache_misses,
                    stale_served: status.stale_served,
                    // In node mode a failing pod watch explains the failures of Secret reads too.
                    last_error: state
                        .node
                        .as_ref()
                        .and_then(|node| node.pods.last_error())
                        .or(status.last_error)
                        .unwrap_or_default(),
                })
            }
            None => None,
        };
        let node = state.node.as_ref();
        Ok(Response::new(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode: state.mode.to_string(),
            uptime_seconds: state.started.elapsed().as_secs(),
            node: node.map(|node| node.node_name.clone()).unwrap_or_default(),
            kube_watch_synced: node.is_some_and(|node| node.pods.is_synced()),
            kube_watch_connected: node.is_some_and(|node| node.pods.is_connected()),
            serving: state.health.is_serving(),
            not_serving_reason: state.health.not_serving_reason().unwrap_or_default(),
            config_reload_error: state
                .config_reload_error
                .lock()
                .unwrap_or_else(|err| err.into_inner())
                .clone()
                .unwrap_or_default(),
            vault,
            counters: Some(pb::Counters {
                requests: metrics.requests_total(),
                denials: metrics.requests(Decision::Denied),
                errors: metrics.requests(Decision::Error),
                audit_events_dropped: counters.dropped.load(Ordering::Relaxed),
                audit_watchers: counters.watchers.load(Ordering::Relaxed),
            }),
            pods_watched: node.map_or(0, |node| node.pods.pods().len() as u64),
            secrets_file,
            http,
            kubernetes,
        }))
    }

    async fn list_workloads(
        &self,
        _request: Request<pb::ListWorkloadsRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        let state = &self.state;
        // Local mode serves processes of one user, outside any pod, so it lists none.
        let Some(node) = &state.node else {
            return Ok(Response::new(pb::ListWorkloadsResponse::default()));
        };
        let mut workloads = Vec::new();
        for stats in state.audit.workloads.list() {
            let entry = node.pods.pod_by_uid(&stats.pod_uid, Duration::ZERO).await;
            let (service_account, vault_role) = match &entry {
                Some(entry) => {
                    let account = entry.service_account().to_string();
                    let role = entry
                        .pod
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|annotations| annotations.get(annotations::VAULT_ROLE))
                        .cloned()
                        .unwrap_or_else(|| account.clone());
                    (account, role)
                }
                None => (String::new(), String::new()),
            };
            workloads.push(pb::Workload {
                namespace: stats.namespace,
                pod: stats.pod,
                pod_uid: stats.pod_uid,
                container: stats.container,
                service_account,
                vault_role,
                last_request_unix_ms: unix_millis(stats.last_request),
                requests: stats.requests,
                denials: stats.denials,
                pod_present: entry.is_some(),
            });
        }
        // Pods that left the node are listed once more, marked absent, and then forgotten.
        let present: std::collections::HashSet<String> = node
            .pods
            .pods()
            .iter()
            .map(|entry| entry.uid().to_string())
            .collect();
        state
            .audit
            .workloads
            .retain_pods(|uid| present.contains(uid));
        Ok(Response::new(pb::ListWorkloadsResponse { workloads }))
    }

    async fn list_cache_entries(
        &self,
        _request: Request<pb::ListCacheEntriesRequest>,
    ) -> Result<Response<pb::ListCacheEntriesResponse>, Status> {
        Ok(Response::new(cache::list(self).await))
    }

    async fn flush(
        &self,
        request: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::FlushResponse>, Status> {
        let target = request.into_inner().target.ok_or_else(|| {
            Status::invalid_argument("set one of path_prefix, pod or identity to flush")
        })?;
        flush::flush(self, target).await.map(Response::new)
    }

    type WatchAuditStream = AuditStream;

    async fn watch_audit(
        &self,
        _request: Request<pb::WatchAuditRequest>,
    ) -> Result<Response<Self::WatchAuditStream>, Status> {
        let receiver = self.state.audit.subscribe();
        let watcher = Watcher::new(Arc::clone(&self.state.audit.counters));
        let state = WatchState {
            receiver,
            batch: VecDeque::new(),
            dropped: 0,
            watcher,
        };
        let stream = futures::stream::unfold(state, next_audit_event)
            .take_until(self.state.stop.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn reload_config(
        &self,
        _request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        reload::reload(&self.state).map(Response::new)
    }
}

impl AdminService {
    /// Returns the watched pods named `namespace/name`.
    pub(super) fn pod_entries(&self, pod: &str) -> Result<Vec<PodEntry>, Status> {
        let Some(node) = &self.state.node else {
            return Err(Status::failed_precondition(
                "flush by pod needs node mode; flush by path_prefix or identity instead",
            ));
        };
        let Some((namespace, name)) = pod.split_once('/') else {
            return Err(Status::invalid_argument(format!(
                "invalid pod {pod:?}: expected namespace/name"
            )));
        };
        let entries: Vec<PodEntry> = node
            .pods
            .pods()
            .into_iter()
            .filter(|entry| entry.namespace() == namespace && entry.name() == name)
            .collect();
        if entries.is_empty() {
            return Err(Status::not_found(format!(
                "pod {pod} is not among the pods on node {}",
                node.node_name
            )));
        }
        Ok(entries)
    }
}

fn vault_session(identity: String, status: VaultStatus) -> pb::VaultSession {
    pb::VaultSession {
        identity,
        address: status.address,
        logged_in: status.logged_in,
        token_ttl_seconds: status.token_ttl_secs,
        token_renewable: status.token_renewable,
        cache_entries: status.cache_entries,
        cache_hits: status.cache_hits,
        cache_misses: status.cache_misses,
        stale_served: status.stale_served,
        live_leases: status.live_leases as u64,
        last_error: status.last_error.unwrap_or_default(),
    }
}

/// One open `WatchAudit` stream, counted in [`RequestCounters::watchers`] until it is dropped.
struct Watcher {
    counters: Arc<RequestCounters>,
}

impl Watcher {
    fn new(counters: Arc<RequestCounters>) -> Watcher {
        counters.watchers.fetch_add(1, Ordering::Relaxed);
        Watcher { counters }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.counters.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The receiver of one `WatchAudit` stream and the events it has taken but not yet sent.
struct WatchState {
    receiver: broadcast::Receiver<Arc<AuditEvent>>,
    batch: VecDeque<pb::AuditEvent>,
    /// Events lost since the last event taken, reported with the next one.
    dropped: u64,
    watcher: Watcher,
}

impl WatchState {
    /// Takes `event`, reporting the events lost before it.
    fn take(&mut self, event: &AuditEvent) {
        self.batch.push_back(audit_message(event, self.dropped));
        self.dropped = 0;
    }

    fn count_lost(&mut self, missed: u64) {
        self.dropped += missed;
        let counters = &self.watcher.counters;
        counters.dropped.fetch_add(missed, Ordering::Relaxed);
    }
}

/// Returns the next event of a `WatchAudit` stream.
///
/// After the first event of a quiet period the stream waits [`AUDIT_BATCH_DELAY`] and then
/// takes every event that arrived meanwhile. Under load tonic then writes many events at once,
/// instead of waking the stream and writing to the socket once per request.
async fn next_audit_event(
    mut state: WatchState,
) -> Option<(Result<pb::AuditEvent, Status>, WatchState)> {
    if let Some(event) = state.batch.pop_front() {
        return Some((Ok(event), state));
    }
    loop {
        match state.receiver.recv().await {
            Ok(event) => {
                state.take(&event);
                break;
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => state.count_lost(missed),
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
    tokio::time::sleep(AUDIT_BATCH_DELAY).await;
    loop {
        match state.receiver.try_recv() {
            Ok(event) => state.take(&event),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => state.count_lost(missed),
            Err(_) => break,
        }
    }
    let event = state.batch.pop_front()?;
    Some((Ok(event), state))
}

fn audit_message(event: &AuditEvent, dropped_before: u64) -> pb::AuditEvent {
    pb::AuditEvent {
        time_unix_ms: event.time_unix_ms,
        pid: event.pid,
        pod: event.pod.clone(),
        container: event.container.clone(),
        variable: event.variable.clone(),
        reference: event.reference.clone(),
        decision: event.decision.clone(),
        cache: event.cache.clone(),
        latency_us: event.latency_us,
        reason: event.reason.clone(),
        dropped_before,
    }
}
