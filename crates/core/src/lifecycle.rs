//! The task lifecycle as a pure state machine:
//! `apply(state, command, ctx) -> Result<Transition, Refusal>`.
//!
//! ```text
//!            claim                succeed
//!  queued ─────────▶ running ─────────────▶ completed
//!    ▲                 │  fail (retryable, attempts left)
//!    │   promote       ▼
//!    └────────── retry_wait
//!                      running ── fail (permanent | deadline) ──▶ failed
//!                      running ── fail (no attempts left)     ──▶ dead_lettered ── reprocess ──▶ queued
//!  queued | running | retry_wait ── cancel ──▶ cancelled
//!  waiting ── release ──▶ queued       (a task submitted with dependencies)
//!  waiting ── cancel  ──▶ cancelled    (a dependency failed, or a client cancelled)
//! ```
//!
//! Attempt numbers only grow: each claim starts attempt `n + 1`, and a result must
//! name the current attempt (a fencing token) or it is refused as stale. Every
//! accepted transition produces exactly one [`TaskEvent`], kept on the state.

use crate::{AgentId, Millis, RetryPolicy, TaskSpec};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Running,
    RetryWait,
    Completed,
    Failed,
    Cancelled,
    DeadLettered,
    /// Submitted with dependencies that have not all completed yet: never claimed.
    /// Last, so that the storage codes of the others stay as they were.
    Waiting,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Running,
        Status::RetryWait,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::DeadLettered,
        Status::Waiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::RetryWait => "retry_wait",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::DeadLettered => "dead_lettered",
            Status::Waiting => "waiting",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, crate::Error> {
        Status::ALL.into_iter().find(|s| s.as_str() == raw).ok_or_else(|| {
            crate::Error::invalid(format!(
                "unknown status {raw:?}: use one of waiting, queued, running, retry_wait, completed, failed, cancelled, dead_lettered"
            ))
            .with_field("status")
        })
    }

    /// Storage encoding.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Status::ALL.get(code as usize).copied()
    }

    /// No command moves a task out of these, except `reprocess` out of dead_lettered.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::Failed | Status::Cancelled | Status::DeadLettered
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt failed. Decides between retry, failure and the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The handler failed; another attempt may succeed.
    Retryable,
    /// The handler says no attempt can ever succeed (bad input): fail now.
    Permanent,
    /// The attempt ran past `timeout_ms`.
    Timeout,
    /// The agent holding the attempt disconnected or went silent.
    AgentLost,
    /// The lease was not extended in time (the holder, or its replica, is gone).
    LeaseExpired,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// The handler asks to be retried no sooner than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// The last error a task ended with, as shown to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// `retryable`, `permanent`, `timeout`, `agent_lost`, `lease_expired`, `deadline_exceeded`, `retries_exhausted`
    pub kind: String,
    pub message: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Submitted,
    Started,
    Succeeded,
    AttemptFailed,
    RetryReady,
    Cancelled,
    Failed,
    DeadLettered,
    Reprocessed,
    DeadlineExceeded,
    /// Every dependency completed: the task joined the queue.
    Released,
    /// The running attempt was stopped to make room for more urgent work and the
    /// task went back to the queue; the attempt does not count against its budget.
    Preempted,
    /// The attempt was claimed but never sent to an agent (the dispatcher found
    /// it may not run yet) and the task went back to the queue, not counted.
    HandedBack,
}

/// One recorded transition: when, which attempt, which agent, from and to which status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub at_ms: Millis,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Status>,
    pub to: Status,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The mutable part of a task: everything the lifecycle changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    pub status: Status,
    /// Attempts started so far; while running, the current attempt (fencing token).
    pub attempt: u32,
    /// Attempts before this mark do not count against `max_attempts` (set by reprocess).
    #[serde(default)]
    pub attempt_floor: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_deadline_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<Millis>,
    #[serde(default)]
    pub events: Vec<TaskEvent>,
}

/// What the machine is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Start the next attempt on `agent`, leased to `lease_owner` until `lease_deadline_ms`.
    Claim {
        agent_id: AgentId,
        lease_owner: String,
        lease_deadline_ms: Millis,
    },
    /// The named attempt succeeded.
    Succeed {
        attempt: u32,
        output: serde_json::Value,
    },
    /// The named attempt failed.
    Fail {
        attempt: u32,
        failure: Failure,
    },
    /// A retry wait is over.
    Promote,
    Cancel {
        reason: Option<String>,
    },
    /// Send a dead-lettered task back to the queue with a fresh attempt budget.
    Reprocess,
    /// A waiting task's dependencies all completed: queue it.
    Release,
    /// Stop the named running attempt and queue the task again without counting
    /// the attempt (preemption). The attempt number still advances on the next
    /// claim, so a late result of the stopped attempt is refused as stale.
    Yield {
        attempt: u32,
        reason: String,
    },
    /// Queue the task again from an attempt that was claimed but never sent to
    /// an agent (the dispatcher found it may not run yet): like `Yield`, the
    /// attempt is not counted, and its event says it never reached the agent.
    HandBack {
        attempt: u32,
        reason: String,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Claim { .. } => "claim",
            Command::Succeed { .. } => "succeed",
            Command::Fail { .. } => "fail",
            Command::Promote => "promote",
            Command::Cancel { .. } => "cancel",
            Command::Reprocess => "reprocess",
            Command::Release => "release",
            Command::Yield { .. } => "yield",
            Command::HandBack { .. } => "hand_back",
        }
    }
}

/// Side effects for the caller to carry out; the machine itself does none.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Tell the agent to stop working on this attempt.
    CancelOnAgent { agent_id: AgentId, attempt: u32 },
    /// Promote the task at this time.
    WakeAt(Millis),
    /// The task reached a terminal status: wake anyone waiting for it.
    Finished(Status),
    /// The task is queued and can be dispatched.
    Ready,
}

/// Inputs that are not part of the state: the clock, the policy and a random sample.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub now: Millis,
    pub retry: &'a RetryPolicy,
    pub deadline_ms: Option<Millis>,
    /// Uniform in [0, 1), for backoff jitter.
    pub jitter_sample: f64,
}

impl<'a> Ctx<'a> {
    pub fn for_spec(spec: &'a TaskSpec, now: Millis, jitter_sample: f64) -> Self {
        Self {
            now,
            retry: &spec.retry,
            deadline_ms: spec.deadline_ms,
            jitter_sample,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: TaskState,
    pub effects: Vec<Effect>,
}

/// Why a command was refused. Nothing changes when a command is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("attempt {got} is not the current attempt of this task (current: {current}, status: {status})")]
    StaleAttempt {
        got: u32,
        current: u32,
        status: Status,
    },
    #[error("cannot {command} a task that is {from}")]
    Illegal { from: Status, command: &'static str },
}

impl From<Refusal> for crate::Error {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::StaleAttempt { .. } => {
                crate::Error::new(crate::ErrorCode::StaleAttempt, r.to_string())
            }
            Refusal::Illegal { .. } => {
                crate::Error::new(crate::ErrorCode::FailedPrecondition, r.to_string())
            }
        }
    }
}

impl TaskState {
    /// The state of a task just accepted, with its `submitted` event.
    pub fn new_queued(now: Millis) -> Self {
        TaskState {
            status: Status::Queued,
            attempt: 0,
            attempt_floor: 0,
            agent_id: None,
            lease_owner: None,
            lease_deadline_ms: None,
            ready_at_ms: None,
            output: None,
            error: None,
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
            events: vec![TaskEvent {
                at_ms: now,
                kind: EventKind::Submitted,
                from: None,
                to: Status::Queued,
                attempt: 0,
                agent_id: None,
                message: None,
            }],
        }
    }

    /// The state of a task just accepted: waiting when it has dependencies, else queued.
    pub fn new_for(spec: &TaskSpec, now: Millis) -> Self {
        let mut state = Self::new_queued(now);
        if !spec.dependencies.is_empty() {
            state.status = Status::Waiting;
            state.events[0].to = Status::Waiting;
        }
        state
    }

    /// Attempts counted against the retry budget.
    pub fn attempts_used(&self) -> u32 {
        self.attempt - self.attempt_floor
    }
}

fn failure_kind_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Retryable => "retryable",
        FailureKind::Permanent => "permanent",
        FailureKind::Timeout => "timeout",
        FailureKind::AgentLost => "agent_lost",
        FailureKind::LeaseExpired => "lease_expired",
    }
}

/// Refuses a command about any attempt but the one running now (the fencing token).
fn running_attempt(state: &TaskState, attempt: u32) -> Result<(), Refusal> {
    if state.status != Status::Running || attempt != state.attempt {
        return Err(Refusal::StaleAttempt {
            got: attempt,
            current: state.attempt,
            status: state.status,
        });
    }
    Ok(())
}

/// Applies one command. Pure: the same inputs always give the same result.
pub fn apply(state: &TaskState, command: Command, ctx: Ctx<'_>) -> Result<Transition, Refusal> {
    let now = ctx.now;
    let from = state.status;
    let mut next = state.clone();
    next.updated_at_ms = now;
    let mut effects = Vec::new();
    let command_name = command.name();
    // Yield and HandBack queue a running attempt again alike; only their event differs.
    let requeue_kind = if matches!(command, Command::HandBack { .. }) {
        EventKind::HandedBack
    } else {
        EventKind::Preempted
    };
    let illegal = || Refusal::Illegal {
        from,
        command: command_name,
    };

    let event =
        |next: &mut TaskState, kind: EventKind, agent: Option<AgentId>, message: Option<String>| {
            let attempt = next.attempt;
            let to = next.status;
            next.events.push(TaskEvent {
                at_ms: now,
                kind,
                from: Some(from),
                to,
                attempt,
                agent_id: agent,
                message,
            });
        };

    match command {
        Command::Claim {
            agent_id,
            lease_owner,
            lease_deadline_ms,
        } => {
            if from != Status::Queued {
                return Err(illegal());
            }
            if let Some(deadline) = ctx.deadline_ms {
                if now >= deadline {
                    next.status = Status::Failed;
                    next.finished_at_ms = Some(now);
                    next.error = Some(TaskError {
                        kind: "deadline_exceeded".into(),
                        message: "the task's deadline passed before it could start".into(),
                        attempt: next.attempt,
                    });
                    event(
                        &mut next,
                        EventKind::DeadlineExceeded,
                        None,
                        Some("deadline passed while queued".into()),
                    );
                    effects.push(Effect::Finished(Status::Failed));
                    return Ok(Transition {
                        state: next,
                        effects,
                    });
                }
            }
            next.status = Status::Running;
            next.attempt += 1;
            next.agent_id = Some(agent_id.clone());
            next.lease_owner = Some(lease_owner);
            next.lease_deadline_ms = Some(lease_deadline_ms);
            event(&mut next, EventKind::Started, Some(agent_id), None);
        }
        Command::Succeed { attempt, output } => {
            running_attempt(state, attempt)?;
            let agent = next.agent_id.take();
            next.status = Status::Completed;
            next.lease_owner = None;
            next.lease_deadline_ms = None;
            next.output = Some(output);
            next.error = None;
            next.finished_at_ms = Some(now);
            event(&mut next, EventKind::Succeeded, agent, None);
            effects.push(Effect::Finished(Status::Completed));
        }
        Command::Fail { attempt, failure } => {
            running_attempt(state, attempt)?;
            let agent = next.agent_id.take();
            next.lease_owner = None;
            next.lease_deadline_ms = None;
            let kind_name = failure_kind_name(failure.kind);
            next.error = Some(TaskError {
                kind: kind_name.into(),
                message: failure.message.clone(),
                attempt,
            });
            let detail = Some(format!("{kind_name}: {}", failure.message));
            if failure.kind == FailureKind::Permanent {
                next.status = Status::Failed;
                next.finished_at_ms = Some(now);
                event(&mut next, EventKind::Failed, agent, detail);
                effects.push(Effect::Finished(Status::Failed));
            } else if next.attempts_used() >= ctx.retry.max_attempts {
                next.status = Status::DeadLettered;
                next.finished_at_ms = Some(now);
                next.error = Some(TaskError {
                    kind: "retries_exhausted".into(),
                    message: format!(
                        "{} attempts failed; last: {kind_name}: {}",
                        next.attempts_used(),
                        failure.message
                    ),
                    attempt,
                });
                event(&mut next, EventKind::DeadLettered, agent, detail);
                effects.push(Effect::Finished(Status::DeadLettered));
            } else {
                let backoff = ctx.retry.delay_ms(next.attempts_used(), ctx.jitter_sample);
                let wait = failure
                    .retry_after_ms
                    .map_or(backoff, |r| r.max(backoff.min(r)));
                let ready_at = now.saturating_add(wait);
                if ctx.deadline_ms.is_some_and(|d| ready_at >= d) {
                    next.status = Status::Failed;
                    next.finished_at_ms = Some(now);
                    next.error = Some(TaskError {
                        kind: "deadline_exceeded".into(),
                        message: format!(
                            "the next retry would start after the deadline; last: {}",
                            failure.message
                        ),
                        attempt,
                    });
                    event(&mut next, EventKind::DeadlineExceeded, agent, detail);
                    effects.push(Effect::Finished(Status::Failed));
                } else {
                    next.status = Status::RetryWait;
                    next.ready_at_ms = Some(ready_at);
                    event(&mut next, EventKind::AttemptFailed, agent, detail);
                    effects.push(Effect::WakeAt(ready_at));
                }
            }
        }
        Command::Promote => {
            if from != Status::RetryWait {
                return Err(illegal());
            }
            next.status = Status::Queued;
            next.ready_at_ms = None;
            event(&mut next, EventKind::RetryReady, None, None);
            effects.push(Effect::Ready);
        }
        Command::Cancel { reason } => {
            if from.is_terminal() {
                return Err(illegal());
            }
            if from == Status::Running {
                if let Some(agent) = next.agent_id.clone() {
                    effects.push(Effect::CancelOnAgent {
                        agent_id: agent,
                        attempt: next.attempt,
                    });
                }
            }
            let agent = next.agent_id.take();
            next.status = Status::Cancelled;
            next.lease_owner = None;
            next.lease_deadline_ms = None;
            next.ready_at_ms = None;
            next.finished_at_ms = Some(now);
            event(&mut next, EventKind::Cancelled, agent, reason);
            effects.push(Effect::Finished(Status::Cancelled));
        }
        Command::Reprocess => {
            if from != Status::DeadLettered {
                return Err(illegal());
            }
            next.status = Status::Queued;
            next.attempt_floor = next.attempt;
            next.finished_at_ms = None;
            next.error = None;
            event(&mut next, EventKind::Reprocessed, None, None);
            effects.push(Effect::Ready);
        }
        Command::Yield { attempt, reason } | Command::HandBack { attempt, reason } => {
            running_attempt(state, attempt)?;
            let agent = next.agent_id.take();
            next.status = Status::Queued;
            next.lease_owner = None;
            next.lease_deadline_ms = None;
            next.attempt_floor += 1;
            event(&mut next, requeue_kind, agent, Some(reason));
            effects.push(Effect::Ready);
        }
        Command::Release => {
            if from != Status::Waiting {
                return Err(illegal());
            }
            next.status = Status::Queued;
            event(&mut next, EventKind::Released, None, None);
            effects.push(Effect::Ready);
        }
    }
    Ok(Transition {
        state: next,
        effects,
    })
}

/// The transitions `apply` can make, as (from, to). Used by tests and documentation.
pub fn allowed(from: Status, to: Status) -> bool {
    use Status::*;
    matches!(
        (from, to),
        (Queued, Running)
            | (Queued, Failed)
            | (Queued, Cancelled)
            | (Running, Completed)
            | (Running, Failed)
            | (Running, RetryWait)
            | (Running, DeadLettered)
            | (Running, Cancelled)
            | (Running, Queued)
            | (RetryWait, Queued)
            | (RetryWait, Cancelled)
            | (DeadLettered, Queued)
            | (Waiting, Queued)
            | (Waiting, Cancelled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(now: Millis, retry: &RetryPolicy) -> Ctx<'_> {
        Ctx {
            now,
            retry,
            deadline_ms: None,
            jitter_sample: 0.0,
        }
    }

    fn claim(agent: &str) -> Command {
        Command::Claim {
            agent_id: AgentId::from_trusted(agent),
            lease_owner: "s1".into(),
            lease_deadline_ms: 10_000,
        }
    }

    #[test]
    fn happy_path() {
        let p = RetryPolicy::default();
        let s = TaskState::new_queued(0);
        let s = apply(&s, claim("a"), ctx(1, &p)).unwrap().state;
        assert_eq!((s.status, s.attempt), (Status::Running, 1));
        let t = apply(
            &s,
            Command::Succeed {
                attempt: 1,
                output: serde_json::json!(1),
            },
            ctx(2, &p),
        )
        .unwrap();
        assert_eq!(t.state.status, Status::Completed);
        assert_eq!(t.effects, vec![Effect::Finished(Status::Completed)]);
        assert_eq!(t.state.events.len(), 3);
    }

    #[test]
    fn retries_then_dead_letter_then_reprocess() {
        let p = RetryPolicy {
            max_attempts: 2,
            backoff_base_ms: 100,
            jitter: 0.0,
            ..Default::default()
        };
        let fail = |a| Command::Fail {
            attempt: a,
            failure: Failure::new(FailureKind::Retryable, "boom"),
        };
        let mut s = TaskState::new_queued(0);
        s = apply(&s, claim("a"), ctx(1, &p)).unwrap().state;
        let t = apply(&s, fail(1), ctx(2, &p)).unwrap();
        assert_eq!(t.state.status, Status::RetryWait);
        assert_eq!(t.effects, vec![Effect::WakeAt(102)]);
        s = apply(&t.state, Command::Promote, ctx(102, &p))
            .unwrap()
            .state;
        s = apply(&s, claim("b"), ctx(103, &p)).unwrap().state;
        s = apply(&s, fail(2), ctx(104, &p)).unwrap().state;
        assert_eq!(s.status, Status::DeadLettered);
        assert_eq!(s.error.as_ref().unwrap().kind, "retries_exhausted");
        s = apply(&s, Command::Reprocess, ctx(200, &p)).unwrap().state;
        assert_eq!((s.status, s.attempts_used()), (Status::Queued, 0));
        s = apply(&s, claim("c"), ctx(201, &p)).unwrap().state;
        assert_eq!(
            s.attempt, 3,
            "attempt numbers keep growing across reprocess"
        );
    }

    #[test]
    fn stale_results_are_refused() {
        let p = RetryPolicy::default();
        let s = apply(&TaskState::new_queued(0), claim("a"), ctx(1, &p))
            .unwrap()
            .state;
        let r = apply(
            &s,
            Command::Succeed {
                attempt: 2,
                output: serde_json::Value::Null,
            },
            ctx(2, &p),
        );
        assert!(matches!(r, Err(Refusal::StaleAttempt { .. })));
    }

    #[test]
    fn permanent_failure_does_not_retry_and_retry_after_is_honoured() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..Default::default()
        };
        let s = apply(&TaskState::new_queued(0), claim("a"), ctx(1, &p))
            .unwrap()
            .state;
        let perm = Failure::new(FailureKind::Permanent, "bad input");
        let t = apply(
            &s,
            Command::Fail {
                attempt: 1,
                failure: perm,
            },
            ctx(2, &p),
        )
        .unwrap();
        assert_eq!(t.state.status, Status::Failed);
        let mut later = Failure::new(FailureKind::Retryable, "busy");
        later.retry_after_ms = Some(30_000);
        let t = apply(
            &s,
            Command::Fail {
                attempt: 1,
                failure: later,
            },
            ctx(2, &p),
        )
        .unwrap();
        assert_eq!(t.state.ready_at_ms, Some(30_002));
    }

    #[test]
    fn deadline_fails_the_task() {
        let p = RetryPolicy::default();
        let c = Ctx {
            now: 50,
            retry: &p,
            deadline_ms: Some(40),
            jitter_sample: 0.0,
        };
        let t = apply(&TaskState::new_queued(0), claim("a"), c).unwrap();
        assert_eq!(t.state.status, Status::Failed);
        assert_eq!(t.state.error.unwrap().kind, "deadline_exceeded");
    }

    #[test]
    fn cancel_of_running_task_tells_the_agent() {
        let p = RetryPolicy::default();
        let s = apply(&TaskState::new_queued(0), claim("a"), ctx(1, &p))
            .unwrap()
            .state;
        let t = apply(&s, Command::Cancel { reason: None }, ctx(2, &p)).unwrap();
        assert!(t.effects.contains(&Effect::CancelOnAgent {
            agent_id: AgentId::from_trusted("a"),
            attempt: 1
        }));
        assert!(apply(&t.state, Command::Cancel { reason: None }, ctx(3, &p)).is_err());
    }

    #[test]
    fn a_preempted_attempt_is_not_counted_and_its_late_result_is_stale() {
        let p = RetryPolicy {
            max_attempts: 1,
            ..Default::default()
        };
        let s = apply(&TaskState::new_queued(0), claim("a"), ctx(1, &p))
            .unwrap()
            .state;
        let yielded = |attempt| Command::Yield {
            attempt,
            reason: "preempted by t9".into(),
        };
        assert!(
            apply(&s, yielded(2), ctx(2, &p)).is_err(),
            "not the running attempt"
        );
        let t = apply(&s, yielded(1), ctx(2, &p)).unwrap();
        assert_eq!(t.state.status, Status::Queued);
        assert_eq!(t.state.attempts_used(), 0);
        assert_eq!(t.effects, vec![Effect::Ready]);
        let ev = t.state.events.last().unwrap();
        assert_eq!(ev.kind, EventKind::Preempted);
        assert_eq!(ev.agent_id.as_ref().map(|a| a.as_str()), Some("a"));
        // Claimed again as attempt 2; with max_attempts 1 a failure now dead-letters,
        // so the preempted attempt was indeed not counted.
        let s = apply(&t.state, claim("b"), ctx(3, &p)).unwrap().state;
        assert_eq!(s.attempt, 2);
        let late = Command::Succeed {
            attempt: 1,
            output: serde_json::json!(1),
        };
        assert!(matches!(
            apply(&s, late, ctx(4, &p)),
            Err(Refusal::StaleAttempt { .. })
        ));
        let failed = Command::Fail {
            attempt: 2,
            failure: Failure::new(FailureKind::Retryable, "x"),
        };
        assert_eq!(
            apply(&s, failed, ctx(5, &p)).unwrap().state.status,
            Status::DeadLettered
        );
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        prop_oneof![
            (0u8..3).prop_map(|a| Command::Claim {
                agent_id: AgentId::from_trusted(format!("agent-{a}")),
                lease_owner: "s".into(),
                lease_deadline_ms: 1_000_000,
            }),
            (0u32..6).prop_map(|attempt| Command::Succeed {
                attempt,
                output: serde_json::json!({"ok": true})
            }),
            (0u32..6, 0u8..5).prop_map(|(attempt, k)| Command::Fail {
                attempt,
                failure: Failure::new(
                    [
                        FailureKind::Retryable,
                        FailureKind::Permanent,
                        FailureKind::Timeout,
                        FailureKind::AgentLost,
                        FailureKind::LeaseExpired
                    ][k as usize],
                    "x"
                ),
            }),
            Just(Command::Promote),
            Just(Command::Cancel { reason: None }),
            Just(Command::Reprocess),
            Just(Command::Release),
            (0u32..6).prop_map(|attempt| Command::Yield {
                attempt,
                reason: "preempted".into()
            }),
            (0u32..6).prop_map(|attempt| Command::HandBack {
                attempt,
                reason: "key at its limit".into()
            }),
        ]
    }

    proptest! {
        #[test]
        fn only_allowed_transitions_happen(cmds in proptest::collection::vec(arb_command(), 0..60),
                                           max_attempts in 1u32..5, deadline in proptest::option::of(0u64..200),
                                           waiting in any::<bool>()) {
            let policy = RetryPolicy { max_attempts, backoff_base_ms: 1, ..Default::default() };
            let mut s = TaskState::new_queued(0);
            if waiting {
                s.status = Status::Waiting;
            }
            let mut completions = 0;
            for (i, cmd) in cmds.into_iter().enumerate() {
                let c = Ctx { now: i as u64 + 1, retry: &policy, deadline_ms: deadline, jitter_sample: 0.5 };
                let before = s.clone();
                match apply(&s, cmd, c) {
                    Ok(t) => {
                        prop_assert!(allowed(before.status, t.state.status),
                            "{:?} -> {:?}", before.status, t.state.status);
                        prop_assert_eq!(t.state.events.len(), before.events.len() + 1);
                        prop_assert!(t.state.attempt >= before.attempt);
                        prop_assert!(t.state.attempt <= before.attempt + 1);
                        if t.state.status == Status::Running {
                            prop_assert!(t.state.agent_id.is_some() && t.state.lease_deadline_ms.is_some());
                        } else {
                            prop_assert!(t.state.lease_owner.is_none() || t.state.status == Status::Running);
                        }
                        if t.state.status == Status::Completed { completions += 1; }
                        if before.status.is_terminal() {
                            prop_assert!(before.status == Status::DeadLettered && t.state.status == Status::Queued);
                        }
                        prop_assert!(t.state.attempts_used() <= max_attempts);
                        s = t.state;
                    }
                    Err(_) => prop_assert_eq!(&s, &before),
                }
            }
            prop_assert!(completions <= 1, "a task completes at most once");
        }
    }
}
