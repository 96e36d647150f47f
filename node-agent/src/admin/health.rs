//! The `grpc.health.v1` status: SERVING while the agent can serve requests, NOT_SERVING
//! otherwise, for the whole server (service `""`) and for `envproxy.admin.v1.Admin`. The admin
//! API's `Status` gives the reason when it is NOT_SERVING.
//!
//! The agent can serve requests when, in node mode, the pod watch has delivered its first full
//! list and the API server is reachable, and, in local mode, each configured backend is usable.
//! The API server counts as reachable while the watch's latest request succeeded. After a watch
//! error the watch lists again after a backoff of up to 30 s, so meanwhile the API server is
//! probed with a one-item list of the node's pods, at most every [`PROBE_INTERVAL`]. After
//! [`MAX_WATCH_FAILURES`] failed watch requests in a row the agent is not serving whatever the
//! probe finds.
//!
//! A local-mode Vault backend is usable once Vault has accepted the agent's token and while
//! Vault is available: a request that found Vault unreachable, sealed, rate-limiting or
//! returning 5xx starts an outage, and the next request that reaches Vault ends it. From
//! [`PROBE_INTERVAL`] into an outage Vault's `sys/health` is also probed, at most every
//! [`PROBE_INTERVAL`], so the status returns to SERVING once Vault is back even when no request
//! comes. When the latest login found Vault unavailable (such as at start), the probe runs too
//! and a successful one is followed by a login. The HTTP secrets API and
//! Kubernetes Secrets (local mode) are unusable from a request that found them unavailable
//! until the next request that reaches them, and from a request whose credentials they
//! rejected with a 401 until a request whose credentials they accept. A secrets file is always usable once the agent has
//! started, because a failed reload keeps the last good contents.
//!
//! NOTE: the HTTP secrets API and Kubernetes Secrets are not probed, so after an outage their
//! backend stays NOT_SERVING until a request reaches them again.
//!
//! NOTE: `sys/health` can succeed while reads still fail (for example a 5xx on one mount), so
//! the status can then alternate between a failed read and the next probe.
//!
//! NOTE: in node mode each pod identity logs in to Vault at its first request, so Vault's state
//! does not enter the health status there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;

use tokio::task::JoinHandle;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use super::{AdminState, NodeView};
use crate::vault::{Outage, VaultBackend};

/// Interval between evaluations of the agent's state. Each reads only in-memory flags.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Minimum time between API server probes while the pod watch reports an error, and between
/// Vault probes during a Vault outage.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Maximum wait for one API server or Vault probe.
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
    /// The reason the agent is not serving; `None` while it is.
    reason: Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Returns why the agent is not serving, or `None` while it is.
    pub(crate) fn not_serving_reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The latest API server probe: when it ran and whether it succeeded.
#[derive(Debug, Default)]
struct Probe {
    latest: Option<(Instant, bool)>,
    /// When Vault was last probed during the current outage or while no login has succeeded.
    vault_latest: Option<Instant>,
}

impl Probe {
    /// Returns whether a Vault probe is due, and if so records that one starts now.
    fn vault_due(&mut self) -> bool {
        let due = self
            .vault_latest
            .is_none_or(|at| at.elapsed() >= PROBE_INTERVAL);
        if due {
            self.vault_latest = Some(Instant::now());
        }
        due
    }

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

/// Evaluates whether the agent can serve requests now. Returns why not when it cannot.
async fn evaluate(state: &AdminState, probe: &mut Probe) -> Result<(), String> {
    if let Some(node) = &state.node {
        // The watch's latest error, such as a 403 or a refused connection, names the cause.
        let cause = node
            .pods
            .last_error()
            .map(|error| format!(": {error}"))
            .unwrap_or_default();
        if !node.pods.is_synced() {
            return Err(format!(
                "the pod watch of node {} has not received its first full list of pods{cause}",
                node.node_name
            ));
        }
        // The API server may respond to the probe's list while refusing every watch, so a run of
        // failures counts even when the probe succeeds.
        let failures = node.pods.consecutive_failures();
        if failures >= MAX_WATCH_FAILURES {
            return Err(format!(
                "the pod watch failed {failures} times in a row{cause}"
            ));
        }
        if node.pods.is_connected() {
            probe.latest = None;
        } else if !probe.reachable(node).await {
            return Err(format!(
                "the pod watch lost the API server, which does not respond to a list of pods{cause}"
            ));
        }
        return Ok(());
    }
    if let Some(vault) = &state.backends.vault {
        vault_usable(vault, probe).await?;
    }
    if let Some(http) = &state.backends.http {
        if let Some(outage) = http.outage() {
            return Err(outage_reason("the HTTP secrets API", &outage));
        }
        if let Some(error) = http.credential_rejection() {
            return Err(format!("the HTTP secrets backend is unusable: {error}"));
        }
    }
    if let Some(kube) = &state.backends.kube {
        if let Some(outage) = kube.outage() {
            return Err(outage_reason("the Kubernetes API server", &outage));
        }
        if let Some(error) = kube.credential_rejection() {
            return Err(format!(
                "the Kubernetes Secrets backend is unusable: {error}"
            ));
        }
    }
    Ok(())
}

/// Returns why the local-mode Vault backend is unusable, probing `sys/health` during an outage
/// at most every [`PROBE_INTERVAL`].
async fn vault_usable(vault: &VaultBackend, probe: &mut Probe) -> Result<(), String> {
    let mut status = vault.status();
    if !status.logged_in && vault.login_found_unavailable() && probe.vault_due() {
        // The login failed because Vault was down (for example when the agent started). No
        // request may come to log in again, so log in once `sys/health` finds Vault back.
        match probe_vault(vault).await {
            Ok(()) => match vault.login().await {
                Ok(()) => status = vault.status(),
                Err(err) => tracing::debug!(%err, "Vault login after a successful probe failed"),
            },
            Err(err) => tracing::debug!(%err, "Vault probe failed"),
        }
    }
    if !status.logged_in {
        let error = status
            .last_error
            .unwrap_or_else(|| "no login has completed yet".to_string());
        return Err(format!("the agent is not logged in to Vault: {error}"));
    }
    let Some(outage) = vault.outage() else {
        probe.vault_latest = None;
        return Ok(());
    };
    // The first probe waits a whole interval, so that a failed read shows in the status even
    // when `sys/health` succeeds at once.
    if outage.duration >= PROBE_INTERVAL && probe.vault_due() {
        match probe_vault(vault).await {
            Ok(()) => return Ok(()),
            Err(err) => tracing::debug!(%err, "Vault probe failed"),
        }
    }
    match vault.outage() {
        Some(outage) => Err(outage_reason("Vault", &outage)),
        None => Ok(()),
    }
}

/// Probes Vault's `sys/health` within [`PROBE_TIMEOUT`].
async fn probe_vault(vault: &VaultBackend) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, vault.probe()).await {
        Ok(result) => result.map_err(|err| err.to_string()),
        Err(_) => Err(format!(
            "the probe timed out after {} ms",
            PROBE_TIMEOUT.as_millis()
        )),
    }
}

fn outage_reason(source: &str, outage: &Outage) -> String {
    format!(
        "{source} has been unavailable for {} s: {}",
        outage.duration.as_secs(),
        outage.error
    )
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
    let result = evaluate(state, probe).await;
    let serving = result.is_ok();
    state.health.serving.store(serving, Ordering::Relaxed);
    let reason = result.err();
    *state
        .health
        .reason
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = reason.clone();
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
        match &reason {
            Some(reason) => tracing::warn!(serving, %reason, "agent health changed"),
            None => tracing::info!(serving, "agent health changed"),
        }
    }
    *reported = Some(serving);
}
