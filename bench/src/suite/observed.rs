//! Benchmarks 12 and 13: agent throughput while an operator observes it, through the audit
//! stream or the metrics listener, against the same throughput unobserved.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use envproxy_proto::Request;

use crate::fixture::{self, REFERENCE_VARIABLE};
use crate::load::{self, Load};
use crate::observe::{self, AuditWatcher, Scraper};
use crate::report::{Figure, Row, Target, Unit};
use crate::service::Service;
use crate::stats;
use crate::suite::{alternate, Suite};

/// Rounds of benchmarks 12 and 13 per round of the others: the two sides differ by a few
/// percent at most, so more rounds are needed to see it through the noise of the machine.
const ROUNDS_FACTOR: usize = 2;
/// Interval between two scrapes in benchmark 13, far shorter than Prometheus's default
/// `scrape_interval` of one minute, so that the scrape's own cost shows.
const SCRAPE_INTERVAL: Duration = Duration::from_millis(100);

/// Benchmark 12: throughput of one agent while one client follows its audit stream, against
/// the same agent with no watcher, in interleaved rounds.
pub fn audit_stream(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let agent = start_observable_agent(suite, "audit-agent", None)?;
    let admin_socket = agent
        .socket()
        .parent()
        .context("the agent socket has no directory")?
        .join("admin/admin.sock");
    let request = benchmark_request();
    let mut followed_events = 0;
    let mut dropped_events = 0;
    let rounds = suite.plan.rounds * ROUNDS_FACTOR;
    let (with, without) = alternate(
        rounds,
        || {
            crate::interrupt::check()?;
            let watcher = AuditWatcher::start(&admin_socket)?;
            let rate = run_load(suite, agent.socket(), &request)?;
            let followed = watcher.stop()?;
            followed_events += followed.events;
            dropped_events += followed.dropped;
            Ok(rate)
        },
        || {
            crate::interrupt::check()?;
            run_load(suite, agent.socket(), &request)
        },
    )?;
    if followed_events == 0 {
        bail!("the audit watcher received no events, so benchmark 12 measured no audit stream");
    }
    tracing::info!(
        followed_events,
        dropped_events,
        "audit watcher received the events of benchmark 12"
    );
    Ok(vec![Row::new(
        "audit-stream",
        format!(
            "12 throughput, one audit watcher (round ratios {})",
            ratio_spread(&with, &without)
        ),
        Figure::median_of(with, Unit::RequestsPerSecond),
        Some(Figure::median_of(without, Unit::RequestsPerSecond)),
        Some(Target::RatioAtLeast(0.9)),
    )])
}

/// Benchmark 13: throughput of an agent whose metrics listener is scraped every
/// [`SCRAPE_INTERVAL`], against an agent without the listener, in interleaved rounds.
pub fn metrics_scrape(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let address = observe::free_loopback_address()?;
    let observed = start_observable_agent(suite, "metrics-agent", Some(address))?;
    let plain = suite.start_agent("plain-agent", None)?;
    observe::scrape(address)?;
    let request = benchmark_request();
    let mut scrapes = 0;
    let rounds = suite.plan.rounds * ROUNDS_FACTOR;
    let (with, without) = alternate(
        rounds,
        || {
            crate::interrupt::check()?;
            let scraper = Scraper::start(address, SCRAPE_INTERVAL);
            let rate = run_load(suite, observed.socket(), &request)?;
            scrapes += scraper.stop()?;
            Ok(rate)
        },
        || {
            crate::interrupt::check()?;
            run_load(suite, plain.socket(), &request)
        },
    )?;
    tracing::info!(scrapes, "metrics scrapes during benchmark 13");
    Ok(vec![Row::new(
        "metrics-scrape",
        format!(
            "13 throughput, metrics scraped every {} ms (round ratios {})",
            SCRAPE_INTERVAL.as_millis(),
            ratio_spread(&with, &without)
        ),
        Figure::median_of(with, Unit::RequestsPerSecond),
        Some(Figure::median_of(without, Unit::RequestsPerSecond)),
        None,
    )])
}

/// Starts an agent on `<name>.sock` that serves the benchmark's secrets file with its admin
/// socket on (`admin/admin.sock` beside the agent socket) and, with `metrics`, its metrics
/// listener on that address.
fn start_observable_agent(
    suite: &Suite,
    name: &str,
    metrics: Option<SocketAddr>,
) -> anyhow::Result<Service> {
    let dir = suite.workspace.path(name);
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let socket = dir.join("agent.sock");
    let quote = |path: &Path| serde_json::to_string(&path.display().to_string());
    let mut text = format!(
        "[backend]\npath = {}\n\n[admin]\nenabled = true\n",
        quote(&suite.workspace.secrets_file())?
    );
    if let Some(address) = metrics {
        text.push_str(&format!("\n[metrics]\nlisten = \"{address}\"\n"));
    }
    let config = dir.join("agent.toml");
    std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    let mut command = Command::new(&suite.binaries.agent);
    command
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(&socket);
    let log = suite.workspace.path(&format!("{name}.log"));
    Service::start(
        "envproxy-agent with the admin socket",
        command,
        &socket,
        &log,
    )
}

fn benchmark_request() -> Request {
    Request::V2 {
        key: REFERENCE_VARIABLE.as_bytes().to_vec(),
        value: fixture::reference(REFERENCE_VARIABLE).into_bytes(),
    }
}

/// Runs the throughput load of benchmark 4 against `socket` and returns requests per second.
fn run_load(suite: &Suite, socket: &Path, request: &Request) -> anyhow::Result<f64> {
    let plan = &suite.plan;
    load::requests_per_second(&Load {
        socket,
        connections: plan.connections,
        request,
        expected_payload: fixture::secret_value(REFERENCE_VARIABLE).as_bytes(),
        warm_up: plan.throughput_warm_up,
        duration: plan.throughput_duration,
    })
}

/// Formats the range and median of the per-round ratios `with[i] / without[i]`, such as
/// `0.94 to 1.01, median 0.97`.
fn ratio_spread(with: &[f64], without: &[f64]) -> String {
    let ratios: Vec<f64> = with
        .iter()
        .zip(without)
        .map(|(with, without)| with / without)
        .collect();
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    format!(
        "{low:.2} to {:.2}, median {:.2}",
        stats::max(&ratios),
        stats::median(&ratios)
    )
}
