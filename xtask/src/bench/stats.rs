//! Repeated measurements and their median.
//!
//! Every figure the benchmark reports is the median of its runs: on a machine shared with
//! other work, a median shrugs off the one run that met a compiler at full tilt, where a
//! mean would not. The runs themselves are kept too, so the spread is visible.

use serde::{Deserialize, Serialize};

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
/// NaNs sort last and so never become the median of a set that has numbers.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// One quantity measured several times, in seconds (or bytes, where a field says so).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The median of the runs.
    pub median: f64,
    /// Every run, in the order measured.
    pub runs: Vec<f64>,
}

impl Series {
    /// The series of `runs`; `None` when there are none.
    pub fn of(runs: Vec<f64>) -> Option<Self> {
        Some(Self {
            median: median(&runs)?,
            runs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty_sets() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.5]), Some(7.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn a_series_keeps_its_runs_in_order() {
        let s = Series::of(vec![9.0, 1.0, 5.0]).unwrap();
        assert_eq!(s.median, 5.0);
        assert_eq!(s.runs, [9.0, 1.0, 5.0]);
        assert!(Series::of(Vec::new()).is_none());
    }
}
