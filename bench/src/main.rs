//! `envproxy-bench`: EnvProxy benchmarks, each run beside its baseline and reported as a ratio.
//!
//! Run `cargo build --release --workspace && target/release/envproxy-bench`. The benchmark
//! uses the agent, the CLI and the library from its own directory, compiles its C client with
//! `cc -O2` into a temporary directory, starts the agent and an echo server there, and stops
//! them by pid at the end.
//!
//! - [`suite`]: the sixteen benchmarks and their sizes.
//! - [`observe`]: the audit stream watcher and metrics scraper of benchmarks 12 and 13.
//! - [`harness`]: the C client that calls `getenv` and times socket round trips.
//! - [`load`]: the multi-threaded throughput client.
//! - [`echo`]: the baseline server, started as `envproxy-bench serve-echo`.
//! - [`service`]: starting and stopping the servers.
//! - [`vault`]: the Vault test server of benchmarks 7 to 11, inside this process.
//! - [`kube`]: the kube API test server of the node-mode benchmarks 9 to 11.
//! - [`cluster`], [`cgroups`]: the test pods of node mode, their cgroups and tokens.
//! - [`fixture`]: the secrets file and the environment of the C client.
//! - [`report`]: the results table and JSON.
//! - [`machine`]: the CPU use of other work before the run.
//! - [`affinity`], [`interrupt`]: pinning processes to one CPU, and Ctrl-C handling.

mod affinity;
mod binaries;
mod cgroups;
mod cluster;
mod echo;
mod fixture;
mod harness;
mod interrupt;
mod kube;
mod load;
mod machine;
mod observe;
mod report;
mod service;
mod stats;
mod suite;
mod vault;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::binaries::Binaries;
use crate::report::Row;
use crate::suite::{Benchmark, Plan, Suite};

/// Exit status when every benchmark ran but at least one target was missed.
const EXIT_TARGET_MISSED: u8 = 2;
/// Exit status after SIGINT or SIGTERM, as a shell reports a process ended by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

/// Measure libenvproxy.so and envproxy-agent against baselines without them.
///
/// Prints one table: each figure with EnvProxy, its baseline, their ratio and the target.
/// Exits with 0 when every target is met, 2 when one is missed, 130 after Ctrl-C, and 1 on an
/// error.
#[derive(Debug, Parser)]
#[command(name = "envproxy-bench", version)]
struct Args {
    /// Fewer rounds and iterations: a check that everything runs, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Rounds per figure (each round measures both sides) [default: 5, or 3 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    rounds: Option<u16>,
    /// Run only these benchmarks (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "NAME")]
    only: Vec<Benchmark>,
    #[command(subcommand)]
    command: Option<Internal>,
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// The baseline server of benchmarks 3 and 4, started by the benchmark itself.
    #[command(hide = true)]
    ServeEcho {
        /// Socket path to listen on.
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// Payload length of every reply, in bytes.
        #[arg(long, value_name = "BYTES")]
        reply_len: usize,
    },
}

/// The `--json` output.
#[derive(Serialize)]
struct JsonReport<'a> {
    started_unix_secs: u64,
    cpus: usize,
    /// Share of CPU time (0 to 1) that was busy in the second before the run, while the
    /// benchmark itself was idle.
    busy_before_run: f64,
    quick: bool,
    rounds: usize,
    results: &'a [Row],
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, so a redirected log stays plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(args) {
        Ok(code) => code,
        // A signal to the whole process group also ends the servers and the C client, so the
        // error of the step that was running would only report a closed connection.
        Err(_) if interrupt::requested() => {
            eprintln!("envproxy-bench: interrupted; the servers are stopped and files removed");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(err) => {
            eprintln!("envproxy-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Internal::ServeEcho { socket, reply_len }) = &args.command {
        echo::serve(socket, *reply_len)?;
        return Ok(ExitCode::SUCCESS);
    }

    interrupt::install();
    let started_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let mut plan = if args.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if let Some(rounds) = args.rounds {
        plan.rounds = rounds.into();
    }
    let rounds = plan.rounds;
    let selected: Vec<Benchmark> = Benchmark::ALL
        .into_iter()
        .filter(|benchmark| args.only.is_empty() || args.only.contains(benchmark))
        .collect();
    // Checked before any benchmark runs, so a run as another user fails at once rather than
    // after the benchmarks that need no root.
    if selected.iter().any(|benchmark| benchmark.needs_root()) {
        cgroups::require_root(suite::NODE_BENCHMARKS)?;
    }
    let needs_cli = selected.contains(&Benchmark::PythonStartup)
        || selected.contains(&Benchmark::InterpreterStartup);
    let binaries = Binaries::locate(needs_cli)?;

    let busy_before_run = machine::busy_share(machine::SAMPLE_INTERVAL)?;
    if busy_before_run > machine::BUSY_WARNING_SHARE {
        tracing::warn!(
            busy_percent = format!("{:.0}", busy_before_run * 100.0),
            "other work kept the CPUs busy before the run; the figures may be noisy"
        );
    }

    let mut rows = Vec::new();
    {
        let mut suite = Suite::prepare(plan, binaries)?;
        for benchmark in selected {
            rows.extend(suite.run(benchmark)?);
        }
    }

    if args.json {
        let report = JsonReport {
            started_unix_secs,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            busy_before_run,
            quick: args.quick,
            rounds,
            results: &rows,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::table(&rows));
    }

    if rows.iter().any(|row| row.pass == Some(false)) {
        return Ok(ExitCode::from(EXIT_TARGET_MISSED));
    }
    Ok(ExitCode::SUCCESS)
}
