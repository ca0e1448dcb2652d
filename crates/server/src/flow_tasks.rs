//! Seed 000's flows of agents behind the plain task API: a task whose `task_type`
//! names a registered flow (`report_generation`, `real_time_monitoring`, or any
//! flow registered under that name) runs as that flow. The task id becomes the run
//! id, the task's inputs, metadata and `execution_mode` become the run's input, and
//! `GET /api/v1/tasks/{task_id}` shows the run in the task's shape: status,
//! `agent_executions` (one per step attempt), the last step's `output`, and seed
//! 000's metrics.

use crate::view::rfc3339;
use baton_core::workflow::{Run, RunStatus, StepStatus};
use baton_core::{InputPart, TaskSpec};
use serde_json::{json, Value};
use std::collections::HashMap;

/// The run input of a flow task: what its steps reference as `${input.…}`.
pub fn run_input(spec: &TaskSpec) -> Value {
    json!({
        "inputs": spec.inputs.iter().map(InputPart::to_json_value).collect::<Vec<_>>(),
        "metadata": spec.metadata,
        "execution_mode": spec.execution_mode,
    })
}

/// The task status a run shows as.
fn task_status(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Running | RunStatus::Paused | RunStatus::Compensating => "running",
        RunStatus::Completed => "completed",
        RunStatus::Cancelled => "cancelled",
        RunStatus::Failed | RunStatus::Compensated | RunStatus::CompensationFailed => "failed",
    }
}

/// A run in the shape of a task (seed 000's `GET /api/v1/tasks/{task_id}`), with
/// the run's own view under `run`.
pub fn task_view(run: &Run, outputs: &HashMap<String, Value>, run_view: Value) -> Value {
    let mut executions = Vec::new();
    let mut agents = std::collections::BTreeSet::new();
    let mut retries = 0;
    for s in &run.steps {
        for t in &s.tasks {
            if let Some(a) = &t.agent_id {
                agents.insert(a.clone());
            }
            retries += t.attempts.saturating_sub(1);
            if t.attempts == 0 && t.status.is_none() {
                continue;
            }
            executions.push(json!({
                "agent_id": t.agent_id,
                "step": s.id,
                "task_id": t.task_id,
                "attempts": t.attempts,
                "status": t.status.map(|st| st.as_str()).unwrap_or("queued"),
                "duration_ms": t.duration_ms,
                "error": t.error,
            }));
        }
    }
    // The output is the last step's: the one no other step depends on (several
    // such steps: an object of their outputs by step id).
    let sinks: Vec<usize> = (0..run.steps.len())
        .filter(|&i| !run.def.parents.iter().any(|p| p.contains(&i)))
        .collect();
    let output = if run.status == RunStatus::Completed {
        match sinks.as_slice() {
            [one] => run.step_output(*one, outputs),
            many => Some(Value::Object(
                many.iter()
                    .filter_map(|&i| Some((run.steps[i].id.clone(), run.step_output(i, outputs)?)))
                    .collect(),
            )),
        }
    } else {
        None
    };
    let error = run
        .error
        .clone()
        .or_else(|| {
            run.steps
                .iter()
                .find(|s| s.status == StepStatus::Failed)
                .and_then(|s| s.error.clone())
        })
        .filter(|_| task_status(run.status) == "failed");
    let finished = run.finished_at_ms;
    json!({
        "task_id": run.run_id,
        "task_type": run.flow.as_ref().map(|f| f.name.clone()),
        "status": task_status(run.status),
        "execution_mode": run.def.execution_mode,
        "metadata": run.input.get("metadata").cloned().unwrap_or(json!({})),
        "agent_executions": executions,
        "output": output,
        "error": error.map(|m| json!({"kind": "flow", "message": m})),
        "metrics": {
            "total_duration_ms": finished.unwrap_or(run.updated_at_ms).saturating_sub(run.created_at_ms),
            "retry_count": retries,
            "agents_used": agents.len(),
        },
        "created_at": rfc3339(run.created_at_ms),
        "updated_at": rfc3339(run.updated_at_ms),
        "finished_at": finished.map(rfc3339),
        "run": run_view,
    })
}

/// A flow task in the gRPC `Task` shape, from its [`task_view`] (times from the run).
pub fn task_proto(run: &Run, view: &Value) -> baton_proto::v1::Task {
    use baton_proto::v1;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let json_text = |v: &Value| {
        if v.is_null() {
            String::new()
        } else {
            v.to_string()
        }
    };
    let executions = view["agent_executions"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| v1::AgentExecution {
                    agent_id: text(&e["agent_id"]),
                    attempt: e["attempts"].as_u64().unwrap_or(0) as u32,
                    status: text(&e["status"]),
                    duration_ms: e["duration_ms"].as_u64().unwrap_or(0),
                    error: text(&e["error"]),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    let error = view["error"].as_object().map(|e| v1::TaskError {
        kind: e.get("kind").map(text).unwrap_or_default(),
        message: e.get("message").map(text).unwrap_or_default(),
        attempt: 0,
    });
    let metrics = &view["metrics"];
    v1::Task {
        task_id: run.run_id.clone(),
        task_type: text(&view["task_type"]),
        status: text(&view["status"]),
        priority: run.priority.to_string(),
        metadata_json: json_text(&view["metadata"]),
        output_json: json_text(&view["output"]),
        error,
        agent_executions: executions,
        metrics: Some(v1::TaskMetrics {
            total_duration_ms: metrics["total_duration_ms"].as_u64().unwrap_or(0),
            retry_count: metrics["retry_count"].as_u64().unwrap_or(0) as u32,
            agents_used: metrics["agents_used"].as_u64().unwrap_or(0) as u32,
        }),
        created_at_ms: run.created_at_ms,
        updated_at_ms: run.updated_at_ms,
        finished_at_ms: run.finished_at_ms.unwrap_or(0),
        execution_mode: text(&view["execution_mode"]),
        ..Default::default()
    }
}
