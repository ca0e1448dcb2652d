//! Reconnect delays: exponential growth from a minimum to a cap, with jitter so a
//! fleet of agents that lost the same server does not reconnect in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    n_failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            n_failures: 0,
        }
    }

    /// The delay before the next attempt, given a uniform sample in `[0, 1)`. The
    /// delay lies in `[base / 2, base]` where `base` doubles from `min` up to `max`
    /// on each call.
    pub fn next_delay(&mut self, sample: f64) -> Duration {
        let factor = 2f64.powi(self.n_failures.min(30) as i32);
        let base = self.min.mul_f64(factor).min(self.max);
        self.n_failures = self.n_failures.saturating_add(1);
        base.mul_f64(0.5 + 0.5 * sample.clamp(0.0, 1.0))
    }

    /// A connection succeeded: start again from `min`.
    pub fn reset(&mut self) {
        self.n_failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let mut b = Backoff::new(ms(100), ms(5000));
        let got: Vec<u64> = (0..9)
            .map(|_| b.next_delay(1.0).as_millis() as u64)
            .collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(1.0), ms(100));
    }

    #[test]
    fn jitter_stays_within_half_to_full_base() {
        let mut b = Backoff::new(ms(100), ms(5000));
        assert_eq!(b.next_delay(0.0), ms(50));
        assert_eq!(b.next_delay(0.5), ms(150));
        let bases = [400, 800, 1600, 3200, 5000, 5000, 5000];
        for (i, base) in bases.into_iter().enumerate() {
            let sample = i as f64 / bases.len() as f64;
            let d = b.next_delay(sample);
            assert!(
                d >= ms(base / 2) && d <= ms(base),
                "{d:?} outside [{}, {base}] ms",
                base / 2
            );
        }
    }

    #[test]
    fn a_cap_below_the_minimum_is_raised_to_it() {
        let mut b = Backoff::new(ms(100), ms(10));
        assert_eq!(b.next_delay(1.0), ms(100));
        assert_eq!(b.next_delay(1.0), ms(100));
    }
}
