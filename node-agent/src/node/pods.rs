//! The watch of this node's pods: pods by UID, and container IDs mapped to container names.
//!
//! [`PodWatch`] lists and watches pods with the field selector `spec.nodeName=<node>` through
//! `kube`'s watcher, which relists when the API server reports an expired resource version
//! (410) and backs off on errors (800 ms doubling to 30 s, with jitter). A caller that looks up
//! a pod the watch has not delivered yet, because the pod or its container just started, may
//! wait a bounded time for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::runtime::watcher::{self, Event};
use kube::Api;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Deletions buffered per [`PodWatch::deletions`] receiver before it lags.
const DELETIONS_BUFFER: usize = 256;

/// Prefixes of `containerID` in a container status, one per container runtime.
const RUNTIME_PREFIXES: &[&str] = &["containerd://", "cri-o://", "docker://"];

/// A pod as the watch last saw it, with its containers indexed by container ID.
#[derive(Clone, Debug)]
pub struct PodEntry {
    pub pod: Arc<Pod>,
    /// Container ID without the runtime prefix, to container name; regular, init and
    /// ephemeral containers alike. Only containers the kubelet has reported a status for.
    pub containers_by_id: Arc<HashMap<String, String>>,
}

impl PodEntry {
    fn new(pod: Pod) -> PodEntry {
        let status = pod.status.as_ref();
        let lists: [Option<&Vec<ContainerStatus>>; 3] = [
            status.and_then(|s| s.container_statuses.as_ref()),
            status.and_then(|s| s.init_container_statuses.as_ref()),
            status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
        ];
        let containers_by_id = lists
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|container| {
                let id = container.container_id.as_deref()?;
                let id = strip_runtime_prefix(id);
                (!id.is_empty()).then(|| (id.to_owned(), container.name.clone()))
            })
            .collect();
        PodEntry {
            pod: Arc::new(pod),
            containers_by_id: Arc::new(containers_by_id),
        }
    }

    /// Returns the name of the container with this ID; the ID may carry a runtime prefix.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers_by_id
            .get(strip_runtime_prefix(container_id))
            .map(String::as_str)
    }

    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    /// Returns `spec.serviceAccountName`, or `default` when it is unset.
    pub fn service_account(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|spec| spec.service_account_name.as_deref())
            .unwrap_or("default")
    }
}

/// Removes a `containerd://`, `cri-o://` or `docker://` prefix.
fn strip_runtime_prefix(container_id: &str) -> &str {
    RUNTIME_PREFIXES
        .iter()
        .find_map(|prefix| container_id.strip_prefix(prefix))
        .unwrap_or(container_id)
}

/// A pod that left this node or was deleted, so per-pod state can be dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedPod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

impl From<&PodEntry> for DeletedPod {
    fn from(entry: &PodEntry) -> DeletedPod {
        DeletedPod {
            uid: entry.uid().to_owned(),
            namespace: entry.namespace().to_owned(),
            name: entry.name().to_owned(),
            service_account: entry.service_account().to_owned(),
        }
    }
}

/// The pods the watch has delivered, shared by the watch task and every [`PodWatch`].
struct Store {
    node_name: String,
    /// The API server's address for log lines.
    server: String,
    pods: RwLock<HashMap<String, PodEntry>>,
    /// Bumped after every change to `pods`; waiters wake on it.
    changes: watch::Sender<u64>,
    synced: watch::Sender<bool>,
    /// Whether the latest watch request succeeded; cleared by each watch error.
    connected: AtomicBool,
    /// Failed list and watch requests since the API server last delivered data.
    failures: AtomicU64,
    /// The latest failed list or watch request in words, until the API server delivers data.
    last_error: Mutex<Option<String>>,
    deletions: broadcast::Sender<DeletedPod>,
    /// The agent's metrics, which count relists and watch errors.
    metrics: Arc<Metrics>,
}

/// Aborts the watch task when the last [`PodWatch`] clone is dropped.
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The watch of one node's pods. Clones share one watch, which stops when the last is dropped.
#[derive(Clone)]
pub struct PodWatch {
    store: Arc<Store>,
    _task: Arc<TaskGuard>,
}

impl PodWatch {
    /// Starts watching the pods whose `spec.nodeName` is `node_name`, on the current Tokio
    /// runtime.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime.
    /// Log lines name the API server as `server`, its URL.
    pub fn start(client: kube::Client, node_name: &str, server: &str) -> PodWatch {
        PodWatch::start_observed(client, node_name, server.to_string(), Arc::default())
    }

    /// Like [`PodWatch::start`], counting relists and watch errors in `metrics`.
    pub(crate) fn start_observed(
        client: kube::Client,
        node_name: &str,
        server: String,
        metrics: Arc<Metrics>,
    ) -> PodWatch {
        let store = Arc::new(Store {
            node_name: node_name.to_owned(),
            server,
            pods: RwLock::new(HashMap::new()),
            changes: watch::channel(0).0,
            synced: watch::channel(false).0,
            connected: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            deletions: broadcast::channel(DELETIONS_BUFFER).0,
            metrics,
        });
        let task = tokio::spawn(run(client, store.clone()));
        PodWatch {
            store,
            _task: Arc::new(TaskGuard(task)),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.store.node_name
    }

    /// Returns whether the first full list of the node's pods has arrived.
    pub fn is_synced(&self) -> bool {
        *self.store.synced.borrow()
    }

    /// Returns whether the latest list or watch request to the API server succeeded. It turns
    /// false at each watch error (such as the API server being unreachable) and true again at
    /// the next event.
    pub fn is_connected(&self) -> bool {
        self.store.connected.load(Ordering::Relaxed)
    }

    /// Returns the number of failed list and watch requests since the API server last
    /// delivered data; 0 while the watch works.
    pub fn consecutive_failures(&self) -> u64 {
        self.store.failures.load(Ordering::Relaxed)
    }

    /// Returns the latest failed list or watch request in words, naming the API server and
    /// what to fix, or `None` once the API server delivered data after it.
    pub fn last_error(&self) -> Option<String> {
        self.store.lock_last_error().clone()
    }

    /// Waits up to `wait` for the first full list; returns whether it arrived.
    pub async fn wait_synced(&self, wait: Duration) -> bool {
        let mut synced = self.store.synced.subscribe();
        tokio::time::timeout(wait, synced.wait_for(|synced| *synced))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Returns the pod with this UID, waiting up to `wait` for the watch to deliver it.
    pub async fn pod_by_uid(&self, uid: &str, wait: Duration) -> Option<PodEntry> {
        self.wait_for(wait, |pods| pods.get(uid).cloned()).await
    }

    /// Returns the pod with this UID and the name of its container with this ID, waiting up
    /// to `wait` for both, because the kubelet posts a container's ID shortly after start.
    pub async fn container(
        &self,
        uid: &str,
        container_id: &str,
        wait: Duration,
    ) -> Option<(PodEntry, String)> {
        self.wait_for(wait, |pods| {
            let entry = pods.get(uid)?;
            let name = entry.container_name(container_id)?.to_owned();
            Some((entry.clone(), name))
        })
        .await
    }

    /// Returns every pod in the store now.
    pub fn pods(&self) -> Vec<PodEntry> {
        let pods = self.store.pods.read().expect("pod store lock poisoned");
        pods.values().cloned().collect()
    }

    /// Returns a receiver of pods deleted from this node from now on. A relist that no longer
    /// contains a pod also reports it.
    pub fn deletions(&self) -> broadcast::Receiver<DeletedPod> {
        self.store.deletions.subscribe()
    }

    /// Evaluates `find` on the store now and after each change until it returns `Some` or
    /// `wait` has passed.
    async fn wait_for<T>(
        &self,
        wait: Duration,
        mut find: impl FnMut(&HashMap<String, PodEntry>) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribing before the first look means no change can fall between the two.
        let mut changes = self.store.changes.subscribe();
        loop {
            {
                let pods = self.store.pods.read().expect("pod store lock poisoned");
                if let Some(found) = find(&pods) {
                    return Some(found);
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // The watch task ended (the runtime is shutting down) or the wait is over.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

/// Runs the watcher and applies its events to the store until the task is aborted.
///
/// A watch that failed is not resumed from its resource version: after a backoff the watch
/// starts over with a full list. A resumed watch delivers nothing until a pod changes, so it
/// could not show that the API server is back. Worse, an API server that restarted with fresh
/// state (a lower resourceVersion) rejects a resumed watch with 504 "Too large resource
/// version" on every attempt, and the store would keep serving pods that no longer exist.
/// The list is of this node's pods only, so one per outage is cheap.
async fn run(client: kube::Client, store: Arc<Store>) {
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={}", store.node_name);
    let config = watcher::Config::default().fields(&selector);
    let mut backoff = Backoff::default();
    info!(node = %store.node_name, "pod watch starting");
    loop {
        let events = watcher::watcher(api.clone(), config.clone()).boxed();
        watch_until_failure(events, &store, &mut backoff).await;
        let delay = backoff.next_delay();
        debug!(
            node = %store.node_name,
            delay_ms = delay.as_millis() as u64,
            "pod watch relisting after a backoff"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Applies the events of one watcher to the store. Returns after a failed watch, so that the
/// caller relists. A failed list is retried within the watcher, after a backoff.
async fn watch_until_failure(
    mut events: futures::stream::BoxStream<'_, Result<Event<Pod>, watcher::Error>>,
    store: &Store,
    backoff: &mut Backoff,
) {
    let mut listing: Option<HashMap<String, PodEntry>> = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => {
                // `Init` starts each list attempt, also the retries after a failure, so only
                // data from the API server ends a run of failures.
                if !matches!(event, Event::Init) {
                    store.failures.store(0, Ordering::Relaxed);
                    store.connected.store(true, Ordering::Relaxed);
                    if store.lock_last_error().take().is_some() {
                        info!(node = %store.node_name, "the pod watch receives data again");
                    }
                }
                event
            }
            Err(err) => {
                let failures = store.failures.fetch_add(1, Ordering::Relaxed) + 1;
                store.connected.store(false, Ordering::Relaxed);
                store.metrics.pod_watch_failed();
                if let Some(message) = describe_watch_error(&err, &store.server) {
                    let previous = store.lock_last_error().replace(message.clone());
                    log_watch_error(&message, previous.as_deref(), failures, &store.node_name);
                }
                if matches!(err, watcher::Error::InitialListFailed(_)) {
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                return;
            }
        };
        match event {
            Event::Init => listing = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let Some(entry) = store.accept(pod) {
                    let listing = listing.get_or_insert_with(HashMap::new);
                    listing.insert(entry.uid().to_owned(), entry);
                }
            }
            Event::InitDone => {
                // Only a completed list counts as a relist: a failed attempt is retried.
                if store.is_synced() {
                    info!(node = %store.node_name, "pod watch relisted");
                    store.metrics.pod_watch_relisted();
                }
                let listed = listing.take().unwrap_or_default();
                store.replace_all(listed);
            }
            Event::Apply(pod) => match store.accept(pod) {
                Some(entry) => store.insert(entry),
                None => debug!(node = %store.node_name, "ignored a pod of another node"),
            },
            Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    store.remove(uid);
                }
            }
        }
    }
    // The watcher's stream never ends on its own: it retries failed lists and watches.
    warn!(node = %store.node_name, "pod watch stream ended");
}

/// Exponential backoff between attempts after failures: [`Backoff::MIN`] doubling to
/// [`Backoff::MAX`], with up to a quarter added at random so that nodes do not retry together.
/// It starts over after [`Backoff::RESET_AFTER`] without a failure. Data from the API server
/// does not reset it, so a watch that fails right after each successful list is retried at
/// most every [`Backoff::MAX`], not in a tight loop.
#[derive(Debug, Default)]
struct Backoff {
    attempts: u32,
    last_failure: Option<tokio::time::Instant>,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(800);
    const MAX: Duration = Duration::from_secs(30);
    const RESET_AFTER: Duration = Duration::from_secs(120);

    fn next_delay(&mut self) -> Duration {
        let now = tokio::time::Instant::now();
        if self
            .last_failure
            .is_some_and(|last| now.duration_since(last) > Backoff::RESET_AFTER)
        {
            self.attempts = 0;
        }
        self.last_failure = Some(now);
        let base = Backoff::MIN
            .saturating_mul(1 << self.attempts.min(16))
            .min(Backoff::MAX);
        self.attempts = self.attempts.saturating_add(1);
        let jitter_range = base.as_millis() as u64 / 4;
        let jitter = if jitter_range == 0 {
            0
        } else {
            rand_below(jitter_range)
        };
        base + Duration::from_millis(jitter)
    }
}

/// Returns a number below `bound` from the clock's low bits; jitter needs no better source.
fn rand_below(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    u64::from(nanos) % bound
}

/// Describes a watch error in words: the request, the API server and what to fix. Returns
/// `None` for an expired watch history (410 Gone), which is routine and only leads to a relist.
fn describe_watch_error(err: &watcher::Error, server: &str) -> Option<String> {
    let (request, failure) = match err {
        watcher::Error::InitialListFailed(err) => ("the first list of pods", Failure::Client(err)),
        watcher::Error::WatchStartFailed(err) | watcher::Error::WatchFailed(err) => {
            ("the pod watch", Failure::Client(err))
        }
        watcher::Error::WatchError(status) => {
            if status.code == 410 {
                debug!("pod watch history expired; relisting");
                return None;
            }
            ("the pod watch", Failure::Status(status))
        }
        other => ("the pod watch", Failure::Other(other)),
    };
    Some(format!(
        "{request} failed: {}",
        describe_failure(&failure, server)
    ))
}

/// Logs a watch error `message`. A message that differs from the `previous` error is a
/// warning, so the log always names the current cause. A run of the same error is a warning
/// at its 10th, 20th, ... failure and otherwise logged at debug level.
fn log_watch_error(message: &str, previous: Option<&str>, failures: u64, node: &str) {
    if previous != Some(message) || failures.is_multiple_of(10) {
        warn!(%node, failures, "{message}; retrying with backoff");
    } else {
        debug!(%node, failures, "{message}; retrying with backoff");
    }
}

/// The cause of a failed list or watch request.
enum Failure<'a> {
    Client(&'a kube::Error),
    Status(&'a kube::core::Status),
    Other(&'a watcher::Error),
}

/// Describes a failed request to the API server at `server` in words: the HTTP status and
/// what to fix, or the connection error.
fn describe_failure(failure: &Failure<'_>, server: &str) -> String {
    let status = match failure {
        Failure::Client(kube::Error::Api(status)) => status.as_ref(),
        Failure::Status(status) => status,
        Failure::Client(err) => return describe_connection_error(err, server),
        Failure::Other(err) => return format!("the API server at {server}: {err}"),
    };
    let detail = if status.message.is_empty() {
        status.reason.clone()
    } else {
        status.message.clone()
    };
    match status.code {
        401 => format!(
            "the API server at {server} returned HTTP 401 Unauthorized ({detail}): the \
             credentials of the kubeconfig ([node] kubeconfig) or of the agent's service account \
             are wrong or expired"
        ),
        403 => format!(
            "the API server at {server} returned HTTP 403 Forbidden ({detail}): RBAC must allow \
             the agent's user or service account to list and watch pods"
        ),
        code => format!("the API server at {server} returned HTTP {code} ({detail})"),
    }
}

/// Describes an error without an HTTP status, such as a refused connection, from the innermost
/// I/O error of its chain.
fn describe_connection_error(err: &kube::Error, server: &str) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut innermost = err.to_string();
    while let Some(current) = source {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return format!(
                        "cannot connect to the API server at {server}: connection refused; the \
                         address is wrong or the API server is down"
                    )
                }
                std::io::ErrorKind::TimedOut => {
                    return format!(
                        "cannot connect to the API server at {server}: timed out; the address \
                         is wrong or unreachable"
                    )
                }
                _ => {}
            }
        }
        innermost = current.to_string();
        source = current.source();
    }
    format!("request to the API server at {server} failed: {innermost}")
}

impl Store {
    fn lock_last_error(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // Writers only replace the whole value, so a poisoned lock still holds a usable one.
        self.last_error
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Builds the entry of a pod of this node; `None` for a pod of another node, which the
    /// field selector should already have excluded.
    fn accept(&self, pod: Pod) -> Option<PodEntry> {
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref());
        if node != Some(self.node_name.as_str()) || pod.metadata.uid.is_none() {
            return None;
        }
        Some(PodEntry::new(pod))
    }

    fn insert(&self, entry: PodEntry) {
        debug!(
            node = %self.node_name,
            pod_uid = entry.uid(),
            namespace = entry.namespace(),
            pod = entry.name(),
            containers = entry.containers_by_id.len(),
            "pod applied"
        );
        let mut pods = self.pods.write().expect("pod store lock poisoned");
        pods.insert(entry.uid().to_owned(), entry);
        drop(pods);
        self.changes.send_modify(|generation| *generation += 1);
    }

    fn remove(&self, uid: &str) {
        let mut pods = self.pods.write().expect("pod store lock poisoned");
        let removed = pods.remove(uid);
        drop(pods);
        if let Some(entry) = removed {
            debug!(node = %self.node_name, pod_uid = uid, pod = entry.name(), "pod deleted");
            // A send fails only when no receiver exists, which is harmless.
            let _ = self.deletions.send(DeletedPod::from(&entry));
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    /// Replaces the store with a full list, reporting pods the list no longer contains as
    /// deleted.
    fn replace_all(&self, listed: HashMap<String, PodEntry>) {
        let mut pods = self.pods.write().expect("pod store lock poisoned");
        let previous = std::mem::replace(&mut *pods, listed);
        let count = pods.len();
        let gone: Vec<DeletedPod> = previous
            .values()
            .filter(|entry| !pods.contains_key(entry.uid()))
            .map(DeletedPod::from)
            .collect();
        drop(pods);
        for deleted in gone {
            // A send fails only when no receiver exists, which is harmless.
            let _ = self.deletions.send(deleted);
        }
        self.changes.send_modify(|generation| *generation += 1);
        self.synced.send_replace(true);
        info!(node = %self.node_name, pods = count, "pod watch synced");
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;

    use super::*;

    fn status(name: &str, id: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: name.to_owned(),
            container_id: id.map(str::to_owned),
            ..ContainerStatus::default()
        }
    }

    #[test]
    fn entry_maps_ids_of_all_status_lists() {
        let pod = Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![
                    status("app", Some("containerd://aaa")),
                    status("waiting", None),
                ]),
                init_container_statuses: Some(vec![status("init", Some("cri-o://bbb"))]),
                ephemeral_container_statuses: Some(vec![status("debug", Some("docker://ccc"))]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        };
        let entry = PodEntry::new(pod);
        assert_eq!(entry.containers_by_id.len(), 3);
        assert_eq!(entry.container_name("aaa"), Some("app"));
        assert_eq!(entry.container_name("containerd://aaa"), Some("app"));
        assert_eq!(entry.container_name("bbb"), Some("init"));
        assert_eq!(entry.container_name("ccc"), Some("debug"));
        assert_eq!(entry.container_name("ddd"), None);
    }

    #[test]
    fn runtime_prefixes_are_stripped() {
        assert_eq!(strip_runtime_prefix("containerd://abc"), "abc");
        assert_eq!(strip_runtime_prefix("cri-o://abc"), "abc");
        assert_eq!(strip_runtime_prefix("docker://abc"), "abc");
        assert_eq!(strip_runtime_prefix("abc"), "abc");
    }
}
