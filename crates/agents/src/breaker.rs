//! A circuit breaker per destination (`host:port`), shared by every task of the
//! process, so that a dead API stops being hammered by every task that calls it.
//! Time is an argument: the state machine is pure and tested without a clock.
//!
//! Closed: requests pass, consecutive failures are counted; at
//! `failure_threshold` the breaker opens. Open: requests are refused until
//! `cooldown` has passed since it opened. Half-open: one probe passes (another one
//! if the probe did not report back within `cooldown`); its success closes the
//! breaker, its failure opens it again for a full cooldown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub failure_threshold: u32,
    pub cooldown: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// How long a request waits while another one probes a half-open breaker.
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    options: Options,
    state: State,
}

impl Breaker {
    pub fn new(options: Options) -> Self {
        Self {
            options,
            state: State::Closed { failures: 0 },
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// `Ok` when a request may go now, else how long to wait.
    pub fn admit(&mut self, now: Instant) -> Result<(), Duration> {
        match self.state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                self.state = State::HalfOpen { probe_started: now };
                Ok(())
            }
            State::HalfOpen { probe_started } => {
                if now.saturating_duration_since(probe_started) >= self.options.cooldown {
                    // The probe never reported back: let another one try.
                    self.state = State::HalfOpen { probe_started: now };
                    Ok(())
                } else {
                    Err(PROBE_WAIT.min(self.options.cooldown))
                }
            }
        }
    }

    pub fn record_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    pub fn record_failure(&mut self, now: Instant) {
        let open = State::Open {
            until: now + self.options.cooldown,
        };
        self.state = match self.state {
            State::Closed { failures } if failures + 1 >= self.options.failure_threshold => open,
            State::Closed { failures } => State::Closed {
                failures: failures + 1,
            },
            State::HalfOpen { .. } => open,
            // A request admitted before the breaker opened: the cooldown stands.
            State::Open { until } => State::Open { until },
        };
    }
}

/// The breakers of every destination seen, created closed on first use.
#[derive(Debug, Default)]
pub struct Breakers {
    options: Options,
    by_destination: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    pub fn new(options: Options) -> Self {
        Self {
            options,
            by_destination: Mutex::default(),
        }
    }

    pub fn options(&self) -> Options {
        self.options
    }

    pub fn admit(&self, destination: &str, now: Instant) -> Result<(), Duration> {
        self.with(destination, |b| b.admit(now))
    }

    pub fn record_success(&self, destination: &str) {
        self.with(destination, Breaker::record_success)
    }

    pub fn record_failure(&self, destination: &str, now: Instant) {
        self.with(destination, |b| b.record_failure(now))
    }

    pub fn state(&self, destination: &str) -> State {
        self.with(destination, |b| b.state())
    }

    fn with<T>(&self, destination: &str, f: impl FnOnce(&mut Breaker) -> T) -> T {
        // A panic elsewhere while holding the lock leaves plain data behind: keep going.
        let mut map = self
            .by_destination
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let breaker = map
            .entry(destination.to_string())
            .or_insert_with(|| Breaker::new(self.options));
        f(breaker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn opens_after_consecutive_failures_and_half_opens_after_the_cooldown() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Options {
            failure_threshold: 3,
            cooldown: 10 * S,
        });
        b.record_failure(t0);
        b.record_failure(t0);
        b.record_success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
        for _ in 0..2 {
            b.record_failure(t0);
        }
        assert_eq!(b.admit(t0), Ok(()));
        b.record_failure(t0 + S);
        assert_eq!(b.state(), State::Open { until: t0 + 11 * S });
        assert_eq!(b.admit(t0 + 4 * S), Err(7 * S));
        // After the cooldown: one probe, the others wait.
        assert_eq!(b.admit(t0 + 11 * S), Ok(()));
        assert_eq!(b.admit(t0 + 11 * S), Err(S));
        // The probe fails: open for a full cooldown again.
        b.record_failure(t0 + 12 * S);
        assert_eq!(b.admit(t0 + 12 * S), Err(10 * S));
        // The next probe succeeds: closed.
        assert_eq!(b.admit(t0 + 22 * S), Ok(()));
        b.record_success();
        assert_eq!(b.state(), State::Closed { failures: 0 });
        assert_eq!(b.admit(t0 + 22 * S), Ok(()));
    }

    #[test]
    fn a_lost_probe_does_not_block_forever() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Options {
            failure_threshold: 1,
            cooldown: 10 * S,
        });
        b.record_failure(t0);
        assert_eq!(b.admit(t0 + 10 * S), Ok(()));
        assert_eq!(b.admit(t0 + 19 * S), Err(S));
        assert_eq!(b.admit(t0 + 20 * S), Ok(()));
    }

    #[test]
    fn late_failures_do_not_extend_an_open_breaker() {
        let t0 = Instant::now();
        let mut b = Breaker::new(Options {
            failure_threshold: 1,
            cooldown: 10 * S,
        });
        b.record_failure(t0);
        b.record_failure(t0 + 5 * S);
        assert_eq!(b.admit(t0 + 5 * S), Err(5 * S));
    }

    #[test]
    fn destinations_are_independent() {
        let t0 = Instant::now();
        let all = Breakers::new(Options {
            failure_threshold: 1,
            cooldown: 10 * S,
        });
        all.record_failure("a:80", t0);
        assert_eq!(all.admit("a:80", t0), Err(10 * S));
        assert_eq!(all.admit("b:80", t0), Ok(()));
        assert_eq!(all.state("b:80"), State::Closed { failures: 0 });
    }
}
