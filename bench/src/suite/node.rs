//! Benchmarks 9 to 11: the agent in node mode, which identifies every caller from the kernel
//! and reads Vault with the caller's pod identity, against an agent in local mode serving the
//! same value. The clients run as processes of test pods: in a pod's container cgroup, with the
//! pod's projected token mounted where the agent looks for it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::json;

use crate::affinity;
use crate::cluster::{TestPod, Workload};
use crate::fixture::{self, LibrarySettings, REFERENCE_VARIABLE};
use crate::harness::Output;
use crate::report::{Figure, Row, Target, Unit};
use crate::service::Service;
use crate::suite::vault::{reference, KEY};
use crate::suite::Suite;

/// Path prefix of the node benchmarks' Vault secrets, which their Vault roles may read.
const PATH_PREFIX: &str = "node/";
/// Agent cache TTL of every test pod (`envproxy.dev/vault-cache-ttl`), longer than any run.
const POD_VAULT_CACHE_TTL: &str = "1h";
/// Agent memory that benchmark 11 allows after serving its Deployment, in KiB (30 MiB).
const DEPLOYMENT_RSS_LIMIT_KIB: f64 = 30.0 * 1024.0;

/// The pods of benchmarks 9 and 10: namespace `shop`, service account and Vault role `web`.
const WEB: PodIdentity = PodIdentity {
    namespace: "shop",
    service_account: "web",
};
/// The Deployment of benchmark 11, another identity, so it starts without a Vault session.
const CHECKOUT: PodIdentity = PodIdentity {
    namespace: "store",
    service_account: "checkout",
};

/// The namespace and service account of test pods. The Vault role has the service account's
/// name, the agent's default when a pod sets no `envproxy.dev/vault-role`.
struct PodIdentity {
    namespace: &'static str,
    service_account: &'static str,
}

/// Benchmark 9: the first request on a new connection. The node-mode agent identifies the
/// caller (pidfd, cgroup, pod, policy), reads and checks the pod's token, and finds the
/// identity's Vault session, before it serves the cached entry. The local-mode agent checks
/// only the caller's uid before it serves its own cached entry of the same value.
pub fn first_request(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let count = suite.plan.node_first_requests;
    let outputs = paired_runs(suite, "first-request", count)?;
    Ok(vec![
        Row::new(
            "node-first-request-p50",
            "9 first request on a new connection p50, node vs local mode",
            microseconds(&outputs, "with_p50_ns")?,
            Some(microseconds(&outputs, "baseline_p50_ns")?),
            Some(Target::RatioAtMost(2.0)),
        ),
        Row::new(
            "node-first-request-p99",
            "9 first request on a new connection p99, node vs local mode",
            microseconds(&outputs, "with_p99_ns")?,
            Some(microseconds(&outputs, "baseline_p99_ns")?),
            None,
        ),
    ])
}

/// Benchmark 10: requests after the first on one connection. The node-mode agent checks that the
/// pod is still on the node, applies the policy and finds the identity's Vault session, but
/// reads no token.
pub fn later_requests(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let count = suite.plan.latency_samples;
    let outputs = paired_runs(suite, "later-requests", count)?;
    Ok(vec![
        Row::new(
            "node-later-requests-p50",
            "10 later requests on one connection p50, node vs local mode",
            microseconds(&outputs, "with_p50_ns")?,
            Some(microseconds(&outputs, "baseline_p50_ns")?),
            Some(Target::RatioAtMost(1.1)),
        ),
        Row::new(
            "node-later-requests-p99",
            "10 later requests on one connection p99, node vs local mode",
            microseconds(&outputs, "with_p99_ns")?,
            Some(microseconds(&outputs, "baseline_p99_ns")?),
            None,
        ),
    ])
}

/// Runs the C client's `mode` (`first-request` or `later-requests`) once per round, inside the
/// pod `web-<mode>-0`, against a node-mode agent and a local-mode agent that both serve the same value
/// from their caches. Both agents and the client run on one CPU, as in benchmark 3.
fn paired_runs(suite: &mut Suite, mode: &str, count: u64) -> anyhow::Result<Vec<Output>> {
    suite.node_cluster()?;
    let cpu = affinity::first_allowed_cpu()?;
    let path = format!("{PATH_PREFIX}{mode}");
    let reference = prepare_secret(suite, &WEB, &path)?;
    let env = [(REFERENCE_VARIABLE, reference.as_str())];
    let workload_name = format!("web-{mode}");
    let workload = workload(&workload_name, &WEB, &env);
    let pod = suite.node_cluster()?.add_pod(&workload, 0)?;
    let node_agent = suite.start_node_agent(&format!("node-agent-{mode}"), Some(cpu))?;
    let local_agent = suite.start_vault_agent(&format!("local-agent-{mode}"), Some(cpu))?;

    // The client sends raw v2 frames, so the library stays out of its environment.
    let environment = client_environment(suite, node_agent.socket(), &reference, false);
    let node_socket = socket_arg(node_agent.socket())?;
    let local_socket = socket_arg(local_agent.socket())?;
    let count = count.to_string();
    let value = fixture::secret_value(REFERENCE_VARIABLE);
    let args = [
        mode,
        node_socket,
        local_socket,
        REFERENCE_VARIABLE,
        value,
        &count,
    ];
    let cluster = suite
        .node
        .as_ref()
        .context("bug: the node cluster starts before its pods")?;
    let mut outputs = Vec::with_capacity(suite.plan.rounds);
    for _ in 0..suite.plan.rounds {
        let output = suite
            .harness
            .run_configured(&args, &environment, |command| {
                affinity::pin(command, cpu);
                cluster.enter(&pod, command)
            })
            .with_context(|| format!("the {mode} client in pod {} failed", pod.name))?;
        outputs.push(output);
    }
    check_running(node_agent, local_agent)?;
    Ok(outputs)
}

/// Benchmark 11: one Deployment of many pods with one Vault identity, whose short-lived client
/// processes each resolve the same `vault:` reference once through the library, within one
/// cache TTL. Counts the Vault logins and reads, and the agent's resident memory afterwards.
pub fn deployment(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    suite.node_cluster()?;
    let plan = suite.plan.clone();
    let path = format!("{PATH_PREFIX}deployment");
    let reference = prepare_secret(suite, &CHECKOUT, &path)?;
    let env = [(REFERENCE_VARIABLE, reference.as_str())];
    let workload = workload("checkout", &CHECKOUT, &env);
    let cluster = suite.node_cluster()?;
    let pods = (0..plan.deployment_pods)
        .map(|index| cluster.add_pod(&workload, index))
        .collect::<anyhow::Result<Vec<TestPod>>>()?;
    let mut agent = suite.start_node_agent("node-agent-deployment", None)?;
    let resident_at_start = resident_kib(agent.pid())?;

    let vault = suite
        .vault
        .as_ref()
        .context("bug: the Vault test server starts before its agents")?;
    let logins_before = vault.kubernetes_logins();
    let reads_before = vault.reads(&path);
    let environment = client_environment(suite, agent.socket(), &reference, true);
    tracing::info!(
        processes = plan.deployment_processes,
        pods = plan.deployment_pods,
        parallelism = plan.deployment_parallelism,
        "starting the Deployment's client processes"
    );
    let started = Instant::now();
    run_deployment_clients(suite, &pods, &environment)?;
    let elapsed = started.elapsed();
    agent.check_running()?;
    let resident_after = resident_kib(agent.pid())?;
    let logins = vault.kubernetes_logins() - logins_before;
    let reads = vault.reads(&path) - reads_before;
    drop(agent);

    let processes = plan.deployment_processes as f64;
    let label = format!(
        "{} processes in {} pods, {} at a time",
        plan.deployment_processes, plan.deployment_pods, plan.deployment_parallelism
    );
    Ok(vec![
        Row::absolute(
            "node-deployment-logins",
            format!("11 Vault logins, {label}"),
            Figure::new(logins as f64, Unit::Count),
            Some(Figure::new(processes, Unit::Count)),
            Some(Target::ValueEquals(1.0)),
        ),
        Row::absolute(
            "node-deployment-reads",
            format!("11 Vault reads per (path, TTL), {label}"),
            Figure::new(reads as f64, Unit::Count),
            Some(Figure::new(processes, Unit::Count)),
            Some(Target::ValueEquals(1.0)),
        ),
        Row::absolute(
            "node-deployment-rss",
            "11 node agent VmRSS after the Deployment, against at start",
            Figure::new(resident_after, Unit::Kibibytes),
            Some(Figure::new(resident_at_start, Unit::Kibibytes)),
            Some(Target::ValueAtMost(DEPLOYMENT_RSS_LIMIT_KIB)),
        ),
        Row::absolute(
            "node-deployment-wall",
            format!("11 wall time of {label}"),
            Figure::new(elapsed.as_secs_f64() * 1000.0, Unit::Milliseconds),
            None,
            None,
        ),
    ])
}

/// Runs the client processes of benchmark 11, `deployment_parallelism` at a time. Process `i`
/// runs in pod `i mod pods`. The first failure stops the processes not yet started.
fn run_deployment_clients(
    suite: &Suite,
    pods: &[TestPod],
    environment: &[(String, String)],
) -> anyhow::Result<()> {
    let cluster = suite
        .node
        .as_ref()
        .context("bug: the node cluster starts before its pods")?;
    let value = fixture::secret_value(REFERENCE_VARIABLE);
    let args = ["get", REFERENCE_VARIABLE, value];
    let total = suite.plan.deployment_processes;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let run_one = |index: usize| -> anyhow::Result<()> {
        let pod = &pods[index % pods.len()];
        let output = suite
            .harness
            .run_configured(&args, environment, |command| cluster.enter(pod, command))
            .with_context(|| format!("client process {index} in pod {} failed", pod.name))?;
        if output.number("resolved")? != 1.0 {
            bail!(
                "client process {index} in pod {} resolved nothing",
                pod.name
            );
        }
        Ok(())
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..suite.plan.deployment_parallelism)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= total || failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        if let Err(err) = run_one(index) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(err);
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(result) => result?,
                Err(_) => bail!("a client thread of the Deployment panicked"),
            }
        }
        Ok(())
    })
}

/// Writes the benchmark secret at `path` and lets `identity`'s Vault role read it. Returns the
/// `vault:` reference of the secret.
fn prepare_secret(suite: &mut Suite, identity: &PodIdentity, path: &str) -> anyhow::Result<String> {
    let vault = suite.vault_server()?;
    vault.put(path, KEY, fixture::secret_value(REFERENCE_VARIABLE))?;
    vault.add_kubernetes_role(
        identity.service_account,
        identity.namespace,
        identity.service_account,
        PATH_PREFIX,
    )?;
    Ok(reference(path))
}

/// Returns the workload `name` of `identity`, opted in, whose container declares `env`.
fn workload<'a>(
    name: &'a str,
    identity: &PodIdentity,
    env: &'a [(&'a str, &'a str)],
) -> Workload<'a> {
    Workload {
        name,
        namespace: identity.namespace,
        service_account: identity.service_account,
        annotations: json!({
            "envproxy.dev/inject": "true",
            "envproxy.dev/vault-cache-ttl": POD_VAULT_CACHE_TTL,
        }),
        env,
    }
}

/// Returns the benchmark environment of 30 variables, with [`REFERENCE_VARIABLE`] set to
/// `reference`, as the pod's spec declares it, and the library on or off.
fn client_environment(
    suite: &Suite,
    socket: &Path,
    reference: &str,
    library: bool,
) -> Vec<(String, String)> {
    let mut environment = fixture::environment(&LibrarySettings {
        library: library.then_some(suite.binaries.library.as_path()),
        socket,
        cache_ttl_secs: 30,
    });
    for (name, value) in &mut environment {
        if name == REFERENCE_VARIABLE {
            *value = reference.to_string();
        }
    }
    environment
}

fn socket_arg(socket: &Path) -> anyhow::Result<&str> {
    socket
        .to_str()
        .with_context(|| format!("the socket path {} is not UTF-8", socket.display()))
}

/// Fails when either agent exited during the measurement, then stops both.
fn check_running(mut node_agent: Service, mut local_agent: Service) -> anyhow::Result<()> {
    node_agent.check_running()?;
    local_agent.check_running()?;
    Ok(())
}

/// Returns the resident memory of process `pid` (`VmRSS` of `/proc/PID/status`), in KiB.
fn resident_kib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("{path} has no valid VmRSS line"))
}

/// Returns the `VmRSS` of a `/proc/PID/status` text, in KiB (the kernel writes `kB`, meaning
/// KiB).
fn parse_vm_rss(status: &str) -> Option<f64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: f64 = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(value)
}

fn microseconds(outputs: &[Output], key: &str) -> anyhow::Result<Figure> {
    let values = outputs
        .iter()
        .map(|output| output.number(key).map(|ns| ns / 1000.0))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(Figure::median_of(values, Unit::Microseconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tenvproxy-agent\nVmHWM:\t   14000 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(parse_vm_rss(status), Some(12345.0));
    }

    #[test]
    fn vm_rss_missing_or_invalid() {
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tmany kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn own_resident_memory_is_positive() {
        let resident = resident_kib(std::process::id()).unwrap();
        assert!(resident > 0.0);
    }
}
