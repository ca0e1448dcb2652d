//! Circuit breakers, one per agent (seed 001): closed → open after 5 consecutive
//! failures → half-open 60 s later, when one probe task may go through → closed
//! if it succeeds, open again if it fails. Failures that are the task's own fault
//! (permanent input errors) do not count against the agent.

use super::routing::Snapshot;
use crate::lifecycle::FailureKind;
use crate::{AgentId, Error, Millis};
use std::collections::HashMap;

/// Breaker settings; defaults are seed 001's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before a probe is allowed.
    pub open_ms: u64,
    /// Tasks let through at once while half-open.
    pub half_open_probes: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 60_000,
            half_open_probes: 1,
        }
    }
}

impl Options {
    /// Refuses a zero threshold or zero probes.
    pub fn validate(&self) -> Result<(), Error> {
        if self.failure_threshold == 0 {
            return Err(
                Error::invalid("breaker failure_threshold must be at least 1")
                    .with_field("failure_threshold"),
            );
        }
        if self.half_open_probes == 0 {
            return Err(
                Error::invalid("breaker half_open_probes must be at least 1")
                    .with_field("half_open_probes"),
            );
        }
        Ok(())
    }
}

/// The breaker's state as stored. An `Open` breaker whose time is up behaves as
/// half-open; [`Breaker::phase`] reports that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Tasks flow.
    Closed {
        /// Failures since the last success.
        consecutive_failures: u32,
    },
    /// No tasks until `until_ms`.
    Open {
        /// When probes may start.
        until_ms: Millis,
    },
    /// A probe went out; its result closes or reopens the breaker.
    HalfOpen {
        /// Probes sent and not yet finished.
        probes_in_flight: u32,
    },
}

/// The state names shown over the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Tasks flow; failures are counted.
    Closed,
    /// No tasks until the open period ends.
    Open,
    /// The open period ended: probes may go through.
    HalfOpen,
}

impl Phase {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }
}

/// How a task attempt on the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The attempt succeeded.
    Success,
    /// The agent failed (error, timeout, lost): counts.
    Failure,
    /// The task's own fault (bad input, a permanent error): does not count, and
    /// does not reset the run of failures either.
    TaskFault,
}

impl Outcome {
    /// Maps a lifecycle failure: `permanent` is the task's fault, everything
    /// else (retryable, timeout, agent lost, lease expired) the agent's.
    pub fn from_failure(kind: FailureKind) -> Outcome {
        match kind {
            FailureKind::Permanent => Outcome::TaskFault,
            FailureKind::Retryable
            | FailureKind::Timeout
            | FailureKind::AgentLost
            | FailureKind::LeaseExpired => Outcome::Failure,
        }
    }
}

/// One agent's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    state: State,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: State::Closed {
                consecutive_failures: 0,
            },
        }
    }
}

impl Breaker {
    /// The stored state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The phase at `now`: an open breaker past its time is half-open.
    pub fn phase(&self, now: Millis) -> Phase {
        match self.state {
            State::Closed { .. } => Phase::Closed,
            State::Open { until_ms } if now < until_ms => Phase::Open,
            State::Open { .. } | State::HalfOpen { .. } => Phase::HalfOpen,
        }
    }

    /// May a task be sent to the agent at `now`?
    pub fn allows(&self, opts: &Options, now: Millis) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until_ms } => now >= until_ms,
            State::HalfOpen { probes_in_flight } => probes_in_flight < opts.half_open_probes,
        }
    }

    /// A task was sent to the agent: while half-open it is a probe. Returns false
    /// (and changes nothing) if the breaker does not allow it.
    pub fn on_dispatch(&mut self, opts: &Options, now: Millis) -> bool {
        if !self.allows(opts, now) {
            return false;
        }
        match &mut self.state {
            State::Closed { .. } => {}
            State::Open { .. } => {
                self.state = State::HalfOpen {
                    probes_in_flight: 1,
                }
            }
            State::HalfOpen { probes_in_flight } => *probes_in_flight += 1,
        }
        true
    }

    /// Records how an attempt ended; returns the new phase when it changed.
    pub fn record(&mut self, opts: &Options, outcome: Outcome, now: Millis) -> Option<Phase> {
        let before = self.phase(now);
        self.state = match (self.state, outcome) {
            (state, Outcome::TaskFault) => match state {
                // A probe that ended in the task's own fault proves nothing:
                // free its slot so another probe can go.
                State::HalfOpen { probes_in_flight } => State::HalfOpen {
                    probes_in_flight: probes_in_flight.saturating_sub(1),
                },
                other => other,
            },
            (State::Closed { .. }, Outcome::Success) => State::Closed {
                consecutive_failures: 0,
            },
            (
                State::Closed {
                    consecutive_failures,
                },
                Outcome::Failure,
            ) => {
                let n = consecutive_failures + 1;
                if n >= opts.failure_threshold {
                    State::Open {
                        until_ms: now + opts.open_ms,
                    }
                } else {
                    State::Closed {
                        consecutive_failures: n,
                    }
                }
            }
            (State::HalfOpen { .. } | State::Open { .. }, Outcome::Success) => State::Closed {
                consecutive_failures: 0,
            },
            (State::HalfOpen { .. }, Outcome::Failure) => State::Open {
                until_ms: now + opts.open_ms,
            },
            // A late result of a task sent before the breaker opened: the
            // breaker is already open, the clock is not restarted.
            (State::Open { until_ms }, Outcome::Failure) if now < until_ms => {
                State::Open { until_ms }
            }
            (State::Open { .. }, Outcome::Failure) => State::Open {
                until_ms: now + opts.open_ms,
            },
        };
        let after = self.phase(now);
        (after != before).then_some(after)
    }
}

/// The breakers of every agent; agents without an entry are closed.
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    opts: Options,
    by_agent: HashMap<AgentId, Breaker>,
}

impl Breakers {
    /// Every agent closed; refuses invalid options.
    pub fn new(opts: Options) -> Result<Self, Error> {
        opts.validate()?;
        Ok(Self {
            opts,
            by_agent: HashMap::new(),
        })
    }

    /// The options every breaker uses.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// One agent's breaker (closed if it has none).
    pub fn get(&self, id: &AgentId) -> Breaker {
        self.by_agent.get(id).copied().unwrap_or_default()
    }

    /// May a task be sent to `id` at `now`?
    pub fn allows(&self, id: &AgentId, now: Millis) -> bool {
        self.by_agent
            .get(id)
            .is_none_or(|b| b.allows(&self.opts, now))
    }

    /// The phase of `id`'s breaker at `now`.
    pub fn phase(&self, id: &AgentId, now: Millis) -> Phase {
        self.get(id).phase(now)
    }

    /// See [`Breaker::on_dispatch`].
    pub fn on_dispatch(&mut self, id: &AgentId, now: Millis) -> bool {
        match self.by_agent.get_mut(id) {
            Some(b) => b.on_dispatch(&self.opts, now),
            None => true,
        }
    }

    /// See [`Breaker::record`]. Closed breakers with no failures are dropped, so
    /// memory follows the number of troubled agents.
    pub fn record(&mut self, id: &AgentId, outcome: Outcome, now: Millis) -> Option<Phase> {
        let b = self.by_agent.entry(id.clone()).or_default();
        let changed = b.record(&self.opts, outcome, now);
        if b.state
            == (State::Closed {
                consecutive_failures: 0,
            })
        {
            self.by_agent.remove(id);
        }
        changed
    }

    /// Forgets a deregistered agent.
    pub fn remove(&mut self, id: &AgentId) {
        self.by_agent.remove(id);
    }

    /// Marks every agent whose breaker does not allow a task now as not
    /// routable, which takes it out of every strategy.
    pub fn exclude_open(&self, snap: &mut Snapshot, now: Millis) {
        if self.by_agent.is_empty() {
            return;
        }
        for pos in 0..snap.len() {
            if !self.allows(&snap[pos].agent_id, now) {
                snap.set_routable(pos, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const O: Options = Options {
        failure_threshold: 5,
        open_ms: 60_000,
        half_open_probes: 1,
    };

    #[test]
    fn opens_after_five_failures_and_half_opens_after_sixty_seconds() {
        let mut b = Breaker::default();
        for i in 0..4 {
            assert_eq!(b.record(&O, Outcome::Failure, i), None);
            assert!(b.allows(&O, i));
        }
        assert_eq!(b.record(&O, Outcome::Failure, 1_000), Some(Phase::Open));
        assert_eq!(b.state(), State::Open { until_ms: 61_000 });
        assert!(!b.allows(&O, 60_999));
        assert_eq!(b.phase(60_999), Phase::Open);
        assert_eq!(b.phase(61_000), Phase::HalfOpen);
        assert!(b.allows(&O, 61_000));
        // One probe at a time.
        assert!(b.on_dispatch(&O, 61_000));
        assert!(!b.allows(&O, 61_001));
        assert!(!b.on_dispatch(&O, 61_001));
        assert_eq!(b.record(&O, Outcome::Success, 62_000), Some(Phase::Closed));
        assert_eq!(
            b.state(),
            State::Closed {
                consecutive_failures: 0
            }
        );
    }

    #[test]
    fn failed_probe_reopens_for_another_full_period() {
        let mut b = Breaker::default();
        for _ in 0..5 {
            b.record(&O, Outcome::Failure, 0);
        }
        assert!(b.on_dispatch(&O, 60_000));
        assert_eq!(b.record(&O, Outcome::Failure, 60_500), Some(Phase::Open));
        assert_eq!(b.state(), State::Open { until_ms: 120_500 });
    }

    #[test]
    fn success_resets_the_count_and_task_faults_do_not_count() {
        let mut b = Breaker::default();
        for _ in 0..4 {
            b.record(&O, Outcome::Failure, 0);
        }
        b.record(&O, Outcome::Success, 0);
        for _ in 0..4 {
            b.record(&O, Outcome::Failure, 0);
        }
        assert_eq!(b.phase(0), Phase::Closed);
        for _ in 0..100 {
            b.record(&O, Outcome::from_failure(FailureKind::Permanent), 0);
        }
        assert_eq!(
            b.state(),
            State::Closed {
                consecutive_failures: 4
            }
        );
        assert_eq!(
            b.record(&O, Outcome::from_failure(FailureKind::Timeout), 0),
            Some(Phase::Open)
        );
        // A late failure while open does not push the half-open time back.
        b.record(&O, Outcome::Failure, 30_000);
        assert_eq!(b.state(), State::Open { until_ms: 60_000 });
    }

    #[test]
    fn a_probe_ending_in_a_task_fault_frees_the_probe_slot() {
        let mut b = Breaker::default();
        for _ in 0..5 {
            b.record(&O, Outcome::Failure, 0);
        }
        assert!(b.on_dispatch(&O, 60_000));
        assert!(!b.allows(&O, 60_000));
        assert_eq!(b.record(&O, Outcome::TaskFault, 60_001), None);
        assert!(b.allows(&O, 60_001));
    }

    #[test]
    fn configurable_and_validated() {
        let o = Options {
            failure_threshold: 2,
            open_ms: 10,
            half_open_probes: 2,
        };
        let mut b = Breaker::default();
        b.record(&o, Outcome::Failure, 0);
        assert_eq!(b.record(&o, Outcome::Failure, 0), Some(Phase::Open));
        assert!(b.on_dispatch(&o, 10));
        assert!(b.on_dispatch(&o, 10));
        assert!(!b.on_dispatch(&o, 10));
        assert!(Breakers::new(Options {
            failure_threshold: 0,
            ..O
        })
        .is_err());
    }

    proptest! {
        /// Against a model: open exactly when the last `threshold` counted
        /// outcomes since the last success were failures (while closed).
        #[test]
        fn closed_breaker_opens_exactly_at_the_threshold(
            outcomes in proptest::collection::vec(0u8..3, 0..40),
        ) {
            let mut b = Breaker::default();
            let mut run = 0u32;
            for (t, o) in outcomes.iter().enumerate() {
                let outcome = [Outcome::Success, Outcome::Failure, Outcome::TaskFault][*o as usize];
                b.record(&O, outcome, t as u64);
                match outcome {
                    Outcome::Success => run = 0,
                    Outcome::Failure => run += 1,
                    Outcome::TaskFault => {}
                }
                if run >= O.failure_threshold {
                    prop_assert_eq!(b.phase(t as u64), Phase::Open);
                    return Ok(());
                }
                prop_assert_eq!(b.state(), State::Closed { consecutive_failures: run });
            }
        }
    }
}
