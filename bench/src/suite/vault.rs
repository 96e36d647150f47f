//! Benchmarks 7 and 8: the agent's cache of Vault secrets, read from the Vault test server that
//! runs inside this process.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use envproxy_proto::Request;

use crate::affinity;
use crate::fixture::{self, REFERENCE_VARIABLE};
use crate::interrupt;
use crate::load::{self, Exchange};
use crate::report::{Figure, Row, Target, Unit};
use crate::stats;
use crate::suite::Suite;
use crate::vault::KV2_MOUNT;

/// Path prefix of the benchmark's Vault secrets.
const PATH_PREFIX: &str = "bench/";
/// The key of every Vault secret of the benchmark.
pub(super) const KEY: &str = "value";
/// Latency added to every Vault read of benchmark 7. A read from a Vault across a network
/// takes milliseconds, so requests that arrive together meet a read still in flight.
const READ_LATENCY: Duration = Duration::from_millis(5);
/// Untimed request pairs before each latency run of benchmark 8.
const LATENCY_WARM_UP: u64 = 1000;

/// Returns the `vault:` reference of `key` in the KV v2 secret at `path`.
pub(super) fn reference(path: &str) -> String {
    format!("vault:{KV2_MOUNT}/data/{path}#{KEY}")
}

/// Benchmark 7: Vault reads for one (path, TTL) entry while 64 connections request it at once
/// and then repeatedly, within one cache TTL, against the number of requests made.
///
/// Each round writes a secret at a new path, so it starts with an entry that no client has read,
/// and counts the `GET` requests of that path that reached the Vault test server.
pub fn reads(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let socket = suite.vault_agent_socket()?.to_path_buf();
    let vault = suite
        .vault
        .as_ref()
        .context("bug: the Vault test server starts before its agent")?;
    vault.delay_reads(PATH_PREFIX, READ_LATENCY);
    let value = fixture::secret_value(REFERENCE_VARIABLE);
    let plan = &suite.plan;

    let mut reads = Vec::with_capacity(plan.rounds);
    let mut requests = Vec::with_capacity(plan.rounds);
    for round in 0..plan.rounds {
        interrupt::check()?;
        let path = format!("{PATH_PREFIX}reads-{round}");
        vault.put(&path, KEY, value)?;
        let request = Request::V2 {
            key: REFERENCE_VARIABLE.as_bytes().to_vec(),
            value: reference(&path).into_bytes(),
        };
        let sent = load::send_burst(
            &socket,
            plan.connections,
            plan.vault_requests_per_connection,
            &request,
            value.as_bytes(),
        )?;
        reads.push(vault.reads(&path) as f64);
        requests.push(sent as f64);
    }
    Ok(vec![Row::new(
        "vault-reads",
        format!(
            "7 Vault reads per (path, TTL), {} connections",
            plan.connections
        ),
        Figure::max_of(reads, Unit::Count),
        Some(Figure::max_of(requests, Unit::Count)),
        Some(Target::ValueEquals(1.0)),
    )])
}

/// Benchmark 8: the agent's latency for a cached Vault entry against a cached entry of the
/// secrets file, both served by one agent and both warm.
///
/// One client thread sends the two requests alternately on one connection and times each
/// round trip. The two entries hold the same value, so both responses carry the same bytes.
/// As in benchmark 3, the agent and the client run on one CPU, so the figures compare the
/// software paths rather than where the scheduler placed the threads.
pub fn cached_latency(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let cpu = affinity::first_allowed_cpu()?;
    let path = format!("{PATH_PREFIX}latency");
    let value = fixture::secret_value(REFERENCE_VARIABLE);
    suite.vault_server()?.put(&path, KEY, value)?;
    let agent = suite.start_vault_agent("vault-agent-one-cpu", Some(cpu))?;

    let vault_request = Request::V2 {
        key: REFERENCE_VARIABLE.as_bytes().to_vec(),
        value: reference(&path).into_bytes(),
    };
    let file_request = Request::V2 {
        key: REFERENCE_VARIABLE.as_bytes().to_vec(),
        value: fixture::reference(REFERENCE_VARIABLE).into_bytes(),
    };
    let vault_exchange = Exchange {
        request: &vault_request,
        expected_payload: value.as_bytes(),
    };
    let file_exchange = Exchange {
        request: &file_request,
        expected_payload: value.as_bytes(),
    };

    let samples = suite.plan.latency_samples;
    let mut percentiles = Vec::with_capacity(suite.plan.rounds);
    for round in 0..suite.plan.rounds {
        interrupt::check()?;
        // The side that goes first in each pair alternates from round to round.
        let (vault_times, file_times) = if round % 2 == 0 {
            timed_on_cpu(
                agent.socket(),
                &vault_exchange,
                &file_exchange,
                samples,
                cpu,
            )?
        } else {
            let (file, vault) = timed_on_cpu(
                agent.socket(),
                &file_exchange,
                &vault_exchange,
                samples,
                cpu,
            )?;
            (vault, file)
        };
        percentiles.push(RoundPercentiles {
            vault_p50: stats::percentile(&vault_times, 0.5) / 1000.0,
            vault_p99: stats::percentile(&vault_times, 0.99) / 1000.0,
            file_p50: stats::percentile(&file_times, 0.5) / 1000.0,
            file_p99: stats::percentile(&file_times, 0.99) / 1000.0,
        });
    }

    let figure = |pick: fn(&RoundPercentiles) -> f64| {
        Figure::median_of(percentiles.iter().map(pick).collect(), Unit::Microseconds)
    };
    Ok(vec![
        Row::new(
            "vault-cached-p50",
            "8 cached Vault entry p50, one CPU",
            figure(|round| round.vault_p50),
            Some(figure(|round| round.file_p50)),
            Some(Target::RatioAtMost(1.1)),
        ),
        Row::new(
            "vault-cached-p99",
            "8 cached Vault entry p99, one CPU",
            figure(|round| round.vault_p99),
            Some(figure(|round| round.file_p99)),
            None,
        ),
    ])
}

/// Percentiles of one round of benchmark 8, in microseconds.
struct RoundPercentiles {
    vault_p50: f64,
    vault_p99: f64,
    file_p50: f64,
    file_p99: f64,
}

/// Runs [`load::paired_latencies`] on a thread pinned to `cpu`, so this process's other
/// threads keep their CPUs.
fn timed_on_cpu(
    socket: &Path,
    first: &Exchange<'_>,
    second: &Exchange<'_>,
    samples: u64,
    cpu: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                affinity::pin_current_thread(cpu)?;
                load::paired_latencies(socket, first, second, LATENCY_WARM_UP, samples)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the latency client thread panicked"))?
    })
    .context("cannot measure the cached Vault latency")
}
