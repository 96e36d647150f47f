//! Benchmarks 3 and 4: requests that reach the agent, against the same bytes sent to an echo
//! server that does no work.

use std::path::Path;

use envproxy_proto::Request;

use crate::affinity;
use crate::echo;
use crate::fixture::{self, REFERENCE_VARIABLE};
use crate::harness::Output;
use crate::load::{self, Load};
use crate::report::{Figure, Row, Target, Unit};
use crate::suite::{alternate, Suite};

/// `ENVPROXY_CACHE_TTL=0`: the library sends a request to the agent on every call.
const NO_CACHE: u64 = 0;

/// Benchmark 3: one uncached `getenv` of a reference (library, socket, agent) against one
/// round trip of the same request frame to the echo server.
///
/// The C client alternates the two in one process, so both are timed under the same load.
/// They are measured twice. First the client, an agent and an echo server all run on one CPU:
/// every wake-up is then a context switch on that CPU, so the figures compare the software
/// paths, and this pair carries the target. Then the shared servers and the client run
/// wherever the scheduler puts them, for information. On a virtual machine a wake-up of an
/// idle virtual CPU costs tens of microseconds, and whether the client and a server share a
/// CPU changes from run to run, so those figures swing between two levels.
pub fn latency(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let cpu = affinity::first_allowed_cpu()?;
    let pinned_agent = suite.start_agent("agent-one-cpu", Some(cpu))?;
    let pinned_echo = suite.start_echo("echo-one-cpu", Some(cpu))?;
    let pinned = run_round_trips(
        suite,
        pinned_agent.socket(),
        pinned_echo.socket(),
        Some(cpu),
    )?;
    drop((pinned_agent, pinned_echo));

    let agent_socket = suite.agent_socket()?.to_path_buf();
    let echo_socket = suite.echo_socket()?.to_path_buf();
    let unpinned = run_round_trips(suite, &agent_socket, &echo_socket, None)?;

    let mut rows = Vec::with_capacity(4);
    for (outputs, placement, gated) in [(&pinned, "one CPU", true), (&unpinned, "any CPU", false)] {
        rows.push(Row::new(
            if gated {
                "uncached-p50"
            } else {
                "uncached-p50-any-cpu"
            },
            format!("3 uncached reference p50, {placement}"),
            microseconds(outputs, "getenv_p50_ns")?,
            Some(microseconds(outputs, "echo_p50_ns")?),
            gated.then_some(Target::RatioAtMost(1.5)),
        ));
        rows.push(Row::new(
            if gated {
                "uncached-p99"
            } else {
                "uncached-p99-any-cpu"
            },
            format!("3 uncached reference p99, {placement}"),
            microseconds(outputs, "getenv_p99_ns")?,
            Some(microseconds(outputs, "echo_p99_ns")?),
            None,
        ));
    }
    Ok(rows)
}

/// Runs the C client's round-trip mode once per round with the library pointed at
/// `agent_socket` and the bare round trips going to `echo_socket`.
fn run_round_trips(
    suite: &Suite,
    agent_socket: &Path,
    echo_socket: &Path,
    cpu: Option<usize>,
) -> anyhow::Result<Vec<Output>> {
    let environment = suite.environment_for(agent_socket, true, NO_CACHE);
    let echo_socket = echo_socket.display().to_string();
    let samples = suite.plan.latency_samples.to_string();
    let secret = fixture::secret_value(REFERENCE_VARIABLE);
    let args = [
        "round-trip",
        &echo_socket,
        REFERENCE_VARIABLE,
        secret,
        &samples,
    ];
    (0..suite.plan.rounds)
        .map(|_| suite.harness.run_on(&args, &environment, cpu))
        .collect()
}

/// Benchmark 4: requests per second over persistent connections, agent against echo server.
pub fn throughput(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let agent_socket = suite.agent_socket()?.to_path_buf();
    let echo_socket = suite.echo_socket()?.to_path_buf();
    let request = Request::V2 {
        key: REFERENCE_VARIABLE.as_bytes().to_vec(),
        value: fixture::reference(REFERENCE_VARIABLE).into_bytes(),
    };
    let secret = fixture::secret_value(REFERENCE_VARIABLE).as_bytes();
    let filler = vec![echo::FILLER; secret.len()];
    let plan = &suite.plan;
    let load_on = |socket, expected_payload| Load {
        socket,
        connections: plan.connections,
        request: &request,
        expected_payload,
        warm_up: plan.throughput_warm_up,
        duration: plan.throughput_duration,
    };
    let (with, echo) = alternate(
        plan.rounds,
        || {
            crate::interrupt::check()?;
            load::requests_per_second(&load_on(&agent_socket, secret))
        },
        || {
            crate::interrupt::check()?;
            load::requests_per_second(&load_on(&echo_socket, &filler))
        },
    )?;
    Ok(vec![Row::new(
        "throughput",
        format!("4 throughput, {} connections", plan.connections),
        Figure::median_of(with, Unit::RequestsPerSecond),
        Some(Figure::median_of(echo, Unit::RequestsPerSecond)),
        Some(Target::RatioAtLeast(0.70)),
    )])
}

fn microseconds(outputs: &[Output], key: &str) -> anyhow::Result<Figure> {
    let values = outputs
        .iter()
        .map(|output| output.number(key).map(|ns| ns / 1000.0))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(Figure::median_of(values, Unit::Microseconds))
}
