//! Benchmarks 1 and 2: the cost of one `getenv` call that never leaves the process.

use crate::fixture::{self, PLAIN_VALUE, PLAIN_VARIABLE, REFERENCE_VARIABLE};
use crate::report::{Figure, Row, Target, Unit};
use crate::suite::{alternate, Suite};

/// A cache TTL far longer than any run, so every timed call is served from the cache.
const LONG_TTL_SECS: u64 = 3600;

/// Benchmark 1: a plain variable costs one libc lookup and a prefix check.
pub fn plain(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    let with_env = suite.environment(true, LONG_TTL_SECS);
    let without_env = suite.environment(false, LONG_TTL_SECS);
    let calls = suite.plan.getenv_calls.to_string();
    let args = ["loop", PLAIN_VARIABLE, PLAIN_VALUE, &calls];
    let harness = &suite.harness;
    let (with, without) = alternate(
        suite.plan.rounds,
        || harness.run(&args, &with_env),
        || harness.run(&args, &without_env),
    )?;
    let position = with[0].number("position")?;
    let variables = with[0].number("variables")?;
    Ok(vec![Row::new(
        "getenv-plain",
        format!("1 getenv, plain variable (entry {position} of {variables})"),
        ns_per_call(&with)?,
        Some(ns_per_call(&without)?),
        Some(Target::RatioAtMost(1.05)),
    )])
}

/// Benchmark 2: a reference served from the in-process cache, against a plain `getenv` of the
/// same variable without the library (which returns the reference itself).
pub fn cached(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    suite.agent_socket()?;
    let with_env = suite.environment(true, LONG_TTL_SECS);
    let without_env = suite.environment(false, LONG_TTL_SECS);
    let calls = suite.plan.getenv_calls.to_string();
    let secret = fixture::secret_value(REFERENCE_VARIABLE);
    let reference = fixture::reference(REFERENCE_VARIABLE);
    let with_args = ["loop", REFERENCE_VARIABLE, secret, &calls];
    let without_args = ["loop", REFERENCE_VARIABLE, &reference, &calls];
    let harness = &suite.harness;
    let (with, without) = alternate(
        suite.plan.rounds,
        || harness.run(&with_args, &with_env),
        || harness.run(&without_args, &without_env),
    )?;
    let position = with[0].number("position")?;
    let variables = with[0].number("variables")?;
    Ok(vec![Row::new(
        "getenv-cached",
        format!("2 getenv, cached reference (entry {position} of {variables})"),
        ns_per_call(&with)?,
        Some(ns_per_call(&without)?),
        Some(Target::RatioAtMost(3.0)),
    )])
}

fn ns_per_call(outputs: &[crate::harness::Output]) -> anyhow::Result<Figure> {
    let values = outputs
        .iter()
        .map(|output| output.number("ns_per_call"))
        .collect::<anyhow::Result<Vec<f64>>>()?;
    Ok(Figure::median_of(values, Unit::NsPerCall))
}
