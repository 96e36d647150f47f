//! Audit events: one per request the agent responds to, with the caller, the variable name, the
//! reference and the decision. An event never contains a value.
//!
//! Events go into a `tokio::sync::broadcast` channel. Each `WatchAudit` stream is one receiver,
//! and so is the thread that writes the JSON audit log while `[audit] log` is on. A receiver that falls more than the
//! channel's buffer behind loses the oldest events and learns how many, so a slow watcher never
//! slows requests.
//!
//! The pod, the cache outcome and the denial reason are known only deep inside request
//! handling, so the handling code notes them into a task-local [`AuditNote`] that
//! [`scope`] sets up around one request.

use std::cell::RefCell;
use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envproxy_proto::{has_known_scheme, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use tokio::sync::broadcast;

use super::workloads::Workloads;
use crate::handler::Decision;
use crate::metrics::{CacheBackend, Metrics};

/// Events buffered per receiver when `[audit] buffer` is not set.
pub const DEFAULT_AUDIT_BUFFER: usize = 1024;
/// The largest `[audit] buffer` accepted. By estimate, a buffered event takes a few hundred
/// bytes, depending on its names and reference.
pub const MAX_AUDIT_BUFFER: usize = 1 << 20;

/// The `[audit]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// Writes each event as one JSON line to standard error, beside the agent's log.
    pub log: bool,
    /// Events buffered per receiver before the slowest one starts losing events.
    pub buffer: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            log: false,
            buffer: DEFAULT_AUDIT_BUFFER,
        }
    }
}

/// Whether a Vault read came from the agent's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// Served past its TTL because Vault was unavailable.
    Stale,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
        }
    }
}

/// One request and the agent's response to it. Field names are those of the JSON audit log and of the admin API's
/// `AuditEvent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub time_unix_ms: i64,
    pub pid: i32,
    /// `namespace/name`, or empty outside node mode or when the caller's pod is unknown.
    pub pod: String,
    pub container: String,
    pub variable: String,
    /// The reference the caller sent. It is empty for a v1 request, a status request, or a
    /// value without a known scheme, because such a value may be a plain secret.
    pub reference: String,
    pub decision: String,
    /// `hit`, `miss`, `stale`, or empty when no cache was involved.
    pub cache: String,
    pub latency_us: u64,
    /// The denial reason code or the error message; empty otherwise. A denial for an invalid
    /// pod annotation names it after the code: `bad_annotation: envproxy.dev/vault-cache-ttl`.
    pub reason: String,
}

/// Details of one request noted while it is handled.
#[derive(Debug, Default)]
pub(crate) struct AuditNote {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// The cache the request was served through and its outcome.
    pub cache: Option<(CacheBackend, CacheOutcome)>,
    pub denial: Option<&'static str>,
    /// The annotation a `bad_annotation` denial is about.
    pub denial_annotation: Option<&'static str>,
}

tokio::task_local! {
    static NOTE: RefCell<AuditNote>;
}

/// Runs `future`, the handling of one request, with an empty [`AuditNote`], and returns its
/// output with what was noted.
pub(crate) async fn scope<F: Future>(future: F) -> (F::Output, AuditNote) {
    NOTE.scope(RefCell::new(AuditNote::default()), async move {
        let output = future.await;
        let note = NOTE.with(RefCell::take);
        (output, note)
    })
    .await
}

/// Notes the cache outcome of the current request in `backend`'s cache. Does nothing outside
/// [`scope`].
pub(crate) fn note_cache(backend: CacheBackend, outcome: CacheOutcome) {
    let _ = NOTE.try_with(|note| note.borrow_mut().cache = Some((backend, outcome)));
}

/// Notes the attested pod and container of the current request.
pub(crate) fn note_workload(pod: &Pod, pod_uid: &str, container: &str) {
    let _ = NOTE.try_with(|note| {
        let mut note = note.borrow_mut();
        note.namespace = pod.metadata.namespace.clone().unwrap_or_default();
        note.pod = pod.metadata.name.clone().unwrap_or_default();
        note.pod_uid = pod_uid.to_string();
        note.container = container.to_string();
    });
}

/// Notes the reason code of a denial of the current request, and the annotation it is about
/// when the reason is an invalid annotation.
pub(crate) fn note_denial(reason: &'static str, annotation: Option<&'static str>) {
    let _ = NOTE.try_with(|note| {
        let mut note = note.borrow_mut();
        note.denial = Some(reason);
        note.denial_annotation = annotation;
    });
}

/// Counters of the audit stream for the admin API's status. Requests are counted in
/// [`Metrics`].
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    /// Events that watchers or the JSON log lost because they fell behind.
    pub dropped: AtomicU64,
    /// Open `WatchAudit` streams.
    pub watchers: AtomicU64,
}

/// The audit channel of one agent, its counters and the workloads seen.
pub(crate) struct AuditLog {
    sender: broadcast::Sender<Arc<AuditEvent>>,
    /// The stop flag of the running JSON log thread; `None` while the log is off.
    log_writer: Mutex<Option<Arc<AtomicBool>>>,
    pub counters: Arc<RequestCounters>,
    /// The agent's metrics, which count each recorded request.
    pub metrics: Arc<Metrics>,
    pub workloads: Workloads,
}

impl AuditLog {
    /// Creates the channel and, when `settings.log` is set, starts the JSON log thread.
    pub(crate) fn start(settings: &AuditSettings, metrics: Arc<Metrics>) -> Arc<AuditLog> {
        let (sender, _) = broadcast::channel(settings.buffer.max(1));
        let audit = AuditLog {
            sender,
            log_writer: Mutex::new(None),
            counters: Arc::new(RequestCounters::default()),
            metrics,
            workloads: Workloads::default(),
        };
        audit.set_log(settings.log);
        Arc::new(audit)
    }

    /// Turns the JSON audit log on or off. The log runs on its own thread, which exists only
    /// while the log is on, so an agent without it pays nothing per event.
    pub(crate) fn set_log(&self, enabled: bool) {
        let mut writer = self
            .log_writer
            .lock()
            .unwrap_or_else(|err| err.into_inner());
        match (enabled, writer.take()) {
            (true, Some(running)) => *writer = Some(running),
            (true, None) => {
                let stop = Arc::new(AtomicBool::new(false));
                let receiver = self.sender.subscribe();
                let counters = Arc::clone(&self.counters);
                let thread_stop = Arc::clone(&stop);
                let spawned = std::thread::Builder::new()
                    .name("envproxy-audit-log".to_string())
                    .spawn(move || write_log_lines(receiver, &thread_stop, &counters));
                match spawned {
                    Ok(_) => *writer = Some(stop),
                    Err(err) => tracing::error!(
                        %err,
                        "cannot start the audit log thread; audit events are not logged"
                    ),
                }
            }
            // The thread reads the flag at its next event and ends.
            (false, Some(running)) => running.store(true, Ordering::Relaxed),
            (false, None) => {}
        }
    }

    pub(crate) fn log_enabled(&self) -> bool {
        self.log_writer
            .lock()
            .unwrap_or_else(|err| err.into_inner())
            .is_some()
    }

    /// Returns a receiver of the events recorded from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<AuditEvent>> {
        self.sender.subscribe()
    }

    /// Records the response to `request` from process `pid`, which took `latency`.
    pub(crate) fn record(
        &self,
        pid: i32,
        request: &Request,
        decision: Decision,
        response: &Response,
        note: AuditNote,
        latency: Duration,
    ) {
        self.metrics.observe_request(decision, &note, latency);
        let has_workload = !note.pod_uid.is_empty();
        // Without a watcher or the JSON log the event would be dropped at once, so it is not
        // built. A watcher that subscribes during this call may miss this one event.
        if !has_workload && self.sender.receiver_count() == 0 {
            return;
        }
        let now = SystemTime::now();
        if has_workload {
            self.workloads
                .record(&note, decision == Decision::Denied, now);
        }
        if self.sender.receiver_count() == 0 {
            return;
        }

        let (variable, reference) = match request {
            Request::V1 { key } => (String::from_utf8_lossy(key).into_owned(), String::new()),
            Request::V2 { key, value } => {
                // Only a value with a known scheme is a reference. Any other value may be a
                // secret set directly in the environment, so it is never recorded.
                let reference = if has_known_scheme(value) {
                    String::from_utf8_lossy(value).into_owned()
                } else {
                    String::new()
                };
                (String::from_utf8_lossy(key).into_owned(), reference)
            }
            Request::Status => (String::new(), String::new()),
        };
        let reason = match (note.denial, response) {
            (Some(code), _) => match note.denial_annotation {
                Some(annotation) => format!("{code}: {annotation}"),
                None => code.to_string(),
            },
            // Error payloads carry reasons, never secret material. Most start with the
            // variable name, which the event has in its own field.
            (None, Response::Error(message)) => message
                .strip_prefix(variable.as_str())
                .and_then(|rest| rest.strip_prefix(": "))
                .filter(|_| !variable.is_empty())
                .unwrap_or(message)
                .to_string(),
            (None, _) => String::new(),
        };
        let pod = if note.pod.is_empty() {
            String::new()
        } else {
            format!("{}/{}", note.namespace, note.pod)
        };
        let event = AuditEvent {
            time_unix_ms: unix_millis(now),
            pid,
            pod,
            container: note.container,
            variable,
            reference,
            decision: decision.to_string(),
            cache: note
                .cache
                .map(|(_, outcome)| outcome.as_str())
                .unwrap_or_default()
                .to_string(),
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            reason,
        };
        // Without receivers the event has nowhere to go, which is not an error.
        let _ = self.sender.send(Arc::new(event));
    }
}

/// Returns milliseconds since the Unix epoch, negative before it.
pub(crate) fn unix_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// Writes each event as one JSON line to standard error until `stop` is set or the channel
/// closes. Runs on its own thread so a slow log reader never blocks a Tokio worker.
fn write_log_lines(
    mut receiver: broadcast::Receiver<Arc<AuditEvent>>,
    stop: &AtomicBool,
    counters: &RequestCounters,
) {
    loop {
        let received = receiver.blocking_recv();
        if stop.load(Ordering::Relaxed) {
            return;
        }
        match received {
            Ok(event) => {
                let Ok(mut line) = serde_json::to_vec(&*event) else {
                    continue;
                };
                line.push(b'\n');
                // One write call per line keeps lines whole between threads that share stderr.
                let _ = std::io::stderr().lock().write_all(&line);
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                counters.dropped.fetch_add(missed, Ordering::Relaxed);
                tracing::warn!(missed, "the audit log fell behind and lost events");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(key: &str, value: &str) -> Request {
        Request::V2 {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn plain_value_never_recorded() {
        let audit = AuditLog::start(&AuditSettings::default(), Arc::default());
        let mut events = audit.subscribe();
        audit.record(
            7,
            &v2("PASSWORD", "hunter2"),
            Decision::Passthrough,
            &Response::Passthrough,
            AuditNote::default(),
            Duration::from_micros(3),
        );
        let event = events.recv().await.unwrap();
        assert_eq!(event.variable, "PASSWORD");
        assert_eq!(event.reference, "");
        assert_eq!(event.decision, "passthrough");
        assert_eq!(event.pid, 7);
        assert_eq!(event.latency_us, 3);
        let json = serde_json::to_string(&*event).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
    }

    #[tokio::test]
    async fn note_inside_scope_reaches_event() {
        let audit = AuditLog::start(&AuditSettings::default(), Arc::default());
        let mut events = audit.subscribe();
        let ((), note) = scope(async {
            note_cache(CacheBackend::Vault, CacheOutcome::Hit);
            note_denial("not_declared", None);
        })
        .await;
        audit.record(
            1,
            &v2("DB", "vault:secret/data/app#db"),
            Decision::Denied,
            &Response::error("DB: permission denied".to_string()),
            note,
            Duration::ZERO,
        );
        let event = events.recv().await.unwrap();
        assert_eq!(event.reference, "vault:secret/data/app#db");
        assert_eq!(event.cache, "hit");
        assert_eq!(event.reason, "not_declared");
        assert_eq!(audit.metrics.requests(Decision::Denied), 1);
    }

    #[test]
    fn unix_millis_of_epoch_and_before() {
        assert_eq!(unix_millis(UNIX_EPOCH), 0);
        assert_eq!(unix_millis(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
        assert_eq!(unix_millis(UNIX_EPOCH - Duration::from_millis(20)), -20);
    }
}
