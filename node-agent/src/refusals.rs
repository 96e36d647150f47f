//! Rate-limited warnings about refused connections and denied requests.
//!
//! Any process of any pod can connect to the agent socket, and to the admin socket where its
//! directory is reachable, as fast as it likes. It can also send denied requests on one
//! connection as fast as it likes. One warning per refusal would let it fill the agent's log, so each
//! (source, reason) pair logs its first refusal, and later ones within [`SUMMARY_INTERVAL`] are
//! only counted. A summary line with that count follows at the pair's next refusal after the
//! interval, or from the summary task when no refusal comes. Every refused connection is
//! counted in `envproxy_refused_connections_total`. Denied requests are counted per request by
//! the caller, in `envproxy_requests_total` and `envproxy_denials_total`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// Time after the first logged refusal of a (source, reason) pair during which further
/// refusals of that pair are only counted.
pub(crate) const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Most (source, reason) pairs tracked at once. Past this, refusals of new sources share the
/// source `other`, so a caller that varies its source cannot grow the map.
const MAX_TRACKED: usize = 1024;

/// The socket that refused a connection, for log fields and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusingSocket {
    Agent,
    Admin,
}

impl RefusingSocket {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            RefusingSocket::Agent => "agent",
            RefusingSocket::Admin => "admin",
        }
    }
}

/// The kind of refusal a [`Refusals`] counts, which selects its metric and its summary line.
enum Subject {
    /// Connections refused on `socket`, each counted in `metrics`.
    Connections {
        socket: RefusingSocket,
        metrics: Arc<Metrics>,
    },
    /// Requests that node mode's policy denied.
    DeniedRequests,
    /// Requests that node mode allowed and a backend failed, such as a Vault read.
    FailedRequests,
}

/// Whether a refusal gets its own log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Log this refusal; `unlogged` refusals of the same pair came since the last line.
    Log { unlogged: u64 },
    /// Only counted; a later line reports it.
    Counted,
}

/// The refusals of one (source, reason) pair since its last log line.
#[derive(Debug)]
struct Window {
    logged_at: Instant,
    unlogged: u64,
}

/// Refusal counts of one socket, or of the denied requests of the agent socket.
pub(crate) struct Refusals {
    subject: Subject,
    windows: Mutex<HashMap<(String, &'static str), Window>>,
}

/// A count of refusals that no line has reported yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub source: String,
    pub reason: &'static str,
    pub unlogged: u64,
}

impl Refusals {
    pub(crate) fn new(socket: RefusingSocket, metrics: Arc<Metrics>) -> Arc<Refusals> {
        Arc::new(Refusals {
            subject: Subject::Connections { socket, metrics },
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// Returns counts for denied requests, which the caller counts in the metrics itself.
    pub(crate) fn for_denied_requests() -> Arc<Refusals> {
        Arc::new(Refusals {
            subject: Subject::DeniedRequests,
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// Returns counts for allowed requests that a backend failed, per pod and error kind.
    pub(crate) fn for_failed_requests() -> Arc<Refusals> {
        Arc::new(Refusals {
            subject: Subject::FailedRequests,
            windows: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one refusal of a connection or request from `source` (a pod, or a uid outside
    /// pods) for `reason`, at `now`, and returns whether to log it.
    pub(crate) fn refuse(&self, source: &str, reason: &'static str, now: Instant) -> Verdict {
        if let Subject::Connections { socket, metrics } = &self.subject {
            metrics.refused_connection(socket.as_str(), reason);
        }
        let mut windows = self.lock();
        let mut key = (source.to_string(), reason);
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            key.0 = "other".to_string();
        }
        match windows.get_mut(&key) {
            None => {
                windows.insert(
                    key,
                    Window {
                        logged_at: now,
                        unlogged: 0,
                    },
                );
                Verdict::Log { unlogged: 0 }
            }
            Some(window) if now.duration_since(window.logged_at) >= SUMMARY_INTERVAL => {
                let unlogged = std::mem::take(&mut window.unlogged);
                window.logged_at = now;
                Verdict::Log { unlogged }
            }
            Some(window) => {
                window.unlogged += 1;
                Verdict::Counted
            }
        }
    }

    /// Returns the unreported counts of pairs whose interval ended by `now`, and forgets pairs
    /// that had no refusal in their last interval.
    pub(crate) fn due_summaries(&self, now: Instant) -> Vec<Summary> {
        let mut summaries = Vec::new();
        self.lock().retain(|(source, reason), window| {
            if now.duration_since(window.logged_at) < SUMMARY_INTERVAL {
                return true;
            }
            if window.unlogged == 0 {
                return false;
            }
            summaries.push(Summary {
                source: source.clone(),
                reason,
                unlogged: std::mem::take(&mut window.unlogged),
            });
            window.logged_at = now;
            true
        });
        summaries
    }

    /// Logs the counts that [`Refusals::due_summaries`] returns once per second, until the
    /// last other reference to `refusals` is dropped.
    pub(crate) fn spawn_summaries(refusals: &Arc<Refusals>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Refusals> = Arc::downgrade(refusals);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(refusals) = weak.upgrade() else {
                    return;
                };
                for summary in refusals.due_summaries(Instant::now()) {
                    refusals.log_summary(&summary);
                }
            }
        })
    }

    fn log_summary(&self, summary: &Summary) {
        match &self.subject {
            Subject::Connections { socket, .. } => tracing::warn!(
                socket = socket.as_str(),
                source = %summary.source,
                reason = summary.reason,
                unlogged = summary.unlogged,
                interval_s = SUMMARY_INTERVAL.as_secs(),
                "refused more connections than were logged; see \
                 envproxy_refused_connections_total"
            ),
            Subject::DeniedRequests => tracing::warn!(
                source = %summary.source,
                reason = summary.reason,
                unlogged = summary.unlogged,
                interval_s = SUMMARY_INTERVAL.as_secs(),
                "denied more requests than were logged; see envproxy_denials_total"
            ),
            Subject::FailedRequests => tracing::warn!(
                source = %summary.source,
                reason = summary.reason,
                unlogged = summary.unlogged,
                interval_s = SUMMARY_INTERVAL.as_secs(),
                "more backend requests failed than were logged; see \
                 envproxy_vault_errors_total and envproxy_requests_total"
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, &'static str), Window>> {
        // Each update leaves the map consistent, so a poisoned lock still holds usable state.
        self.windows.lock().unwrap_or_else(|err| err.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_refusal_logged_then_counted_then_summarised() {
        let metrics = Arc::new(Metrics::new());
        let refusals = Refusals::new(RefusingSocket::Agent, Arc::clone(&metrics));
        let start = Instant::now();
        assert_eq!(
            refusals.refuse("pod-a", "limit", start),
            Verdict::Log { unlogged: 0 }
        );
        for second in 1..5 {
            let at = start + Duration::from_secs(second);
            assert_eq!(refusals.refuse("pod-a", "limit", at), Verdict::Counted);
        }
        // Another pod or reason has its own first line.
        assert_eq!(
            refusals.refuse("pod-b", "limit", start),
            Verdict::Log { unlogged: 0 }
        );
        assert_eq!(
            refusals.refuse("pod-a", "exited", start),
            Verdict::Log { unlogged: 0 }
        );
        assert!(refusals
            .due_summaries(start + Duration::from_secs(5))
            .is_empty());
        let due = refusals.due_summaries(start + SUMMARY_INTERVAL);
        assert_eq!(
            due,
            vec![Summary {
                source: "pod-a".to_string(),
                reason: "limit",
                unlogged: 4,
            }]
        );
        // Pairs without unlogged refusals are forgotten, so their next refusal logs again.
        assert_eq!(
            refusals.refuse("pod-b", "limit", start + SUMMARY_INTERVAL),
            Verdict::Log { unlogged: 0 }
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                "envproxy_refused_connections_total{socket=\"agent\",reason=\"limit\"} 7\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn failed_requests_counted_per_source_and_kind() {
        let failures = Refusals::for_failed_requests();
        let start = Instant::now();
        assert_eq!(
            failures.refuse("team-a/pod-1", "not_found", start),
            Verdict::Log { unlogged: 0 }
        );
        for _ in 0..99 {
            assert_eq!(
                failures.refuse("team-a/pod-1", "not_found", start),
                Verdict::Counted
            );
        }
        assert_eq!(
            failures.refuse("team-a/pod-1", "login_failed", start),
            Verdict::Log { unlogged: 0 }
        );
        let due = failures.due_summaries(start + SUMMARY_INTERVAL);
        assert_eq!(
            due,
            vec![Summary {
                source: "team-a/pod-1".to_string(),
                reason: "not_found",
                unlogged: 99,
            }]
        );
    }

    #[test]
    fn refusal_after_interval_reports_count() {
        let refusals = Refusals::new(RefusingSocket::Admin, Arc::default());
        let start = Instant::now();
        refusals.refuse("uid 1000", "other_uid", start);
        refusals.refuse("uid 1000", "other_uid", start + Duration::from_secs(1));
        refusals.refuse("uid 1000", "other_uid", start + Duration::from_secs(2));
        assert_eq!(
            refusals.refuse("uid 1000", "other_uid", start + SUMMARY_INTERVAL),
            Verdict::Log { unlogged: 2 }
        );
    }

    #[test]
    fn sources_past_the_bound_share_one_entry() {
        let refusals = Refusals::new(RefusingSocket::Agent, Arc::default());
        let start = Instant::now();
        for index in 0..MAX_TRACKED {
            refusals.refuse(&format!("pod-{index}"), "limit", start);
        }
        assert_eq!(
            refusals.refuse("pod-new-1", "limit", start),
            Verdict::Log { unlogged: 0 }
        );
        assert_eq!(
            refusals.refuse("pod-new-2", "limit", start),
            Verdict::Counted
        );
        assert_eq!(refusals.lock().len(), MAX_TRACKED + 1);
    }
}
