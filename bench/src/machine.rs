//! CPU use of the whole machine, sampled so that figures taken beside other work can be
//! recognised.

use std::time::Duration;

use anyhow::{bail, Context};

/// Time over which the CPU use before a run is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Share of CPU time above which the run warns that its figures may be noisy.
pub const BUSY_WARNING_SHARE: f64 = 0.10;

/// Returns the share of all CPUs' time (0 to 1) spent on anything but idling over `interval`,
/// from the first line of `/proc/stat`.
pub fn busy_share(interval: Duration) -> anyhow::Result<f64> {
    let before = read_cpu_times()?;
    std::thread::sleep(interval);
    let after = read_cpu_times()?;
    let total = after.total.saturating_sub(before.total);
    let idle = after.idle.saturating_sub(before.idle);
    if total == 0 {
        return Ok(0.0);
    }
    Ok(1.0 - idle as f64 / total as f64)
}

/// Cumulative CPU time of all CPUs, in clock ticks.
struct CpuTimes {
    total: u64,
    /// Idle plus I/O wait.
    idle: u64,
}

fn read_cpu_times() -> anyhow::Result<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_cpu_line(text.lines().next().unwrap_or_default())
}

/// Parses `cpu  user nice system idle iowait irq softirq steal ...`.
fn parse_cpu_line(line: &str) -> anyhow::Result<CpuTimes> {
    let mut fields = line.split_whitespace();
    if fields.next() != Some("cpu") {
        bail!("the first line of /proc/stat does not start with `cpu`: {line:?}");
    }
    let ticks: Vec<u64> = fields
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid number in /proc/stat: {line:?}"))?;
    if ticks.len() < 5 {
        bail!("the cpu line of /proc/stat has fewer than 5 fields: {line:?}");
    }
    // Guest time is already counted in user time, so only the first 8 fields add up.
    let total = ticks.iter().take(8).sum();
    Ok(CpuTimes {
        total,
        idle: ticks[3] + ticks[4],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_line_sums_fields() {
        let times = parse_cpu_line("cpu  100 5 50 800 20 1 2 3 40 0").unwrap();
        assert_eq!(times.total, 981);
        assert_eq!(times.idle, 820);
    }

    #[test]
    fn cpu_line_rejects_other_lines() {
        assert!(parse_cpu_line("cpu0 1 2 3 4 5").is_err());
        assert!(parse_cpu_line("cpu 1 2 x 4 5").is_err());
        assert!(parse_cpu_line("cpu 1 2 3").is_err());
    }

    #[test]
    fn busy_share_is_a_fraction() {
        let share = busy_share(Duration::from_millis(50)).unwrap();
        assert!((0.0..=1.0).contains(&share), "share {share}");
    }
}
