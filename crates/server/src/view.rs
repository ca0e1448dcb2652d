//! How a task looks to clients, in REST (JSON) and gRPC (protobuf). Both are built
//! from the same stored record here, so the two APIs never disagree.

use baton_core::lifecycle::{EventKind, TaskEvent};
use baton_core::{Millis, Status};
use baton_proto::v1;
use baton_store::TaskRecord;
use serde::Serialize;
use utoipa::ToSchema;

pub fn rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// One attempt of a task on an agent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentExecution {
    pub agent_id: String,
    pub attempt: u32,
    /// running, completed, failed, timeout, agent_lost, lease_expired, cancelled
    pub status: String,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    started_ms: Millis,
    #[serde(skip)]
    finished_ms: Option<Millis>,
}

/// Seed 000's task metrics.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskMetrics {
    pub total_duration_ms: u64,
    pub retry_count: u32,
    pub agents_used: u32,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    pub at: String,
    /// submitted, started, succeeded, attempt_failed, retry_ready, cancelled, failed, dead_lettered, reprocessed, deadline_exceeded
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub to: String,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorView {
    pub kind: String,
    pub message: String,
    pub attempt: u32,
}

/// A task as `GET /api/v1/tasks/{task_id}` returns it (seed 000's shape, extended).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub task_type: String,
    /// queued, running, retry_wait, completed, failed, cancelled, dead_lettered
    pub status: String,
    /// critical, high, normal, low or background
    pub priority: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_mode: Option<String>,
    /// Attempts started so far (the current one while running).
    pub attempt: u32,
    pub max_attempts: u32,
    /// Attempts up to this one do not count against `max_attempts`: the task was
    /// reprocessed from the dead-letter queue after them, or they were handed back
    /// (preempted) without counting. Absent when zero.
    #[serde(skip_serializing_if = "is_zero")]
    pub attempt_floor: u32,
    pub timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Present only when asked for with `include_inputs=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub inputs: Option<Vec<serde_json::Value>>,
    pub agent_executions: Vec<AgentExecution>,
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorView>,
    pub metrics: TaskMetrics,
    pub events: Vec<EventView>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

fn ends_attempt(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Succeeded
            | EventKind::AttemptFailed
            | EventKind::Failed
            | EventKind::DeadLettered
            | EventKind::Cancelled
            | EventKind::DeadlineExceeded
            | EventKind::Preempted
    )
}

/// Attempts are derived from the recorded events, never stored twice.
pub fn executions(events: &[TaskEvent]) -> Vec<AgentExecution> {
    let mut out: Vec<AgentExecution> = Vec::new();
    for ev in events {
        if ev.kind == EventKind::Started {
            out.push(AgentExecution {
                agent_id: ev
                    .agent_id
                    .as_ref()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                attempt: ev.attempt,
                status: "running".into(),
                started_at: rfc3339(ev.at_ms),
                finished_at: None,
                duration_ms: None,
                error: None,
                started_ms: ev.at_ms,
                finished_ms: None,
            });
        } else if ev.kind == EventKind::HandedBack {
            // Claimed but never sent to an agent: not an execution.
            if let Some(i) = out
                .iter()
                .rposition(|e| e.attempt == ev.attempt && e.finished_ms.is_none())
            {
                out.remove(i);
            }
        } else if ends_attempt(ev.kind) && ev.from == Some(Status::Running) {
            if let Some(ex) = out
                .iter_mut()
                .rev()
                .find(|e| e.attempt == ev.attempt && e.finished_ms.is_none())
            {
                ex.finished_ms = Some(ev.at_ms);
                ex.finished_at = Some(rfc3339(ev.at_ms));
                ex.duration_ms = Some(ev.at_ms.saturating_sub(ex.started_ms));
                ex.status = match ev.kind {
                    EventKind::Succeeded => "completed".into(),
                    EventKind::Cancelled => "cancelled".into(),
                    EventKind::Preempted => "preempted".into(),
                    _ => ev
                        .message
                        .as_deref()
                        .and_then(|m| m.split(':').next())
                        .filter(|k| !k.is_empty())
                        .map(|k| {
                            if k == "retryable" || k == "permanent" {
                                "failed".to_string()
                            } else {
                                k.to_string()
                            }
                        })
                        .unwrap_or_else(|| "failed".into()),
                };
                if ev.kind != EventKind::Succeeded {
                    ex.error = ev.message.clone();
                }
            }
        }
    }
    out
}

pub fn metrics(record: &TaskRecord, now: Millis) -> TaskMetrics {
    let execs = executions(&record.state.events);
    let mut agents: Vec<&str> = execs.iter().map(|e| e.agent_id.as_str()).collect();
    agents.sort_unstable();
    agents.dedup();
    let end = record.state.finished_at_ms.unwrap_or(now);
    TaskMetrics {
        total_duration_ms: end.saturating_sub(record.state.created_at_ms),
        retry_count: (execs.len() as u32).saturating_sub(1),
        agents_used: agents.len() as u32,
    }
}

pub(crate) fn event_view(ev: &TaskEvent) -> EventView {
    EventView {
        at: rfc3339(ev.at_ms),
        kind: serde_json::to_value(ev.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        from: ev.from.map(|s| s.to_string()),
        to: ev.to.to_string(),
        attempt: ev.attempt,
        agent_id: ev.agent_id.as_ref().map(|a| a.to_string()),
        message: ev.message.clone(),
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

pub fn task_view(record: &TaskRecord, now: Millis, include_inputs: bool) -> TaskView {
    let s = &record.state;
    let spec = &record.spec;
    TaskView {
        task_id: spec.task_id.to_string(),
        task_type: spec.task_type.clone(),
        status: s.status.to_string(),
        priority: spec.priority.to_string(),
        execution_mode: spec
            .execution_mode
            .map(|m| format!("{m:?}").to_ascii_lowercase()),
        attempt: s.attempt,
        max_attempts: spec.retry.max_attempts,
        attempt_floor: s.attempt_floor,
        timeout_ms: spec.timeout_ms,
        deadline: spec.deadline_ms.map(rfc3339),
        metadata: spec.metadata.clone(),
        inputs: include_inputs.then(|| spec.inputs.iter().map(|p| p.to_json_value()).collect()),
        agent_executions: executions(&s.events),
        output: s.output.clone(),
        error: s.error.as_ref().map(|e| ErrorView {
            kind: e.kind.clone(),
            message: e.message.clone(),
            attempt: e.attempt,
        }),
        metrics: metrics(record, now),
        events: s.events.iter().map(event_view).collect(),
        created_at: rfc3339(s.created_at_ms),
        updated_at: rfc3339(s.updated_at_ms),
        finished_at: s.finished_at_ms.map(rfc3339),
        next_attempt_at: s.ready_at_ms.map(rfc3339),
    }
}

pub fn input_to_proto(p: &baton_core::InputPart) -> v1::InputPart {
    v1::InputPart {
        r#type: p.kind.as_str().into(),
        data: p.to_wire(),
        mime_type: p.mime_type.clone().unwrap_or_default(),
        name: p.name.clone().unwrap_or_default(),
    }
}

pub fn task_proto(record: &TaskRecord, now: Millis, include_inputs: bool) -> v1::Task {
    let s = &record.state;
    let spec = &record.spec;
    let m = metrics(record, now);
    v1::Task {
        task_id: spec.task_id.to_string(),
        task_type: spec.task_type.clone(),
        status: s.status.to_string(),
        priority: spec.priority.to_string(),
        attempt: s.attempt,
        max_attempts: spec.retry.max_attempts,
        timeout_ms: spec.timeout_ms,
        metadata_json: serde_json::Value::Object(spec.metadata.clone()).to_string(),
        output_json: s.output.as_ref().map(|o| o.to_string()).unwrap_or_default(),
        error: s.error.as_ref().map(|e| v1::TaskError {
            kind: e.kind.clone(),
            message: e.message.clone(),
            attempt: e.attempt,
        }),
        agent_executions: executions(&s.events)
            .into_iter()
            .map(|e| v1::AgentExecution {
                agent_id: e.agent_id,
                attempt: e.attempt,
                status: e.status,
                started_at_ms: e.started_ms,
                finished_at_ms: e.finished_ms.unwrap_or(0),
                duration_ms: e.duration_ms.unwrap_or(0),
                error: e.error.unwrap_or_default(),
            })
            .collect(),
        metrics: Some(v1::TaskMetrics {
            total_duration_ms: m.total_duration_ms,
            retry_count: m.retry_count,
            agents_used: m.agents_used,
        }),
        events: s
            .events
            .iter()
            .map(|ev| {
                let v = event_view(ev);
                v1::TaskEvent {
                    at_ms: ev.at_ms,
                    kind: v.kind,
                    from: v.from.unwrap_or_default(),
                    to: v.to,
                    attempt: v.attempt,
                    agent_id: v.agent_id.unwrap_or_default(),
                    message: v.message.unwrap_or_default(),
                }
            })
            .collect(),
        created_at_ms: s.created_at_ms,
        updated_at_ms: s.updated_at_ms,
        finished_at_ms: s.finished_at_ms.unwrap_or(0),
        execution_mode: spec
            .execution_mode
            .map(|m| format!("{m:?}").to_ascii_lowercase())
            .unwrap_or_default(),
        deadline_ms: spec.deadline_ms.unwrap_or(0),
        inputs: if include_inputs {
            spec.inputs.iter().map(input_to_proto).collect()
        } else {
            Vec::new()
        },
    }
}

/// A workflow run as the APIs show it: progress, critical path, per-step status,
/// attempts, agents, timings and (on request) outputs, plus the event log. A step
/// whose tasks wait for an agent type (or resources) no connected agent offers says so.
pub fn run_view(
    run: &baton_core::workflow::Run,
    outputs: &std::collections::HashMap<String, serde_json::Value>,
    agents: &[crate::dispatcher::AgentInfo],
    include_outputs: bool,
) -> serde_json::Value {
    use baton_core::workflow::StepStatus;
    use serde_json::json;
    let (done, total) = run.progress();
    let steps: Vec<serde_json::Value> = run
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let def = &run.def.steps[i];
            let agents_used: Vec<&str> = s
                .tasks
                .iter()
                .filter_map(|t| t.agent_id.as_deref())
                .collect();
            let attempts: u32 = s.tasks.iter().map(|t| t.attempts).sum();
            let mut v = json!({
                "id": s.id,
                "task_type": def.task_type,
                "status": s.status,
                "dependencies": run.def.parents[i].iter().map(|&k| run.steps[k].id.clone()).collect::<Vec<_>>(),
                "attempts": attempts,
                "agents": agents_used,
                "tasks": s.tasks,
                "started_at": s.started_at_ms.map(rfc3339),
                "finished_at": s.finished_at_ms.map(rfc3339),
                "duration_ms": match (s.started_at_ms, s.finished_at_ms) {
                    (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                    _ => None,
                },
                "error": s.error,
                "on_critical_path": run.critical_path.contains(&s.id),
            });
            if let Some(c) = &s.compensation {
                v["compensation"] = json!(c);
            }
            if def.pivot {
                v["pivot"] = json!(true);
            }
            if s.status == StepStatus::Running {
                let servable = agents.iter().any(|a| {
                    a.task_types.contains(&def.task_type) && def.resources.satisfied_by(&a.labels)
                });
                if !servable {
                    v["waiting_for"] = json!(format!(
                        "no connected agent serves task type {}{}",
                        def.task_type,
                        if def.resources.is_empty() {
                            String::new()
                        } else {
                            format!(" with resources {}", serde_json::to_string(&def.resources).unwrap_or_default())
                        }
                    ));
                }
            }
            if include_outputs {
                v["output"] = run.step_output(i, outputs).unwrap_or(serde_json::Value::Null);
            }
            v
        })
        .collect();
    json!({
        "run_id": run.run_id,
        "flow": run.flow,
        "status": run.status,
        "input": run.input,
        "on_failure": run.on_failure,
        "saga": run.def.saga,
        "generation": run.generation,
        "progress": {
            "steps_done": done,
            "steps_total": total,
            "percent": if total == 0 { 100.0 } else { (done as f64 * 1000.0 / total as f64).round() / 10.0 },
        },
        "critical_path": run.critical_path,
        "steps": steps,
        "events": run.events,
        "events_dropped": run.events_dropped,
        "created_at": rfc3339(run.created_at_ms),
        "updated_at": rfc3339(run.updated_at_ms),
        "finished_at": run.finished_at_ms.map(rfc3339),
        "error": run.error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: Millis, kind: EventKind, from: Status, to: Status, attempt: u32) -> TaskEvent {
        TaskEvent {
            at_ms,
            kind,
            from: Some(from),
            to,
            attempt,
            agent_id: Some(baton_core::AgentId::parse("a1").unwrap()),
            message: Some("why".into()),
        }
    }

    #[test]
    fn a_handed_back_claim_is_no_execution_and_a_preempted_one_ends() {
        use EventKind::*;
        use Status::*;
        let events = [
            ev(1, Started, Queued, Running, 1),
            ev(2, HandedBack, Running, Queued, 1),
            ev(3, Started, Queued, Running, 2),
            ev(4, Preempted, Running, Queued, 2),
            ev(5, Started, Queued, Running, 3),
            ev(9, Succeeded, Running, Completed, 3),
        ];
        let ex = executions(&events);
        let seen: Vec<(u32, &str, Option<u64>)> = ex
            .iter()
            .map(|e| (e.attempt, e.status.as_str(), e.duration_ms))
            .collect();
        assert_eq!(
            seen,
            [(2, "preempted", Some(1)), (3, "completed", Some(4))],
            "{ex:?}"
        );
        assert_eq!(ex[0].error.as_deref(), Some("why"));
    }
}
