//! The task a handler receives, decoded from the wire `Assignment`.

use crate::events::Events;
use baton_core::{InputKind, InputPart, Priority, TaskId};
use baton_proto::v1;
use serde_json::{Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One attempt of a task, as handed to a handler.
///
/// The same task may be delivered more than once (a retry, or a redelivery after the
/// agent lost its connection); `attempt` lets a handler make side effects idempotent.
/// Build one in tests with [`crate::testing::TaskBuilder`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Task {
    pub task_id: TaskId,
    /// 1 for the first attempt, incremented on every retry.
    pub attempt: u32,
    pub task_type: String,
    pub inputs: Vec<InputPart>,
    pub metadata: Map<String, Value>,
    pub priority: Priority,
    /// How long this attempt may run; the SDK reports a timeout failure past it.
    /// Zero means no limit.
    pub timeout: Duration,
    /// When the whole task must be finished, if the submitter set a deadline.
    pub deadline: Option<SystemTime>,
    /// `sequential`, `parallel` or `hybrid` when the submitter set one.
    pub execution_mode: Option<String>,
    /// Where [`Task::emit`] sends events; connected by the agent for each attempt.
    pub(crate) events: Events,
}

impl Task {
    /// Decodes an assignment. Fails when the server sent something no handler could
    /// use (an unknown input type, text that is not utf-8, metadata that is not a
    /// JSON object); the attempt is then reported as a permanent failure.
    pub(crate) fn from_assignment(a: v1::Assignment) -> Result<Task, String> {
        let mut inputs = Vec::with_capacity(a.inputs.len());
        for (i, part) in a.inputs.into_iter().enumerate() {
            let kind = InputKind::parse(&part.r#type)
                .map_err(|e| format!("inputs[{i}]: {}", e.message))?;
            let mut decoded = InputPart::from_wire(kind, part.data)
                .map_err(|e| format!("inputs[{i}]: {}", e.message))?;
            decoded.mime_type = non_empty(part.mime_type);
            decoded.name = non_empty(part.name);
            inputs.push(decoded);
        }
        let metadata = if a.metadata_json.trim().is_empty() {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(&a.metadata_json) {
                Ok(Value::Object(m)) => m,
                Ok(Value::Null) => Map::new(),
                Ok(_) => return Err("metadata is not a JSON object".into()),
                Err(e) => return Err(format!("metadata is not valid JSON: {e}")),
            }
        };
        Ok(Task {
            task_id: TaskId::from_trusted(a.task_id),
            attempt: a.attempt,
            task_type: a.task_type,
            inputs,
            metadata,
            priority: parse_priority(&a.priority),
            timeout: Duration::from_millis(a.timeout_ms),
            deadline: (a.deadline_ms > 0)
                .then(|| UNIX_EPOCH + Duration::from_millis(a.deadline_ms)),
            execution_mode: non_empty(a.execution_mode),
            events: Events::default(),
        })
    }

    /// Emits an event to the clients watching this task (an alert, a token, ...)
    /// while the attempt runs. Cheap and never fails; see [`crate::events`].
    pub fn emit(&self, kind: &str, data: impl serde::Serialize) {
        self.events.emit(kind, data);
    }

    /// The emitter itself, to move into a blocking thread or a helper.
    pub fn events(&self) -> &Events {
        &self.events
    }
}

/// The server sends a level name; a number or an unknown name falls back rather
/// than refusing work over a label that only informs the handler.
fn parse_priority(raw: &str) -> Priority {
    if raw.is_empty() {
        return Priority::default();
    }
    Priority::from_name(raw)
        .or_else(|_| {
            raw.parse::<i64>()
                .map_err(|_| ())
                .and_then(|n| Priority::from_int(n).map_err(|_| ()))
        })
        .unwrap_or_default()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn assignment() -> v1::Assignment {
        v1::Assignment {
            task_id: "report-001".into(),
            attempt: 2,
            task_type: "report".into(),
            inputs: vec![
                v1::InputPart {
                    r#type: "text".into(),
                    data: b"hello".to_vec(),
                    mime_type: String::new(),
                    name: "greeting".into(),
                },
                v1::InputPart {
                    r#type: "json".into(),
                    data: br#"{"a":1}"#.to_vec(),
                    mime_type: String::new(),
                    name: String::new(),
                },
                v1::InputPart {
                    r#type: "image".into(),
                    data: vec![0, 255],
                    mime_type: "image/png".into(),
                    name: String::new(),
                },
            ],
            metadata_json: r#"{"title":"Q4"}"#.into(),
            priority: "high".into(),
            timeout_ms: 1500,
            deadline_ms: 2000,
            execution_mode: "parallel".into(),
            traceparent: String::new(),
        }
    }

    #[test]
    fn assignment_decodes_into_a_task() {
        let t = Task::from_assignment(assignment()).unwrap();
        assert_eq!(t.task_id.as_str(), "report-001");
        assert_eq!(t.attempt, 2);
        assert_eq!(
            t.inputs[0],
            InputPart {
                name: Some("greeting".into()),
                ..InputPart::text("hello")
            }
        );
        assert_eq!(t.inputs[1], InputPart::json(json!({"a": 1})));
        assert_eq!(t.inputs[2].mime_type.as_deref(), Some("image/png"));
        assert_eq!(Value::Object(t.metadata), json!({"title": "Q4"}));
        assert_eq!(t.priority, Priority::High);
        assert_eq!(t.timeout, Duration::from_millis(1500));
        assert_eq!(t.deadline, Some(UNIX_EPOCH + Duration::from_secs(2)));
        assert_eq!(t.execution_mode.as_deref(), Some("parallel"));
    }

    #[test]
    fn empty_wire_fields_mean_absent() {
        let a = v1::Assignment {
            task_id: "t".into(),
            attempt: 1,
            task_type: "echo".into(),
            ..Default::default()
        };
        let t = Task::from_assignment(a).unwrap();
        assert!(t.metadata.is_empty());
        assert_eq!(t.priority, Priority::Normal);
        assert_eq!(t.deadline, None);
        assert_eq!(t.execution_mode, None);
    }

    #[test]
    fn priorities_in_either_form() {
        for (raw, want) in [
            ("critical", Priority::Critical),
            ("9", Priority::Critical),
            ("", Priority::Normal),
            ("odd", Priority::Normal),
        ] {
            assert_eq!(parse_priority(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn unusable_assignments_are_refused() {
        let mut bad_text = assignment();
        bad_text.inputs[0].data = vec![0xff, 0xfe];
        let mut bad_kind = assignment();
        bad_kind.inputs[1].r#type = "audio".into();
        let mut bad_metadata = assignment();
        bad_metadata.metadata_json = "[1]".into();
        let mut unparsable = assignment();
        unparsable.metadata_json = "{".into();
        for (a, want) in [
            (bad_text, "inputs[0]"),
            (bad_kind, "inputs[1]"),
            (bad_metadata, "metadata"),
            (unparsable, "metadata"),
        ] {
            let e = Task::from_assignment(a).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
