//! Latency percentiles.

use std::time::Duration;

use serde::Serialize;

/// The latency figures of one run, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles (the smallest value with at least q of the samples at
    /// or below it): every figure is a latency that was really seen.
    pub fn of(latencies: &[Duration]) -> Self {
        if latencies.is_empty() {
            return Self::default();
        }
        let mut sorted: Vec<f64> = latencies.iter().map(Duration::as_secs_f64).collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Self {
            count: sorted.len(),
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: sorted[sorted.len() - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn uniform_one_to_a_hundred() {
        // Shuffled on purpose: the order of arrival must not matter.
        let mut values: Vec<u64> = (1..=100).collect();
        values.reverse();
        values.swap(3, 70);
        let p = Percentiles::of(&millis(values));
        assert_eq!((p.p50, p.p90, p.p99, p.max), (0.050, 0.090, 0.099, 0.100));
        assert!((p.mean - 0.0505).abs() < 1e-12);
        assert_eq!(p.count, 100);
    }

    #[test]
    fn a_long_tail_shows_in_p99_not_p50() {
        // 990 fast requests and 10 slow ones: p99 is the last fast one, max the slowest.
        let values = std::iter::repeat_n(10, 990).chain(std::iter::repeat_n(5000, 10));
        let p = Percentiles::of(&millis(values));
        assert_eq!((p.p50, p.p90, p.p99, p.max), (0.010, 0.010, 0.010, 5.0));
        let values = std::iter::repeat_n(10, 989).chain(std::iter::repeat_n(5000, 11));
        assert_eq!(Percentiles::of(&millis(values)).p99, 5.0);
    }

    #[test]
    fn one_sample_and_none() {
        let p = Percentiles::of(&millis([7]));
        assert_eq!((p.p50, p.p99, p.max), (0.007, 0.007, 0.007));
        assert_eq!(Percentiles::of(&[]), Percentiles::default());
    }
}
