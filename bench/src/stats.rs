//! Summaries of repeated measurements.

/// Returns the median of `values`, the mean of the two middle values for an even count.
///
/// # Panics
/// Panics when `values` is empty or contains NaN, which no benchmark produces.
pub fn median(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "median of no values");
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("measurements are never NaN"));
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

/// Returns the `fraction` percentile of `values` (0.5 for the median, 0.99 for p99): the
/// value at rank `ceil(fraction * n)` of the sorted values, without interpolation.
///
/// # Panics
/// Panics when `values` is empty or contains NaN, which no benchmark produces.
pub fn percentile(values: &[f64], fraction: f64) -> f64 {
    assert!(!values.is_empty(), "percentile of no values");
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).expect("measurements are never NaN"));
    let rank = (fraction * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Returns the largest of `values`.
///
/// # Panics
/// Panics when `values` is empty.
pub fn max(values: &[f64]) -> f64 {
    assert!(!values.is_empty(), "maximum of no values");
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_count() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
    }

    #[test]
    fn median_of_even_count() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn median_of_one_value() {
        assert_eq!(median(&[7.5]), 7.5);
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&values, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
    }

    #[test]
    fn max_of_values() {
        assert_eq!(max(&[-1.0, 4.0, 2.0]), 4.0);
    }
}
