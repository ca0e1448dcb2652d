//! Flow control: the order in which queued tasks are served, deadlines, load
//! shedding, rate limits ([`rate`]), concurrency keys ([`concurrency`]),
//! preemption, and cost budgets ([`budget`]).
//!
//! Every refusal is a [`Refusal`]: a reason and, when waiting helps, how long to
//! wait. [`Refusal::to_error`] turns it into the `resource_exhausted` error the
//! APIs answer with (HTTP 429 / gRPC RESOURCE_EXHAUSTED, `Retry-After` from
//! `details.retry_after_ms`).

pub mod budget;
pub mod concurrency;
pub mod rate;

use crate::{Error, ErrorCode, Millis, Priority, TaskId};
use std::cmp::{Ordering, Reverse};

/// Why a task was not admitted or dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The system is past its shedding threshold for this priority.
    Overloaded,
    /// The task's rate-limit bucket is empty.
    RateLimited,
    /// The estimated cost exceeds the task's own `cost_budget`.
    TaskBudget,
    /// The agent type's hourly budget would be exceeded.
    HourlyBudget,
}

impl Reason {
    /// The reason as the API shows it in `details.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Overloaded => "overloaded",
            Reason::RateLimited => "rate_limited",
            Reason::TaskBudget => "task_budget",
            Reason::HourlyBudget => "hourly_budget",
        }
    }
}

/// A refusal: why, a message for people, and when a retry may succeed (`None`
/// when waiting will not help, such as a task whose estimate exceeds its budget).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Why.
    pub reason: Reason,
    /// What people read.
    pub message: String,
    /// When a retry may succeed; `None` when waiting will not help.
    pub retry_after_ms: Option<u64>,
}

impl Refusal {
    /// `resource_exhausted`, or `failed_precondition` when waiting cannot help,
    /// with `details: {reason, retry_after_ms}`.
    pub fn to_error(&self) -> Error {
        let code = if self.retry_after_ms.is_some() {
            ErrorCode::ResourceExhausted
        } else {
            ErrorCode::FailedPrecondition
        };
        let mut details = serde_json::json!({ "reason": self.reason.as_str() });
        if let Some(ms) = self.retry_after_ms {
            details["retry_after_ms"] = ms.into();
        }
        Error::new(code, self.message.clone()).with_details(details)
    }
}

/// The queue order of a task: higher priority first, then earliest deadline
/// (tasks without one after those with one), then submission order (`seq`).
/// Smaller keys are served first, so it fits a `BinaryHeap<Reverse<_>>` or a
/// `BTreeMap` directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    priority: Reverse<Priority>,
    deadline_ms: Millis,
    seq: u64,
}

impl QueueKey {
    /// The key of a task; `seq` is its submission order (any increasing number).
    pub fn new(priority: Priority, deadline_ms: Option<Millis>, seq: u64) -> Self {
        Self {
            priority: Reverse(priority),
            deadline_ms: deadline_ms.unwrap_or(Millis::MAX),
            seq,
        }
    }
}

/// Compares two tasks by [`QueueKey`]: `Less` means `a` is served first.
pub fn queue_order(
    a: (Priority, Option<Millis>, u64),
    b: (Priority, Option<Millis>, u64),
) -> Ordering {
    QueueKey::new(a.0, a.1, a.2).cmp(&QueueKey::new(b.0, b.1, b.2))
}

/// A task whose deadline has passed must not start: fail it with this error
/// (`deadline_exceeded`). `Ok` while the deadline is ahead or there is none.
pub fn check_deadline(deadline_ms: Option<Millis>, now: Millis) -> Result<(), Error> {
    match deadline_ms {
        Some(d) if now >= d => Err(Error::new(
            ErrorCode::DeadlineExceeded,
            format!("the task's deadline passed {} ms ago", now - d),
        )
        .with_details(serde_json::json!({ "deadline_ms": d }))),
        _ => Ok(()),
    }
}

/// Load shedding thresholds, as fractions of the configured capacity: a task of
/// a priority is refused once the load is at or above its threshold.
///
/// Defaults (seed 001's 90 %): background at 90 %, low at 95 %, normal at 100 %;
/// high and critical are never shed (capacity itself is enforced elsewhere).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShedPolicy {
    /// Indexed by [`Priority::rank`]: background, low, normal, high, critical.
    /// `None` never sheds.
    pub thresholds: [Option<f64>; 5],
    /// The retry hint at the threshold; it grows to `max_retry_after_ms` as the
    /// load approaches double the capacity.
    pub retry_after_ms: u64,
    /// The longest retry hint.
    pub max_retry_after_ms: u64,
}

impl Default for ShedPolicy {
    fn default() -> Self {
        Self {
            thresholds: [Some(0.90), Some(0.95), Some(1.0), None, None],
            retry_after_ms: 1_000,
            max_retry_after_ms: 30_000,
        }
    }
}

impl ShedPolicy {
    /// Refuses thresholds that are not positive numbers, or a lower priority
    /// with a higher threshold than a higher one (shedding must go in priority
    /// order).
    pub fn validate(&self) -> Result<(), Error> {
        let mut last = 0.0;
        for (rank, t) in self.thresholds.iter().enumerate() {
            let Some(t) = *t else {
                last = f64::INFINITY;
                continue;
            };
            if !(t.is_finite() && t > 0.0) {
                return Err(Error::invalid(format!(
                    "shedding threshold for {} must be a positive number",
                    Priority::from_rank(rank as u8).unwrap_or_default()
                ))
                .with_field("shed_thresholds"));
            }
            if t < last {
                return Err(Error::invalid(
                    "shedding thresholds must not decrease from background to critical",
                )
                .with_field("shed_thresholds"));
            }
            last = t;
        }
        Ok(())
    }

    /// Admits or sheds a new task of `priority` when `load` units of work
    /// (queued and running) are held against `capacity`. A capacity of 0 means
    /// unlimited.
    pub fn admit(&self, priority: Priority, load: u64, capacity: u64) -> Result<(), Refusal> {
        if capacity == 0 {
            return Ok(());
        }
        let Some(threshold) = self.thresholds[priority.rank() as usize] else {
            return Ok(());
        };
        let utilization = load as f64 / capacity as f64;
        if utilization < threshold {
            return Ok(());
        }
        // Scale the hint with how far past the threshold we are.
        let excess = ((utilization - threshold) / threshold).clamp(0.0, 1.0);
        let span = self.max_retry_after_ms.saturating_sub(self.retry_after_ms) as f64;
        let retry_after_ms = self.retry_after_ms + (span * excess).round() as u64;
        Err(Refusal {
            reason: Reason::Overloaded,
            message: format!(
                "overloaded: {:.0}% of capacity in use, {priority} tasks are refused from {:.0}%",
                utilization * 100.0,
                threshold * 100.0
            ),
            retry_after_ms: Some(retry_after_ms),
        })
    }
}

/// A running task, as preemption sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningTask {
    /// The task.
    pub task_id: TaskId,
    /// Its priority.
    pub priority: Priority,
    /// When the current attempt started.
    pub started_at_ms: Millis,
}

/// Which tasks may preempt: those at or above `min_priority` (default
/// critical), and only tasks strictly below their own priority are preempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreemptPolicy {
    /// The lowest priority that may preempt.
    pub min_priority: Priority,
}

impl Default for PreemptPolicy {
    fn default() -> Self {
        Self {
            min_priority: Priority::Critical,
        }
    }
}

impl PreemptPolicy {
    /// The running task to preempt so that a task of `incoming` priority can
    /// start, when there are no free slots: the lowest priority among those
    /// strictly below `incoming`, and among those the most recently started
    /// (least work lost), then the highest task id. `None` when there is a free
    /// slot, `incoming` may not preempt, or nothing running is lower. The caller
    /// re-queues the victim without counting the attempt against it.
    pub fn choose_victim<'a>(
        &self,
        incoming: Priority,
        free_slots: usize,
        running: &'a [RunningTask],
    ) -> Option<&'a RunningTask> {
        if free_slots > 0 || incoming < self.min_priority {
            return None;
        }
        running
            .iter()
            .filter(|r| r.priority < incoming)
            .min_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then(b.started_at_ms.cmp(&a.started_at_ms))
                    .then(b.task_id.cmp(&a.task_id))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn priority_first_then_earliest_deadline_then_submission() {
        let mut tasks = [
            ("normal-no-deadline", Priority::Normal, None, 0),
            ("high-late", Priority::High, Some(9_000), 1),
            ("normal-soon", Priority::Normal, Some(1_000), 2),
            ("critical", Priority::Critical, None, 3),
            ("high-soon", Priority::High, Some(2_000), 4),
            ("normal-soon-later-seq", Priority::Normal, Some(1_000), 5),
            ("background-urgent", Priority::Background, Some(1), 6),
        ];
        tasks.sort_by_key(|t| QueueKey::new(t.1, t.2, t.3));
        let order: Vec<&str> = tasks.iter().map(|t| t.0).collect();
        assert_eq!(
            order,
            [
                "critical",
                "high-soon",
                "high-late",
                "normal-soon",
                "normal-soon-later-seq",
                "normal-no-deadline",
                "background-urgent",
            ]
        );
        assert_eq!(
            queue_order((Priority::Low, Some(5), 0), (Priority::Low, None, 0)),
            Ordering::Less
        );
    }

    #[test]
    fn past_deadline_is_a_deadline_error() {
        assert!(check_deadline(None, 10).is_ok());
        assert!(check_deadline(Some(11), 10).is_ok());
        let e = check_deadline(Some(10), 250).unwrap_err();
        assert_eq!(e.code, ErrorCode::DeadlineExceeded);
        assert_eq!(e.message, "the task's deadline passed 240 ms ago");
        assert!(check_deadline(Some(10), 10).is_err());
    }

    #[test]
    fn shedding_refuses_lowest_priorities_first() {
        let p = ShedPolicy::default();
        let admitted = |load: u64| -> Vec<Priority> {
            Priority::ALL
                .into_iter()
                .filter(|pr| p.admit(*pr, load, 1_000).is_ok())
                .collect()
        };
        use Priority::*;
        assert_eq!(admitted(899), [Critical, High, Normal, Low, Background]);
        assert_eq!(admitted(900), [Critical, High, Normal, Low]);
        assert_eq!(admitted(950), [Critical, High, Normal]);
        assert_eq!(admitted(1_000), [Critical, High]);
        assert_eq!(admitted(5_000), [Critical, High]);
        assert!(p.admit(Background, 1_000_000, 0).is_ok(), "0 = unlimited");
        let r = p.admit(Background, 900, 1_000).unwrap_err();
        assert_eq!(r.reason, Reason::Overloaded);
        assert_eq!(r.retry_after_ms, Some(1_000));
        // Double the threshold and beyond: the longest hint.
        assert_eq!(
            p.admit(Background, 1_800, 1_000)
                .unwrap_err()
                .retry_after_ms,
            Some(30_000)
        );
        let e = r.to_error();
        assert_eq!(e.code, ErrorCode::ResourceExhausted);
        assert_eq!(e.details["retry_after_ms"], 1_000);
        assert_eq!(e.details["reason"], "overloaded");
        assert_eq!(
            e.message,
            "overloaded: 90% of capacity in use, background tasks are refused from 90%"
        );
    }

    #[test]
    fn shed_policy_validation() {
        assert!(ShedPolicy::default().validate().is_ok());
        let inverted = ShedPolicy {
            thresholds: [Some(0.99), Some(0.9), None, None, None],
            ..Default::default()
        };
        assert!(inverted.validate().is_err());
        let shed_high_only = ShedPolicy {
            thresholds: [None, None, None, Some(0.5), None],
            ..Default::default()
        };
        assert!(
            shed_high_only.validate().is_err(),
            "lower levels must shed first"
        );
        let negative = ShedPolicy {
            thresholds: [Some(-0.1), None, None, None, None],
            ..Default::default()
        };
        assert!(negative.validate().is_err());
    }

    proptest! {
        /// If a priority is shed at some load, every lower priority is too.
        #[test]
        fn shedding_respects_priority_order(load in 0u64..3_000, capacity in 1u64..2_000) {
            let p = ShedPolicy::default();
            for pr in Priority::ALL {
                if p.admit(pr, load, capacity).is_err() {
                    for lower in Priority::ALL.into_iter().filter(|l| *l < pr) {
                        prop_assert!(p.admit(lower, load, capacity).is_err());
                    }
                }
            }
            prop_assert!(p.admit(Priority::Critical, load, capacity).is_ok());
        }
    }

    fn running(id: &str, priority: Priority, started: Millis) -> RunningTask {
        RunningTask {
            task_id: TaskId::parse(id).unwrap(),
            priority,
            started_at_ms: started,
        }
    }

    #[test]
    fn preemption_takes_the_lowest_most_recent() {
        let p = PreemptPolicy::default();
        let tasks = [
            running("n1", Priority::Normal, 0),
            running("b-old", Priority::Background, 10),
            running("b-new", Priority::Background, 20),
            running("h1", Priority::High, 5),
        ];
        let v = p.choose_victim(Priority::Critical, 0, &tasks).unwrap();
        assert_eq!(v.task_id.as_str(), "b-new");
        assert_eq!(
            p.choose_victim(Priority::Critical, 1, &tasks),
            None,
            "a free slot"
        );
        assert_eq!(
            p.choose_victim(Priority::High, 0, &tasks),
            None,
            "only critical preempts"
        );
        let all_critical = [running("c", Priority::Critical, 0)];
        assert_eq!(p.choose_victim(Priority::Critical, 0, &all_critical), None);
        let relaxed = PreemptPolicy {
            min_priority: Priority::High,
        };
        let only_normal_and_high = [
            running("n", Priority::Normal, 0),
            running("h", Priority::High, 1),
        ];
        assert_eq!(
            relaxed
                .choose_victim(Priority::High, 0, &only_normal_and_high)
                .unwrap()
                .task_id
                .as_str(),
            "n"
        );
    }

    proptest! {
        #[test]
        fn a_victim_is_always_strictly_lower_and_minimal(
            prios in proptest::collection::vec((0u8..5, 0u64..100), 0..20),
        ) {
            let tasks: Vec<RunningTask> = prios.iter().enumerate()
                .map(|(i, (r, s))| running(&format!("t{i}"), Priority::from_rank(*r).unwrap(), *s))
                .collect();
            let p = PreemptPolicy::default();
            match p.choose_victim(Priority::Critical, 0, &tasks) {
                Some(v) => {
                    prop_assert!(v.priority < Priority::Critical);
                    prop_assert!(tasks.iter().all(|t| t.priority >= v.priority));
                }
                None => prop_assert!(tasks.iter().all(|t| t.priority == Priority::Critical)),
            }
        }
    }
}
