//! The `grpc.health.v1` status: SERVING while the agent can serve requests, NOT_SERVING
//! otherwise, for the whole server (service `""`) and for `envproxy.admin.v1.Admin`.
//!
//! The agent can serve requests when, in node mode, the pod watch has delivered its first full
//! list and the API server is reachable, and, with a local-mode Vault backend, Vault has
//! accepted the agent's token. The API server counts as reachable while the watch's latest
//! request succeeded. After a watch error the watch lists again after a backoff of up to 30 s,
//! so meanwhile the API server is probed with a one-item list of the node's pods, at most every
//! [`PROBE_INTERVAL`]. After [`MAX_WATCH_FAILURES`] failed watch requests in a row the agent is
//! not serving whatever the probe finds. A secrets file is always usable once the agent has
//! started, because a failed reload keeps the last good contents.
//!
//! NOTE: in node mode each pod identity logs in to Vault at its first request, so Vault's state
//! does not enter the health status there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;

use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::{AdminState, NodeView};

/// Interval between evaluations of the agent's state. Each reads only in-memory flags.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Minimum time between API server probes while the pod watch reports an error.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Maximum wait for one API server probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Consecutive failed list and watch requests of the pod watch after which the agent is not
/// serving, even while the API server responds to the probe.
const MAX_WATCH_FAILURES: u64 = 3;

/// The service name under which the admin API's own status is reported.
const ADMIN_SERVICE: &str = "envproxy.admin.v1.Admin";

/// The latest health evaluation, for the admin API's status.
#[derive(Debug, Default)]
pub(crate) struct Health {
    serving: AtomicBool,
}

impl Health {
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }
}

/// The latest API server probe: when it ran and whether it succeeded.
#[derive(Debug, Default)]
struct Probe {
    latest: Option<(Instant, bool)>,
}

impl Probe {
    /// Returns whether the API server responded to a list of the node's pods, probing again
    /// when the latest probe is older than [`PROBE_INTERVAL`].
    async fn reachable(&mut self, node: &NodeView) -> bool {
        if let Some((at, reachable)) = self.latest {
            if at.elapsed() < PROBE_INTERVAL {
                return reachable;
            }
        }
        let api: Api<Pod> = Api::all(node.kube.clone());
        let selector = format!("spec.nodeName={}", node.node_name);
        let params = ListParams::default().fields(&selector).limit(1);
        let reachable = match tokio::time::timeout(PROBE_TIMEOUT, api.list(&params)).await {
            Ok(Ok(_)) => true,
            Ok(Err(err)) => {
                tracing::debug!(%err, "API server probe failed");
                false
            }
            Err(_) => {
                tracing::debug!(
                    timeout_ms = PROBE_TIMEOUT.as_millis(),
                    "API server probe timed out"
                );
                false
            }
        };
        self.latest = Some((Instant::now(), reachable));
        reachable
    }
}

/// Evaluates whether the agent can serve requests now.
async fn evaluate(state: &AdminState, probe: &mut Probe) -> bool {
    if let Some(node) = &state.node {
        if !node.pods.is_synced() {
            return false;
        }
        // The API server may respond to the probe's list while refusing every watch, so a run of
        // failures counts even when the probe succeeds.
        if node.pods.consecutive_failures() >= MAX_WATCH_FAILURES {
            return false;
        }
        if node.pods.is_connected() {
            probe.latest = None;
        } else if !probe.reachable(node).await {
            return false;
        }
    }
    if let Some(vault) = &state.backends.vault {
        if !vault.status().logged_in {
            return false;
        }
    }
    true
}

/// Reports the current status, then starts a task that re-evaluates it every
/// [`CHECK_INTERVAL`] and reports each change.
pub(crate) async fn start_updater(
    state: Arc<AdminState>,
    reporter: HealthReporter,
) -> JoinHandle<()> {
    let mut reported: Option<bool> = None;
    let mut probe = Probe::default();
    report(&state, &reporter, &mut reported, &mut probe).await;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = state.stop.cancelled() => return,
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
            report(&state, &reporter, &mut reported, &mut probe).await;
        }
    })
}

/// Evaluates the state and reports it when it differs from `reported`.
async fn report(
    state: &AdminState,
    reporter: &HealthReporter,
    reported: &mut Option<bool>,
    probe: &mut Probe,
) {
    let serving = evaluate(state, probe).await;
    state.health.serving.store(serving, Ordering::Relaxed);
    if *reported == Some(serving) {
        return;
    }
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter.set_service_status(ADMIN_SERVICE, status).await;
    if reported.is_some() {
        tracing::info!(serving, "agent health changed");
    }
    *reported = Some(serving);
}
