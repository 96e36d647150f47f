//! Results: one row per figure, printed as a table or as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats;

/// A measured value with its unit, and the measurements it summarises.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub value: f64,
    pub unit: Unit,
    /// One value per round (per run for benchmark 6), in `unit`; empty for a single value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    NsPerCall,
    Microseconds,
    Milliseconds,
    RequestsPerSecond,
    Kibibytes,
    /// A number of requests, such as the Vault reads of benchmark 7.
    Count,
}

impl Figure {
    pub fn new(value: f64, unit: Unit) -> Figure {
        Figure {
            value,
            unit,
            rounds: Vec::new(),
        }
    }

    /// Summarises `rounds` by their median.
    pub fn median_of(rounds: Vec<f64>, unit: Unit) -> Figure {
        Figure {
            value: stats::median(&rounds),
            unit,
            rounds,
        }
    }

    /// Summarises `rounds` by their maximum.
    pub fn max_of(rounds: Vec<f64>, unit: Unit) -> Figure {
        Figure {
            value: stats::max(&rounds),
            unit,
            rounds,
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unit {
            Unit::NsPerCall => write!(f, "{:.2} ns/call", self.value),
            Unit::Microseconds => write!(f, "{:.1} us", self.value),
            Unit::Milliseconds => write!(f, "{:.2} ms", self.value),
            Unit::RequestsPerSecond => write!(f, "{:.0} req/s", self.value),
            Unit::Kibibytes => write!(f, "{:.0} KiB", self.value),
            Unit::Count => write!(f, "{:.0}", self.value),
        }
    }
}

/// The bound a figure must meet.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "bound", rename_all = "snake_case")]
pub enum Target {
    /// with / baseline must not exceed the bound.
    RatioAtMost(f64),
    /// with / baseline must reach at least the bound.
    RatioAtLeast(f64),
    /// The "with" figure itself must not exceed the bound, in its own unit.
    ValueAtMost(f64),
    /// The "with" figure itself must equal the bound, in its own unit.
    ValueEquals(f64),
}

impl Target {
    fn is_met(self, with: f64, ratio: Option<f64>) -> bool {
        match (self, ratio) {
            (Target::RatioAtMost(bound), Some(ratio)) => ratio <= bound,
            (Target::RatioAtLeast(bound), Some(ratio)) => ratio >= bound,
            (Target::ValueAtMost(bound), _) => with <= bound,
            (Target::ValueEquals(bound), _) => with == bound,
            (_, None) => false,
        }
    }

    fn describe(self, unit: Unit) -> String {
        match self {
            Target::RatioAtMost(bound) => format!("<= {bound:.2}"),
            Target::RatioAtLeast(bound) => format!(">= {bound:.2}"),
            Target::ValueAtMost(bound) => format!("<= {}", Figure::new(bound, unit)),
            Target::ValueEquals(bound) => format!("= {}", Figure::new(bound, unit)),
        }
    }
}

/// One line of the results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable identifier for scripts, such as `getenv-plain`.
    pub id: &'static str,
    /// The table label.
    pub benchmark: String,
    pub with: Figure,
    pub baseline: Option<Figure>,
    /// with / baseline.
    pub ratio: Option<f64>,
    /// `None` for a figure reported for information.
    pub target: Option<Target>,
    /// Whether the target is met; `None` without a target.
    pub pass: Option<bool>,
}

impl Row {
    /// Builds a row, computing the ratio (when there is a non-zero baseline) and the verdict.
    pub fn new(
        id: &'static str,
        benchmark: impl Into<String>,
        with: Figure,
        baseline: Option<Figure>,
        target: Option<Target>,
    ) -> Row {
        let ratio = baseline
            .as_ref()
            .filter(|baseline| baseline.value != 0.0)
            .map(|baseline| with.value / baseline.value);
        let pass = target.map(|target| target.is_met(with.value, ratio));
        Row {
            id,
            benchmark: benchmark.into(),
            with,
            baseline,
            ratio,
            target,
            pass,
        }
    }
}

impl Row {
    /// Builds a row whose figure is judged on its own: the baseline is shown beside it, but a
    /// ratio of two memory growths, for example, means nothing, so none is computed.
    pub fn absolute(
        id: &'static str,
        benchmark: impl Into<String>,
        with: Figure,
        baseline: Option<Figure>,
        target: Option<Target>,
    ) -> Row {
        let pass = target.map(|target| target.is_met(with.value, None));
        Row {
            id,
            benchmark: benchmark.into(),
            with,
            baseline,
            ratio: None,
            target,
            pass,
        }
    }
}

/// Formats a ratio with three decimals, or in scientific notation below 0.01, where three
/// decimals would show too few digits (1 Vault read per 6400 requests is `1.56e-4`).
fn format_ratio(ratio: f64) -> String {
    if ratio != 0.0 && ratio.abs() < 0.01 {
        format!("{ratio:.2e}")
    } else {
        format!("{ratio:.3}")
    }
}

/// Formats the rows as an aligned text table.
pub fn table(rows: &[Row]) -> String {
    let header = ["benchmark", "with", "baseline", "ratio", "target", "pass"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|row| {
            [
                row.benchmark.clone(),
                row.with.to_string(),
                row.baseline
                    .as_ref()
                    .map_or("-".to_string(), |b| b.to_string()),
                row.ratio.map_or("-".to_string(), format_ratio),
                row.target
                    .map_or("-".to_string(), |t| t.describe(row.with.unit)),
                match row.pass {
                    Some(true) => "yes".to_string(),
                    Some(false) => "NO".to_string(),
                    None => "-".to_string(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.len());
        }
    }

    let mut out = String::new();
    let mut write_line = |line: &[String]| {
        let padded: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    write_line(&header.map(String::from));
    write_line(&widths.map(|width| "-".repeat(width)));
    for line in &cells {
        write_line(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_at_most_passes_and_fails() {
        let baseline = Figure::new(10.0, Unit::NsPerCall);
        let target = Some(Target::RatioAtMost(1.05));
        let with_fast = Figure::new(10.4, Unit::NsPerCall);
        let with_slow = Figure::new(10.6, Unit::NsPerCall);
        let fast = Row::new("a", "a", with_fast, Some(baseline.clone()), target);
        let slow = Row::new("b", "b", with_slow, Some(baseline), target);
        assert_eq!(fast.pass, Some(true));
        assert_eq!(slow.pass, Some(false));
        assert!((fast.ratio.unwrap() - 1.04).abs() < 1e-9);
    }

    #[test]
    fn ratio_at_least_passes_and_fails() {
        let baseline = Figure::new(1000.0, Unit::RequestsPerSecond);
        let target = Some(Target::RatioAtLeast(0.70));
        let with_high = Figure::new(800.0, Unit::RequestsPerSecond);
        let with_low = Figure::new(600.0, Unit::RequestsPerSecond);
        let high = Row::new("a", "a", with_high, Some(baseline.clone()), target);
        let low = Row::new("b", "b", with_low, Some(baseline), target);
        assert_eq!(high.pass, Some(true));
        assert_eq!(low.pass, Some(false));
    }

    #[test]
    fn absolute_row_has_no_ratio() {
        let row = Row::absolute(
            "memory",
            "memory",
            Figure::new(12.0, Unit::Kibibytes),
            Some(Figure::new(8.0, Unit::Kibibytes)),
            Some(Target::ValueAtMost(64.0)),
        );
        assert_eq!(row.ratio, None);
        assert_eq!(row.pass, Some(true));
    }

    #[test]
    fn absolute_row_fails_above_bound() {
        let row = Row::absolute(
            "memory",
            "memory",
            Figure::new(68.0, Unit::Kibibytes),
            None,
            Some(Target::ValueAtMost(64.0)),
        );
        assert_eq!(row.pass, Some(false));
    }

    #[test]
    fn value_equals_passes_only_on_equality() {
        let target = Some(Target::ValueEquals(1.0));
        let baseline = Some(Figure::new(6400.0, Unit::Count));
        let one = Row::new(
            "a",
            "a",
            Figure::new(1.0, Unit::Count),
            baseline.clone(),
            target,
        );
        let two = Row::new("b", "b", Figure::new(2.0, Unit::Count), baseline, target);
        assert_eq!(one.pass, Some(true));
        assert_eq!(two.pass, Some(false));
        assert_eq!(Target::ValueEquals(1.0).describe(Unit::Count), "= 1");
    }

    #[test]
    fn ratio_target_without_baseline_fails() {
        let row = Row::new(
            "x",
            "x",
            Figure::new(1.0, Unit::Milliseconds),
            None,
            Some(Target::RatioAtMost(2.0)),
        );
        assert_eq!(row.pass, Some(false));
    }

    #[test]
    fn figure_summaries_keep_rounds() {
        let median = Figure::median_of(vec![3.0, 1.0, 2.0], Unit::Milliseconds);
        assert_eq!(median.value, 2.0);
        assert_eq!(median.rounds, [3.0, 1.0, 2.0]);
        let max = Figure::max_of(vec![3.0, 1.0, 2.0], Unit::Kibibytes);
        assert_eq!(max.value, 3.0);
    }

    #[test]
    fn row_without_target_has_no_verdict() {
        let row = Row::new("x", "x", Figure::new(1.0, Unit::Milliseconds), None, None);
        assert_eq!(row.pass, None);
    }

    #[test]
    fn small_ratios_keep_their_digits() {
        assert_eq!(format_ratio(1.0 / 6400.0), "1.56e-4");
        assert_eq!(format_ratio(0.0), "0.000");
        assert_eq!(format_ratio(1.0871), "1.087");
    }

    #[test]
    fn table_aligns_columns() {
        let rows = [
            Row::new(
                "a",
                "short",
                Figure::new(1.0, Unit::NsPerCall),
                Some(Figure::new(2.0, Unit::NsPerCall)),
                Some(Target::RatioAtMost(1.05)),
            ),
            Row::new(
                "b",
                "a longer name",
                Figure::new(3.0, Unit::Kibibytes),
                None,
                None,
            ),
        ];
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("benchmark      with"), "{text}");
        assert!(lines[2].contains("0.500"), "{text}");
        assert!(lines[2].ends_with("yes"), "{text}");
        assert!(lines[3].ends_with('-'), "{text}");
    }
}
