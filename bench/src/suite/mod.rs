//! The benchmarks, the sizes they run at and the servers they share.

mod getenv;
mod java;
mod memory;
mod node;
mod observed;
mod round_trip;
mod startup;
mod vault;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use clap::ValueEnum;

use crate::affinity;
use crate::binaries::Binaries;
use crate::cgroups;
use crate::cluster::NodeCluster;
use crate::fixture::{self, LibrarySettings, Workspace};
use crate::harness::Harness;
use crate::report::Row;
use crate::service::Service;
use crate::vault::VaultServer;

/// Cache TTL of the Vault agent's entries: longer than any benchmark, so every measured
/// request after the first read of an entry is served from the cache.
const VAULT_CACHE_TTL: &str = "1h";

/// The benchmarks of node mode, as error messages name them.
pub const NODE_BENCHMARKS: &str = "the node-mode benchmarks (node-first-request, \
                                   node-later-requests, node-deployment)";

/// The benchmarks, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Benchmark {
    /// 1: getenv of a plain variable, with and without the library.
    GetenvPlain,
    /// 2: getenv of a reference from the in-process cache, against a plain getenv.
    GetenvCached,
    /// 3: getenv of a reference that goes to the agent every time, against an echo round trip.
    UncachedLatency,
    /// 4: agent throughput over 64 connections, against the echo server.
    Throughput,
    /// 5: resident memory growth over many getenv calls of references.
    Memory,
    /// 6: `python3 -c pass` under `envproxy run`, against plain `python3 -c pass`.
    PythonStartup,
    /// 7: Vault reads for one entry under 64 concurrent connections, against the requests made.
    VaultReads,
    /// 8: agent latency of a cached Vault entry, against a cached entry of the secrets file.
    VaultCachedLatency,
    /// 9: the first request on a new connection in node mode, against local mode (root).
    NodeFirstRequest,
    /// 10: later requests on one connection in node mode, against local mode (root).
    NodeLaterRequests,
    /// 11: Vault logins, reads and agent memory for 100 pods of one Deployment (root).
    NodeDeployment,
    /// 12: agent throughput while one client follows the audit stream, against none.
    AuditStream,
    /// 13: agent throughput while its metrics are scraped, against an agent without them.
    MetricsScrape,
    /// 14: a JVM start with the Java hook, against one without it.
    JavaStartup,
    /// 15: `System.getenv` of a cached reference, against a plain variable.
    JavaGetenv,
    /// 16: Perl, Ruby and Node.js start under `envproxy run`, against each started plainly.
    InterpreterStartup,
}

impl Benchmark {
    pub const ALL: [Benchmark; 16] = [
        Benchmark::GetenvPlain,
        Benchmark::GetenvCached,
        Benchmark::UncachedLatency,
        Benchmark::Throughput,
        Benchmark::Memory,
        Benchmark::PythonStartup,
        Benchmark::VaultReads,
        Benchmark::VaultCachedLatency,
        Benchmark::NodeFirstRequest,
        Benchmark::NodeLaterRequests,
        Benchmark::NodeDeployment,
        Benchmark::AuditStream,
        Benchmark::MetricsScrape,
        Benchmark::JavaStartup,
        Benchmark::JavaGetenv,
        Benchmark::InterpreterStartup,
    ];

    /// Returns whether the benchmark places clients in pod cgroups, which needs root.
    pub fn needs_root(self) -> bool {
        matches!(
            self,
            Benchmark::NodeFirstRequest | Benchmark::NodeLaterRequests | Benchmark::NodeDeployment
        )
    }
}

/// How many times and how long each benchmark measures.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rounds per figure. Each round measures both sides, and the table shows the median.
    pub rounds: usize,
    /// getenv calls per loop (benchmarks 1, 2 and 5).
    pub getenv_calls: u64,
    /// getenv calls per run of benchmark 5 without the cache, each a request to the agent.
    pub uncached_memory_calls: u64,
    /// Timed round trips per latency run (benchmark 3), and per side of benchmarks 8 and 10.
    pub latency_samples: u64,
    /// Client connections of the throughput benchmark and of benchmark 7.
    pub connections: usize,
    /// Requests each connection of benchmark 7 sends for the same Vault entry.
    pub vault_requests_per_connection: u64,
    pub throughput_warm_up: Duration,
    pub throughput_duration: Duration,
    /// Runs of each command in the startup benchmark.
    pub startup_runs: usize,
    /// New connections per side and round of benchmark 9.
    pub node_first_requests: u64,
    /// Pods of the Deployment of benchmark 11.
    pub deployment_pods: usize,
    /// Client processes of benchmark 11, spread over its pods in turn.
    pub deployment_processes: usize,
    /// Client processes of benchmark 11 that run at the same time.
    pub deployment_parallelism: usize,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            rounds: 5,
            getenv_calls: 10_000_000,
            uncached_memory_calls: 100_000,
            latency_samples: 20_000,
            connections: 64,
            vault_requests_per_connection: 100,
            throughput_warm_up: Duration::from_millis(500),
            throughput_duration: Duration::from_secs(3),
            startup_runs: 20,
            node_first_requests: 2_000,
            deployment_pods: 100,
            deployment_processes: 1_000,
            deployment_parallelism: 16,
        }
    }

    /// Fewer and shorter measurements, for a check that everything runs.
    pub fn quick() -> Plan {
        Plan {
            rounds: 3,
            getenv_calls: 1_000_000,
            uncached_memory_calls: 20_000,
            latency_samples: 2_000,
            connections: 64,
            vault_requests_per_connection: 20,
            throughput_warm_up: Duration::from_millis(200),
            throughput_duration: Duration::from_secs(1),
            startup_runs: 6,
            node_first_requests: 200,
            deployment_pods: 100,
            deployment_processes: 200,
            deployment_parallelism: 16,
        }
    }
}

/// Everything the benchmarks share: the plan, the build outputs, the temporary directory and
/// the servers, which start on first use and stop when the suite is dropped.
pub struct Suite {
    plan: Plan,
    binaries: Binaries,
    harness: Harness,
    agent: Option<Service>,
    echo: Option<Service>,
    /// The agent that serves both the secrets file and Vault, for benchmark 7.
    vault_agent: Option<Service>,
    // Declared after the agents that read from it.
    vault: Option<VaultServer>,
    /// The kube test server and the pods of benchmarks 9 to 11. Their agents and clients have
    /// stopped by the time it is dropped, so its cgroups are empty.
    node: Option<NodeCluster>,
    /// The Java program of benchmarks 14 and 15, compiled on first use.
    java: Option<java::JavaBench>,
    // Declared last so that it is dropped after the servers whose sockets it contains.
    workspace: Workspace,
}

impl Suite {
    /// Creates the temporary directory and compiles the C client.
    pub fn prepare(plan: Plan, binaries: Binaries) -> anyhow::Result<Suite> {
        let workspace = Workspace::create()?;
        let harness = Harness::compile(workspace.dir())?;
        Ok(Suite {
            plan,
            binaries,
            harness,
            agent: None,
            echo: None,
            vault_agent: None,
            vault: None,
            node: None,
            java: None,
            workspace,
        })
    }

    /// Runs one benchmark and returns its rows.
    pub fn run(&mut self, benchmark: Benchmark) -> anyhow::Result<Vec<Row>> {
        tracing::info!(?benchmark, "running");
        let rows = match benchmark {
            Benchmark::GetenvPlain => getenv::plain(self)?,
            Benchmark::GetenvCached => getenv::cached(self)?,
            Benchmark::UncachedLatency => round_trip::latency(self)?,
            Benchmark::Throughput => round_trip::throughput(self)?,
            Benchmark::Memory => memory::growth(self)?,
            Benchmark::PythonStartup => startup::python(self)?,
            Benchmark::VaultReads => vault::reads(self)?,
            Benchmark::VaultCachedLatency => vault::cached_latency(self)?,
            Benchmark::NodeFirstRequest => node::first_request(self)?,
            Benchmark::NodeLaterRequests => node::later_requests(self)?,
            Benchmark::NodeDeployment => node::deployment(self)?,
            Benchmark::AuditStream => observed::audit_stream(self)?,
            Benchmark::MetricsScrape => observed::metrics_scrape(self)?,
            Benchmark::JavaStartup => java::startup(self)?,
            Benchmark::JavaGetenv => java::getenv(self)?,
            Benchmark::InterpreterStartup => startup::interpreters(self)?,
        };
        // A server that died during the benchmark may have produced wrong figures.
        if let Some(agent) = &mut self.agent {
            agent.check_running()?;
        }
        if let Some(echo) = &mut self.echo {
            echo.check_running()?;
        }
        if let Some(vault_agent) = &mut self.vault_agent {
            vault_agent.check_running()?;
        }
        Ok(rows)
    }

    /// Returns the socket of the shared agent, starting it on first use.
    fn agent_socket(&mut self) -> anyhow::Result<&Path> {
        if self.agent.is_none() {
            self.agent = Some(self.start_agent("agent", None)?);
        }
        Ok(self.agent.as_ref().expect("started above").socket())
    }

    /// Returns the socket of the shared echo server, starting it on first use.
    fn echo_socket(&mut self) -> anyhow::Result<&Path> {
        if self.echo.is_none() {
            self.echo = Some(self.start_echo("echo", None)?);
        }
        Ok(self.echo.as_ref().expect("started above").socket())
    }

    /// Returns the Vault test server, starting it on first use.
    fn vault_server(&mut self) -> anyhow::Result<&VaultServer> {
        if self.vault.is_none() {
            self.vault = Some(VaultServer::start()?);
        }
        Ok(self.vault.as_ref().expect("started above"))
    }

    /// Returns the socket of the shared agent with Vault, starting it and the Vault test
    /// server on first use.
    fn vault_agent_socket(&mut self) -> anyhow::Result<&Path> {
        if self.vault_agent.is_none() {
            self.vault_agent = Some(self.start_vault_agent("vault-agent", None)?);
        }
        Ok(self.vault_agent.as_ref().expect("started above").socket())
    }

    /// Starts an agent on `<name>.sock` that serves `envproxy:` references from the
    /// benchmark's secrets file and `vault:` references from the Vault test server, on one CPU
    /// if `cpu` is set.
    fn start_vault_agent(&mut self, name: &str, cpu: Option<usize>) -> anyhow::Result<Service> {
        let config_path = self.workspace.path("vault-agent.toml");
        let secrets_file = self.workspace.secrets_file();
        let vault = self.vault_server()?;
        let config = vault.write_agent_config(&config_path, &secrets_file, VAULT_CACHE_TTL)?;
        let token = vault.token().to_string();
        let socket = self.workspace.path(&format!("{name}.sock"));
        let mut command = Command::new(&self.binaries.agent);
        command
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .env("VAULT_TOKEN", token);
        if let Some(cpu) = cpu {
            affinity::pin(&mut command, cpu);
        }
        let log = self.workspace.path(&format!("{name}.log"));
        Service::start("envproxy-agent with Vault", command, &socket, &log)
    }

    /// Returns the Java program of benchmarks 14 and 15, compiling it on first use.
    fn java_bench(&mut self) -> anyhow::Result<&java::JavaBench> {
        if self.java.is_none() {
            self.java = Some(java::JavaBench::compile(
                self.workspace.dir(),
                &self.binaries.library,
            )?);
        }
        Ok(self.java.as_ref().expect("compiled above"))
    }

    /// Returns the node of the node-mode benchmarks, starting the kube test server on first
    /// use. Fails unless this process runs as root.
    fn node_cluster(&mut self) -> anyhow::Result<&mut NodeCluster> {
        if self.node.is_none() {
            cgroups::require_root(NODE_BENCHMARKS)?;
            self.node = Some(NodeCluster::start(&self.workspace.path("node"))?);
        }
        Ok(self.node.as_mut().expect("started above"))
    }

    /// Starts an agent in node mode on `<name>.sock` that serves the pods of the benchmark's
    /// node and reads the Vault test server, on one CPU if `cpu` is set.
    fn start_node_agent(&mut self, name: &str, cpu: Option<usize>) -> anyhow::Result<Service> {
        let vault_url = self.vault_server()?.url();
        let socket = self.workspace.path(&format!("{name}.sock"));
        let config_path = self.workspace.path(&format!("{name}.toml"));
        let cluster = self.node_cluster()?;
        let config = cluster.write_agent_config(&config_path, &socket, &vault_url)?;
        let mut command = Command::new(&self.binaries.agent);
        command.arg("--config").arg(&config).env_remove("NODE_NAME");
        if let Some(cpu) = cpu {
            affinity::pin(&mut command, cpu);
        }
        let log = self.workspace.path(&format!("{name}.log"));
        Service::start("envproxy-agent in node mode", command, &socket, &log)
    }

    /// Starts an agent on `<name>.sock`, serving the benchmark's secrets file, on one CPU if
    /// `cpu` is set.
    fn start_agent(&self, name: &str, cpu: Option<usize>) -> anyhow::Result<Service> {
        let socket = self.workspace.path(&format!("{name}.sock"));
        let mut command = Command::new(&self.binaries.agent);
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--secrets")
            .arg(self.workspace.secrets_file());
        if let Some(cpu) = cpu {
            affinity::pin(&mut command, cpu);
        }
        let log = self.workspace.path(&format!("{name}.log"));
        Service::start("envproxy-agent", command, &socket, &log)
    }

    /// Starts an echo server on `<name>.sock`, on one CPU if `cpu` is set. Its replies are as
    /// long as the agent's reply for [`fixture::REFERENCE_VARIABLE`].
    fn start_echo(&self, name: &str, cpu: Option<usize>) -> anyhow::Result<Service> {
        let socket = self.workspace.path(&format!("{name}.sock"));
        let reply_len = fixture::secret_value(fixture::REFERENCE_VARIABLE).len();
        let mut command = Command::new(&self.binaries.bench);
        command
            .arg("serve-echo")
            .arg("--socket")
            .arg(&socket)
            .arg("--reply-len")
            .arg(reply_len.to_string());
        if let Some(cpu) = cpu {
            affinity::pin(&mut command, cpu);
        }
        let log = self.workspace.path(&format!("{name}.log"));
        Service::start("echo server", command, &socket, &log)
    }

    /// Returns the C client's environment, with the library loaded or not, pointing it at the
    /// shared agent's socket.
    fn environment(&self, library: bool, cache_ttl_secs: u64) -> Vec<(String, String)> {
        self.environment_for(&self.workspace.path("agent.sock"), library, cache_ttl_secs)
    }

    fn environment_for(
        &self,
        socket: &Path,
        library: bool,
        cache_ttl_secs: u64,
    ) -> Vec<(String, String)> {
        fixture::environment(&LibrarySettings {
            library: library.then_some(self.binaries.library.as_path()),
            socket,
            cache_ttl_secs,
        })
    }
}

/// Runs `with` and `baseline` once per round, alternating which goes first so that slow drift
/// of the machine (frequency, other load) affects both sides alike.
fn alternate<T>(
    rounds: usize,
    mut with: impl FnMut() -> anyhow::Result<T>,
    mut baseline: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<T>, Vec<T>)> {
    let mut with_results = Vec::with_capacity(rounds);
    let mut baseline_results = Vec::with_capacity(rounds);
    for round in 0..rounds {
        if round % 2 == 0 {
            with_results.push(with()?);
            baseline_results.push(baseline()?);
        } else {
            baseline_results.push(baseline()?);
            with_results.push(with()?);
        }
    }
    Ok((with_results, baseline_results))
}
