//! The statistics behind `data_analysis`: pure functions over a slice of numbers,
//! no IO, so every figure in a report can be checked by hand.
//!
//! Conventions (they are part of the output contract):
//! - the standard deviation is the **sample** one (divides by `n - 1`; 0 for one value);
//! - percentiles interpolate linearly between the closest ranks: the `p`-th percentile
//!   of the sorted values `v[0..n]` is `v[k] + f * (v[k+1] - v[k])` where
//!   `k + f = p / 100 * (n - 1)` (numpy's default, Hyndman and Fan type 7);
//! - the median is the 50th percentile under that rule;
//! - the trend is the least-squares line `value = intercept + slope * index`, index
//!   0 for the first value; it is `flat` when the line moves by no more than 5 % of the
//!   range of the values over the whole series, or explains less than a quarter of
//!   their variance (R² < 0.25);
//! - anomalies follow Tukey's rule: a value more than 1.5 interquartile ranges below
//!   the first quartile or above the third is an anomaly, and its `score` is that
//!   distance in interquartile ranges. At least [`MIN_VALUES_FOR_ANOMALIES`] values
//!   are needed. When the interquartile range is 0 every value different from the
//!   quartiles is an anomaly, with no score.

/// The percentiles reported, in order.
pub const PERCENTILES: [u8; 6] = [25, 50, 75, 90, 95, 99];

/// Below this many values no value is called an anomaly: the quartiles are too unstable.
pub const MIN_VALUES_FOR_ANOMALIES: usize = 4;

/// Tukey's fence, in interquartile ranges.
pub const IQR_FENCE: f64 = 1.5;

/// A trend whose fitted line moves by no more than this share of the range is flat.
pub const FLAT_TREND_SHARE: f64 = 0.05;

/// A line explaining less of the variance than this is no trend.
pub const MIN_TREND_R_SQUARED: f64 = 0.25;

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub sum: f64,
    pub mean: f64,
    pub median: f64,
    pub std_dev: f64,
    pub min: f64,
    pub max: f64,
    /// One value per entry of [`PERCENTILES`].
    pub percentiles: [f64; 6],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Increasing,
    Decreasing,
    Flat,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Increasing => "increasing",
            Direction::Decreasing => "decreasing",
            Direction::Flat => "flat",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trend {
    pub slope: f64,
    pub intercept: f64,
    /// Share of the variance the line explains; 0 when the values are all equal.
    pub r_squared: f64,
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Low,
    High,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Low => "low",
            Side::High => "high",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub index: usize,
    pub value: f64,
    /// Distance beyond the nearest quartile in interquartile ranges (always above
    /// [`IQR_FENCE`]); `None` when the interquartile range is 0.
    pub score: Option<f64>,
    pub side: Side,
}

/// The summary of `values`, or `None` when there are none. Non-finite values must
/// have been filtered out by the caller.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let sorted = sorted(values);
    let count = values.len();
    let sum: f64 = values.iter().sum();
    let mean = sum / count as f64;
    let std_dev = if count < 2 {
        0.0
    } else {
        let squares: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        (squares / (count - 1) as f64).sqrt()
    };
    let percentiles = PERCENTILES.map(|p| percentile_of_sorted(&sorted, f64::from(p)));
    Some(Summary {
        count,
        sum,
        mean,
        median: percentile_of_sorted(&sorted, 50.0),
        std_dev,
        min: sorted[0],
        max: sorted[count - 1],
        percentiles,
    })
}

/// The `p`-th percentile (0 to 100) of already sorted values, by linear interpolation
/// between closest ranks. `sorted` must not be empty.
pub fn percentile_of_sorted(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len() - 1;
    let rank = (p / 100.0).clamp(0.0, 1.0) * last as f64;
    let below = rank.floor() as usize;
    let above = (below + 1).min(last);
    let fraction = rank - below as f64;
    sorted[below] + fraction * (sorted[above] - sorted[below])
}

/// The least-squares line through `(index, value)`, or `None` with fewer than two values.
pub fn trend(values: &[f64]) -> Option<Trend> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean_x = (n - 1) as f64 / 2.0;
    let mean_y = values.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (i, y) in values.iter().enumerate() {
        let dx = i as f64 - mean_x;
        let dy = y - mean_y;
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let r_squared = if syy == 0.0 {
        0.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    let (min, max) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    let rise = slope * (n - 1) as f64;
    let direction = if rise.abs() <= FLAT_TREND_SHARE * (max - min)
        || rise == 0.0
        || r_squared < MIN_TREND_R_SQUARED
    {
        Direction::Flat
    } else if rise > 0.0 {
        Direction::Increasing
    } else {
        Direction::Decreasing
    };
    Some(Trend {
        slope,
        intercept,
        r_squared,
        direction,
    })
}

/// The anomalies of `values` under Tukey's rule, in index order.
pub fn anomalies(values: &[f64]) -> Vec<Anomaly> {
    if values.len() < MIN_VALUES_FOR_ANOMALIES {
        return Vec::new();
    }
    let sorted = sorted(values);
    let q1 = percentile_of_sorted(&sorted, 25.0);
    let q3 = percentile_of_sorted(&sorted, 75.0);
    let iqr = q3 - q1;
    values
        .iter()
        .enumerate()
        .filter_map(|(index, &value)| {
            let (side, distance) = if value < q1 {
                (Side::Low, q1 - value)
            } else if value > q3 {
                (Side::High, value - q3)
            } else {
                return None;
            };
            if iqr == 0.0 {
                return Some(Anomaly {
                    index,
                    value,
                    score: None,
                    side,
                });
            }
            let score = distance / iqr;
            (score > IQR_FENCE).then_some(Anomaly {
                index,
                value,
                score: Some(score),
                side,
            })
        })
        .collect()
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

/// A number as a person reads it in a sentence: at most two decimals, no trailing
/// zeros, no `-0`.
pub fn fmt_num(v: f64) -> String {
    let rounded = (v * 100.0).round() / 100.0;
    let rounded = if rounded == 0.0 { 0.0 } else { rounded };
    let s = format!("{rounded:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// A number for JSON output, rounded to 6 decimals so float noise such as
/// `0.30000000000000004` does not leak into reports.
pub fn round6(v: f64) -> f64 {
    let r = (v * 1e6).round() / 1e6;
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_known_series() {
        let s = summarize(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, 40.0);
        assert_eq!(s.mean, 5.0);
        assert_eq!(s.median, 4.5);
        // Squared deviations sum to 32; sample variance 32 / 7.
        assert_eq!(s.std_dev, (32.0f64 / 7.0).sqrt());
        assert_eq!(s.min, 2.0);
        assert_eq!(s.max, 9.0);
        // Ranks p/100 * 7: 1.75, 3.5, 5.25, 6.3, 6.65, 6.93.
        assert_eq!(s.percentiles[0], 4.0);
        assert_eq!(s.percentiles[1], 4.5);
        assert_eq!(s.percentiles[2], 5.5);
        assert!((s.percentiles[3] - 7.6).abs() < 1e-12);
        assert!((s.percentiles[4] - 8.3).abs() < 1e-12);
        assert!((s.percentiles[5] - 8.86).abs() < 1e-12);
    }

    #[test]
    fn summary_edges() {
        assert_eq!(summarize(&[]), None);
        let one = summarize(&[7.5]).unwrap();
        assert_eq!(
            (one.mean, one.median, one.std_dev, one.min, one.max),
            (7.5, 7.5, 0.0, 7.5, 7.5)
        );
        assert_eq!(one.percentiles, [7.5; 6]);
        // Order of the input does not matter.
        let a = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((a.median, a.std_dev, a.percentiles[0]), (2.0, 1.0, 1.5));
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v = [10.0, 20.0, 30.0, 40.0];
        assert_eq!(percentile_of_sorted(&v, 0.0), 10.0);
        assert_eq!(percentile_of_sorted(&v, 50.0), 25.0);
        assert_eq!(percentile_of_sorted(&v, 100.0), 40.0);
        assert_eq!(percentile_of_sorted(&v, 90.0), 37.0);
        assert_eq!(percentile_of_sorted(&v, 150.0), 40.0);
    }

    #[test]
    fn trend_fits_the_least_squares_line() {
        let up = trend(&[1.0, 3.0, 5.0, 7.0]).unwrap();
        assert_eq!(
            up,
            Trend {
                slope: 2.0,
                intercept: 1.0,
                r_squared: 1.0,
                direction: Direction::Increasing
            }
        );
        // x = 0..3, y = 4, 1, 3, 0: sxy = -5, sxx = 5, syy = 10.
        let down = trend(&[4.0, 1.0, 3.0, 0.0]).unwrap();
        assert_eq!(
            down,
            Trend {
                slope: -1.0,
                intercept: 3.5,
                r_squared: 0.5,
                direction: Direction::Decreasing
            }
        );
        let flat = trend(&[5.0, 5.0, 5.0]).unwrap();
        assert_eq!((flat.slope, flat.r_squared), (0.0, 0.0));
        assert_eq!(flat.direction, Direction::Flat);
        // sxy = 0.6, sxx = 5: the line rises 0.36 over a range of 10, under 5 %.
        let bump = trend(&[0.0, 10.0, 10.0, 0.4]).unwrap();
        assert!((bump.slope - 0.12).abs() < 1e-12);
        assert_eq!(bump.direction, Direction::Flat);
        // Rises 5.75 over a range of 90, but R² is 0.0042: noise, not a trend.
        let noisy = trend(&[12.0, 11.0, 13.0, 100.0, 12.0, 14.0, 10.0, 15.0]).unwrap();
        assert!((noisy.slope + 23.0 / 28.0).abs() < 1e-12);
        assert_eq!(noisy.direction, Direction::Flat);
        assert_eq!(trend(&[1.0]), None);
    }

    #[test]
    fn anomalies_follow_tukeys_rule() {
        // Sorted: 10 11 12 12 13 14 15 100; q1 = 11.75, q3 = 14.25, IQR 2.5.
        let v = [12.0, 11.0, 13.0, 100.0, 12.0, 14.0, 10.0, 15.0];
        let found = anomalies(&v);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].index, 3);
        assert_eq!(found[0].value, 100.0);
        assert_eq!(found[0].side, Side::High);
        assert_eq!(found[0].score, Some((100.0 - 14.25) / 2.5));
        // A low outlier.
        let low = anomalies(&[50.0, 51.0, 52.0, 53.0, 54.0, 1.0]);
        assert_eq!(low.len(), 1);
        assert_eq!((low[0].index, low[0].side), (5, Side::Low));
        // Too few values, or none outside the fences.
        assert!(anomalies(&[1.0, 100.0, 1.0]).is_empty());
        assert!(anomalies(&[1.0, 2.0, 3.0, 4.0, 5.0]).is_empty());
        // Constant except one: IQR 0, the odd one out has no score.
        let constant = anomalies(&[5.0, 5.0, 5.0, 5.0, 9.0]);
        assert_eq!(
            constant,
            vec![Anomaly {
                index: 4,
                value: 9.0,
                score: None,
                side: Side::High
            }]
        );
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(42.5), "42.5");
        assert_eq!(fmt_num(40.0), "40");
        assert_eq!(fmt_num(1.23456), "1.23");
        assert_eq!(fmt_num(-0.001), "0");
        assert_eq!(fmt_num(-2.006), "-2.01");
        assert_eq!(round6(0.1 + 0.2), 0.3);
        assert_eq!(round6(-0.0000001), 0.0);
    }
}
