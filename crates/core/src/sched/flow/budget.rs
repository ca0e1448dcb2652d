//! Cost budgets (seed 001): a task's own `cost_budget`, and an hourly budget
//! per agent type over a sliding one-hour window kept in one-minute buckets.
//! Costs are in the unit of the agents' `cost_factor` (per hour of work); the
//! estimate of one task is [`crate::sched::routing::cost_score`].

use super::{Reason, Refusal};
use crate::{Error, Millis};
use std::collections::{HashMap, VecDeque};

const HOUR_MS: u64 = 3_600_000;
const BUCKET_MS: u64 = 60_000;

/// Admits a task whose estimated cost on the chosen agent is within its own
/// budget (no budget: always). Waiting does not help, so the refusal carries no
/// retry hint; another, cheaper agent might.
pub fn check_task_budget(estimated_cost: f64, cost_budget: Option<f64>) -> Result<(), Refusal> {
    match cost_budget {
        Some(budget) if estimated_cost > budget => Err(Refusal {
            reason: Reason::TaskBudget,
            message: format!(
                "estimated cost {estimated_cost:.4} exceeds the task's cost_budget {budget:.4}"
            ),
            retry_after_ms: None,
        }),
        _ => Ok(()),
    }
}

/// Spend per agent type over the last hour, against per-type hourly limits.
/// Types without a limit are tracked but never refused.
#[derive(Debug, Clone, Default)]
pub struct HourlyBudgets {
    limits: HashMap<String, f64>,
    /// Per type: (bucket start, spend), oldest first.
    spend: HashMap<String, VecDeque<(Millis, f64)>>,
}

impl HourlyBudgets {
    /// No limits, nothing spent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the most `agent_type` may spend in any hour; refuses a negative or
    /// non-finite limit.
    pub fn set_limit(&mut self, agent_type: impl Into<String>, per_hour: f64) -> Result<(), Error> {
        if !(per_hour.is_finite() && per_hour >= 0.0) {
            return Err(
                Error::invalid("hourly budget must be a number of at least 0")
                    .with_field("hourly_budget"),
            );
        }
        self.limits.insert(agent_type.into(), per_hour);
        Ok(())
    }

    /// The hourly limit of `agent_type`, if it has one.
    pub fn limit(&self, agent_type: &str) -> Option<f64> {
        self.limits.get(agent_type).copied()
    }

    fn prune(window: &mut VecDeque<(Millis, f64)>, now: Millis) {
        while window
            .front()
            .is_some_and(|(start, _)| start + HOUR_MS <= now)
        {
            window.pop_front();
        }
    }

    /// Spent by `agent_type` in the hour before `now` (to the minute).
    pub fn spent(&self, agent_type: &str, now: Millis) -> f64 {
        self.spend.get(agent_type).map_or(0.0, |w| {
            w.iter()
                .filter(|(start, _)| start + HOUR_MS > now)
                .map(|(_, c)| c)
                .sum()
        })
    }

    /// Would spending `cost` more on `agent_type` now stay within its hourly
    /// limit? If not, the hint is when enough of the window's spend will have
    /// aged out, or none if `cost` alone exceeds the limit.
    pub fn check(&self, agent_type: &str, cost: f64, now: Millis) -> Result<(), Refusal> {
        let Some(limit) = self.limit(agent_type) else {
            return Ok(());
        };
        let spent = self.spent(agent_type, now);
        if spent + cost <= limit {
            return Ok(());
        }
        let retry_after_ms = if cost > limit {
            None
        } else {
            let mut remaining = spent;
            self.spend.get(agent_type).and_then(|w| {
                w.iter()
                    .filter(|(start, _)| start + HOUR_MS > now)
                    .find_map(|(start, c)| {
                        remaining -= c;
                        (remaining + cost <= limit).then(|| start + HOUR_MS - now)
                    })
            })
        };
        Err(Refusal {
            reason: Reason::HourlyBudget,
            message: format!(
                "hourly budget of agent type {agent_type:?} would be exceeded: {spent:.4} spent of {limit:.4}, {cost:.4} more asked"
            ),
            retry_after_ms,
        })
    }

    /// Adds `cost` to `agent_type`'s spend at `now` (negative corrects an
    /// earlier estimate).
    pub fn record(&mut self, agent_type: &str, cost: f64, now: Millis) {
        if !cost.is_finite() {
            return;
        }
        let window = self.spend.entry(agent_type.to_string()).or_default();
        Self::prune(window, now);
        let start = now - now % BUCKET_MS;
        match window.back_mut() {
            Some((s, c)) if *s == start => *c += cost,
            _ => window.push_back((start, cost)),
        }
    }

    /// [`check`](Self::check), and [`record`](Self::record) when admitted: call
    /// at dispatch with the task's estimated cost.
    pub fn charge(&mut self, agent_type: &str, cost: f64, now: Millis) -> Result<(), Refusal> {
        self.check(agent_type, cost, now)?;
        self.record(agent_type, cost, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn task_budget() {
        assert!(check_task_budget(49.0, Some(50.0)).is_ok());
        assert!(check_task_budget(50.0, Some(50.0)).is_ok());
        assert!(check_task_budget(1e9, None).is_ok());
        let r = check_task_budget(50.5, Some(50.0)).unwrap_err();
        assert_eq!(r.reason, Reason::TaskBudget);
        assert_eq!(r.retry_after_ms, None);
        assert_eq!(r.to_error().code, crate::ErrorCode::FailedPrecondition);
        assert_eq!(
            r.message,
            "estimated cost 50.5000 exceeds the task's cost_budget 50.0000"
        );
    }

    #[test]
    fn hourly_window_slides_and_hints_when_room_returns() {
        let mut b = HourlyBudgets::new();
        b.set_limit("gpu", 10.0).unwrap();
        b.charge("gpu", 4.0, 0).unwrap();
        b.charge("gpu", 4.0, 30 * 60_000).unwrap();
        assert_eq!(b.spent("gpu", 30 * 60_000), 8.0);
        let r = b.charge("gpu", 3.0, 45 * 60_000).unwrap_err();
        assert_eq!(r.reason, Reason::HourlyBudget);
        // The first 4 ages out at 60 min, 15 min from now.
        assert_eq!(r.retry_after_ms, Some(15 * 60_000));
        assert_eq!(
            b.spent("gpu", 45 * 60_000),
            8.0,
            "a refusal records nothing"
        );
        b.charge("gpu", 2.0, 45 * 60_000).unwrap();
        assert_eq!(b.spent("gpu", 60 * 60_000), 6.0);
        b.charge("gpu", 3.0, 60 * 60_000).unwrap();
        // Alone larger than the limit: no hint.
        assert_eq!(b.check("gpu", 11.0, 0).unwrap_err().retry_after_ms, None);
        // Unlimited types are never refused but are tracked.
        b.charge("cpu", 1e6, 0).unwrap();
        assert_eq!(b.spent("cpu", 0), 1e6);
        assert!(b.set_limit("x", -1.0).is_err());
        assert!(b.set_limit("x", f64::INFINITY).is_err());
    }

    proptest! {
        /// Whatever is charged, no hour's accepted spend exceeds the limit.
        #[test]
        fn charges_never_exceed_the_limit_in_any_hour(
            charges in proptest::collection::vec((0u64..600_000, 0.0f64..5.0), 1..200),
            limit in 1.0f64..30.0,
        ) {
            let mut b = HourlyBudgets::new();
            b.set_limit("t", limit).unwrap();
            let mut now = 0;
            let mut accepted: Vec<(Millis, f64)> = Vec::new();
            for (gap, cost) in charges {
                now += gap;
                if b.charge("t", cost, now).is_ok() {
                    accepted.push((now - now % BUCKET_MS, cost));
                }
                let in_window: f64 = accepted.iter()
                    .filter(|(s, _)| s + HOUR_MS > now).map(|(_, c)| c).sum();
                prop_assert!(in_window <= limit + 1e-9);
            }
        }
    }
}
