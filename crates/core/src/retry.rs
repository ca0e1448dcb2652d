//! Retry policy and backoff math: exponential, capped, with jitter. Pure: the random
//! sample is an argument so that tests and replays are deterministic.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub backoff_base_ms: u64,
    /// No delay is ever longer than this.
    pub backoff_cap_ms: u64,
    /// Growth factor from one retry to the next.
    pub backoff_multiplier: f64,
    /// Fraction of the delay that is randomised: 0 = none, 1 = full jitter.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 60_000,
            backoff_multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

impl RetryPolicy {
    /// Every problem with the policy, each as (field, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS_LIMIT {
            out.push((
                "retry.max_attempts".into(),
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        if self.backoff_cap_ms < self.backoff_base_ms {
            out.push((
                "retry.backoff_cap_ms".into(),
                "must not be smaller than backoff_base_ms".into(),
            ));
        }
        if !(self.backoff_multiplier.is_finite()
            && self.backoff_multiplier >= 1.0
            && self.backoff_multiplier <= 100.0)
        {
            out.push((
                "retry.backoff_multiplier".into(),
                "must be between 1 and 100".into(),
            ));
        }
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            out.push(("retry.jitter".into(), "must be between 0 and 1".into()));
        }
        out
    }

    /// Delay before retrying after `failed_attempt` (1-based) failed.
    /// `sample` is uniform in [0, 1).
    pub fn delay_ms(&self, failed_attempt: u32, sample: f64) -> u64 {
        let exp = failed_attempt.saturating_sub(1).min(64) as i32;
        let raw = (self.backoff_base_ms as f64) * self.backoff_multiplier.powi(exp);
        let capped = raw.min(self.backoff_cap_ms as f64);
        let sample = sample.clamp(0.0, 1.0);
        let jittered = capped * (1.0 - self.jitter * sample);
        jittered.max(0.0).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exponential_then_capped() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..Default::default()
        };
        assert_eq!(p.delay_ms(1, 0.5), 1_000);
        assert_eq!(p.delay_ms(2, 0.5), 2_000);
        assert_eq!(p.delay_ms(3, 0.5), 4_000);
        assert_eq!(p.delay_ms(30, 0.5), 60_000);
    }

    #[test]
    fn problems_are_all_reported() {
        let p = RetryPolicy {
            max_attempts: 0,
            backoff_base_ms: 10,
            backoff_cap_ms: 5,
            backoff_multiplier: 0.5,
            jitter: 2.0,
        };
        assert_eq!(p.problems().len(), 4);
        assert!(RetryPolicy::default().problems().is_empty());
    }

    proptest! {
        #[test]
        fn delay_stays_within_bounds(attempt in 1u32..200, sample in 0.0f64..1.0, jitter in 0.0f64..=1.0,
                                     base in 0u64..100_000, extra in 0u64..1_000_000) {
            let p = RetryPolicy { max_attempts: 5, backoff_base_ms: base, backoff_cap_ms: base + extra,
                                  backoff_multiplier: 2.0, jitter };
            let d = p.delay_ms(attempt, sample);
            prop_assert!(d <= base + extra);
            let undelayed = RetryPolicy { jitter: 0.0, ..p.clone() }.delay_ms(attempt, sample);
            prop_assert!(d as f64 >= (undelayed as f64) * (1.0 - jitter) - 1.0);
        }
    }
}
