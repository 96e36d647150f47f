//! Benchmark 5: resident memory growth over many `getenv` calls of references.

use crate::fixture::{self, SECRETS};
use crate::harness::Output;
use crate::report::{Figure, Row, Target, Unit};
use crate::suite::{alternate, Suite};

/// `ENVPROXY_CACHE_TTL=1`: the shortest TTL above zero. A run of 10 million calls takes well
/// under a second, so nearly every call is served from the caches.
const SHORT_TTL_SECS: u64 = 1;

/// `ENVPROXY_CACHE_TTL=0`: every call is a request to the agent.
const NO_CACHE: u64 = 0;

/// Threads of the C client that call `getenv` at the same time.
const THREADS: &str = "2";

const MAX_GROWTH_KIB: f64 = 64.0;

/// Runs the C client's memory mode over all five references with and without the library:
/// once with calls served from the caches, and once with every call sent to the agent, which
/// covers the request, the connection pool and the interning of each response.
///
/// The gated figure is the growth of anonymous resident memory (statm resident minus shared),
/// where a heap leak shows. Growth of file-backed pages comes from code that runs for the first
/// time, in 64 KiB steps of the kernel's fault-around, with or without the library, so total
/// resident growth is reported beside it for information. Each figure is the largest of the
/// rounds, not the median, because one leaking round is enough to fail.
pub fn growth(suite: &mut Suite) -> anyhow::Result<Vec<Row>> {
    suite.agent_socket()?;
    let cached_calls = suite.plan.getenv_calls;
    let (cached, cached_baseline) = measure(suite, cached_calls, SHORT_TTL_SECS)?;
    let uncached_calls = suite.plan.uncached_memory_calls;
    let (uncached, uncached_baseline) = measure(suite, uncached_calls, NO_CACHE)?;
    Ok(vec![
        Row::absolute(
            "memory-cached",
            format!("5 anonymous RSS growth, {cached_calls} cached calls"),
            largest_growth(&cached, "anonymous")?,
            Some(largest_growth(&cached_baseline, "anonymous")?),
            Some(Target::ValueAtMost(MAX_GROWTH_KIB)),
        ),
        Row::absolute(
            "memory-uncached",
            format!("5 anonymous RSS growth, {uncached_calls} uncached calls"),
            largest_growth(&uncached, "anonymous")?,
            Some(largest_growth(&uncached_baseline, "anonymous")?),
            Some(Target::ValueAtMost(MAX_GROWTH_KIB)),
        ),
        Row::absolute(
            "memory-cached-total",
            format!("5 total RSS growth, {cached_calls} cached calls"),
            largest_growth(&cached, "resident")?,
            Some(largest_growth(&cached_baseline, "resident")?),
            None,
        ),
    ])
}

/// Runs `calls` getenv calls per round with and without the library.
fn measure(
    suite: &Suite,
    calls: u64,
    cache_ttl_secs: u64,
) -> anyhow::Result<(Vec<Output>, Vec<Output>)> {
    let with_env = suite.environment(true, cache_ttl_secs);
    let without_env = suite.environment(false, cache_ttl_secs);
    let calls = calls.to_string();
    let resolved: Vec<String> = SECRETS
        .iter()
        .map(|secret| format!("{}={}", secret.name, secret.value))
        .collect();
    let unresolved: Vec<String> = SECRETS
        .iter()
        .map(|secret| format!("{}={}", secret.name, fixture::reference(secret.name)))
        .collect();
    let with_args = memory_args(&calls, &resolved);
    let without_args = memory_args(&calls, &unresolved);
    let harness = &suite.harness;
    alternate(
        suite.plan.rounds,
        || harness.run(&with_args, &with_env),
        || harness.run(&without_args, &without_env),
    )
}

fn memory_args<'a>(calls: &'a str, pairs: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["memory", calls, THREADS];
    args.extend(pairs.iter().map(String::as_str));
    args
}

/// Returns the largest growth over the rounds, in KiB, of the `kind` (`resident` or
/// `anonymous`) figure.
fn largest_growth(outputs: &[Output], kind: &str) -> anyhow::Result<Figure> {
    let mut growths = Vec::with_capacity(outputs.len());
    for output in outputs {
        let before = output.number(&format!("{kind}_before_bytes"))?;
        let after = output.number(&format!("{kind}_after_bytes"))?;
        growths.push((after - before) / 1024.0);
    }
    Ok(Figure::max_of(growths, Unit::Kibibytes))
}
