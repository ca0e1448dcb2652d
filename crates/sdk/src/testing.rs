//! Runs a handler in a test without a server: build a [`Task`] with [`TaskBuilder`]
//! and hand it to a [`Harness`], which applies the same timeout and panic handling
//! as a connected agent.
//!
//! ```
//! use baton_sdk::testing::{Harness, TaskBuilder};
//! use baton_sdk::Task;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let harness = Harness::new(|task: Task| async move { Ok(serde_json::json!({ "attempt": task.attempt })) });
//! let output = harness.run(TaskBuilder::new("echo").text("hi").attempt(2).build()).await;
//! assert_eq!(output, Ok(serde_json::json!({ "attempt": 2 })));
//! # }
//! ```

use crate::events::{Event, Events};
use crate::handler::{execute, Handler};
use crate::{HandlerError, Task};
use baton_core::{InputKind, InputPart, Priority, TaskId};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Runs a handler on tasks built in a test.
pub struct Harness<H> {
    handler: H,
}

impl<H: Handler> Harness<H> {
    pub fn new(handler: H) -> Self {
        Self { handler }
    }

    /// Runs one attempt as the agent would: past `task.timeout` the result is a
    /// timeout failure, and a panic becomes a retryable failure.
    pub async fn run(&self, task: Task) -> Result<Value, HandlerError> {
        execute(&self.handler, task).await
    }

    /// Like [`Harness::run`], also returning the events the handler emitted, in order.
    pub async fn run_with_events(
        &self,
        mut task: Task,
    ) -> (Result<Value, HandlerError>, Vec<Event>) {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = captured.clone();
        task.events = Events::new(move |e| sink.lock().unwrap_or_else(|p| p.into_inner()).push(e));
        let outcome = execute(&self.handler, task).await;
        let events = std::mem::take(&mut *captured.lock().unwrap_or_else(|p| p.into_inner()));
        (outcome, events)
    }
}

/// Builds a [`Task`] for a test. Defaults: a generated task id, attempt 1, no inputs,
/// empty metadata, normal priority, a 30 s timeout, no deadline.
#[derive(Debug, Clone)]
pub struct TaskBuilder {
    task: Task,
}

impl TaskBuilder {
    pub fn new(task_type: impl Into<String>) -> Self {
        Self {
            task: Task {
                task_id: TaskId::generate(),
                attempt: 1,
                task_type: task_type.into(),
                inputs: Vec::new(),
                metadata: Map::new(),
                priority: Priority::default(),
                timeout: Duration::from_secs(30),
                deadline: None,
                execution_mode: None,
                events: Events::default(),
            },
        }
    }

    /// Panics on an invalid id: this is test setup.
    pub fn task_id(mut self, task_id: &str) -> Self {
        self.task.task_id = TaskId::parse(task_id).expect("valid task id");
        self
    }

    pub fn attempt(mut self, attempt: u32) -> Self {
        self.task.attempt = attempt;
        self
    }

    pub fn input(mut self, part: InputPart) -> Self {
        self.task.inputs.push(part);
        self
    }

    pub fn text(self, text: impl Into<String>) -> Self {
        self.input(InputPart::text(text))
    }

    pub fn json(self, value: Value) -> Self {
        self.input(InputPart::json(value))
    }

    pub fn bytes(self, kind: InputKind, data: Vec<u8>) -> Self {
        self.input(InputPart::bytes(kind, data))
    }

    /// Replaces the metadata. Panics unless `metadata` is a JSON object.
    pub fn metadata(mut self, metadata: Value) -> Self {
        match metadata {
            Value::Object(m) => self.task.metadata = m,
            other => panic!("metadata must be a JSON object, got {other}"),
        }
        self
    }

    pub fn priority(mut self, priority: Priority) -> Self {
        self.task.priority = priority;
        self
    }

    /// Zero means no limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.task.timeout = timeout;
        self
    }

    pub fn deadline(mut self, deadline: SystemTime) -> Self {
        self.task.deadline = Some(deadline);
        self
    }

    pub fn execution_mode(mut self, mode: impl Into<String>) -> Self {
        self.task.execution_mode = Some(mode.into());
        self
    }

    pub fn build(self) -> Task {
        self.task
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailureKind;
    use serde_json::json;

    async fn describe(task: Task) -> Result<Value, HandlerError> {
        Ok(json!({
            "task_id": task.task_id.as_str(),
            "attempt": task.attempt,
            "task_type": task.task_type,
            "inputs": task.inputs.iter().map(InputPart::to_json_value).collect::<Vec<_>>(),
            "metadata": task.metadata,
            "priority": task.priority.as_str(),
            "execution_mode": task.execution_mode,
        }))
    }

    #[tokio::test]
    async fn the_builder_sets_every_field() {
        let task = TaskBuilder::new("report")
            .task_id("r-1")
            .attempt(3)
            .text("hi")
            .json(json!({"a": 1}))
            .bytes(InputKind::Image, vec![1, 2])
            .metadata(json!({"k": "v"}))
            .priority(Priority::High)
            .execution_mode("sequential")
            .build();
        let out = Harness::new(describe).run(task).await.unwrap();
        assert_eq!(
            out,
            json!({
                "task_id": "r-1", "attempt": 3, "task_type": "report",
                "inputs": [{"type": "text", "data": "hi"}, {"type": "json", "data": {"a": 1}}, {"type": "image", "data": "AQI="}],
                "metadata": {"k": "v"}, "priority": "high", "execution_mode": "sequential",
            })
        );
    }

    #[tokio::test]
    async fn emitted_events_are_captured_in_order() {
        let harness = Harness::new(|task: Task| async move {
            task.emit("token", "Sales ");
            task.emit("token", "rose.");
            task.emit("end", "reserved kinds are dropped");
            task.emit("bad kind", 1);
            let events = task.events().clone();
            tokio::task::spawn_blocking(move || {
                events.emit("alert", json!({"type": "crowd_detected"}))
            })
            .await
            .unwrap();
            Ok(json!("done"))
        });
        let (outcome, events) = harness.run_with_events(TaskBuilder::new("x").build()).await;
        assert_eq!(outcome, Ok(json!("done")));
        assert_eq!(
            events,
            vec![
                Event {
                    kind: "token".into(),
                    data: json!("Sales ")
                },
                Event {
                    kind: "token".into(),
                    data: json!("rose.")
                },
                Event {
                    kind: "alert".into(),
                    data: json!({"type": "crowd_detected"})
                },
            ]
        );
        // Without a sink, emitting is a no-op.
        let quiet = Harness::new(|task: Task| async move {
            assert!(!task.events().is_connected());
            task.emit("token", "x");
            Ok(json!(null))
        });
        assert_eq!(
            quiet.run(TaskBuilder::new("x").build()).await,
            Ok(json!(null))
        );
    }

    #[tokio::test]
    async fn errors_pass_through() {
        let harness =
            Harness::new(|_task: Task| async { Err(HandlerError::permanent("bad input")) });
        assert_eq!(
            harness.run(TaskBuilder::new("x").build()).await,
            Err(HandlerError::permanent("bad input"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_is_enforced() {
        let harness = Harness::new(|_task: Task| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(json!(null))
        });
        let err = harness
            .run(
                TaskBuilder::new("slow")
                    .timeout(Duration::from_secs(1))
                    .build(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), FailureKind::Timeout);
        assert_eq!(err.message(), "handler exceeded its timeout of 1000 ms");
        let unlimited = harness
            .run(TaskBuilder::new("slow").timeout(Duration::ZERO).build())
            .await;
        assert_eq!(unlimited, Ok(json!(null)), "zero means no limit");
    }

    #[tokio::test]
    async fn panics_become_retryable_failures() {
        let harness = Harness::new(|task: Task| async move {
            if task.attempt == 1 {
                panic!("boom");
            }
            Ok(json!("fine"))
        });
        let err = harness
            .run(TaskBuilder::new("x").build())
            .await
            .unwrap_err();
        assert_eq!(err, HandlerError::retryable("handler panicked: boom"));
        assert_eq!(
            harness.run(TaskBuilder::new("x").attempt(2).build()).await,
            Ok(json!("fine"))
        );
    }

    #[tokio::test]
    async fn a_panic_before_the_future_is_caught_too() {
        #[allow(unreachable_code)]
        let harness = Harness::new(
            |_task: Task| -> std::future::Ready<Result<Value, HandlerError>> {
                panic!("eager {}", 1)
            },
        );
        let err = harness
            .run(TaskBuilder::new("x").build())
            .await
            .unwrap_err();
        assert_eq!(err.message(), "handler panicked: eager 1");
    }
}
