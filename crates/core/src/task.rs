//! What a client submits: the immutable task specification, and its parsing and
//! validation from JSON with every problem reported at once.

use crate::{Error, InputPart, Millis, Priority, RetryPolicy, TaskId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Seed 000's execution modes; a plain task carries the mode through to its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    Sequential,
    Parallel,
    Hybrid,
}

/// Limits applied while parsing; the server fills them from its config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub default_retry: RetryPolicy,
    /// Largest total input size of one task, in bytes.
    pub max_task_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_timeout_ms: 30_000,
            max_timeout_ms: 7 * 24 * 3600 * 1000,
            default_retry: RetryPolicy::default(),
            max_task_bytes: 8 * 1024 * 1024,
        }
    }
}

pub const MAX_TASK_TYPE_LEN: usize = 128;
/// Most dependencies one task may list.
pub const MAX_DEPENDENCIES: usize = 1_000;

/// A task as submitted. Never changes after it is accepted; idempotent
/// resubmission compares it field by field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: TaskId,
    pub task_type: String,
    #[serde(default)]
    pub inputs: Vec<InputPart>,
    #[serde(default)]
    pub priority: Priority,
    pub timeout_ms: u64,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_mode: Option<ExecutionMode>,
    /// Tasks that must complete before this one is queued (seed 001). A task with
    /// dependencies starts `waiting`; if one of them ends any other way, it is cancelled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<TaskId>,
    /// The workflow run this task is a step of; set by the server, never by clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// Fields a submission may carry. Anything else is refused, so that a typo such as
/// `priorty` is reported instead of silently ignored.
pub const SUBMIT_FIELDS: &[&str] = &[
    "task_id",
    "task_type",
    "inputs",
    "payload",
    "priority",
    "timeout_ms",
    "metadata",
    "retry",
    "deadline",
    "execution_mode",
    "dependencies",
];

pub fn validate_task_type(raw: &str) -> Result<(), String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if raw.len() > MAX_TASK_TYPE_LEN {
        return Err(format!("is longer than {MAX_TASK_TYPE_LEN} bytes"));
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
    {
        return Err("may only contain letters, digits, '_', '-', '.' and ':'".into());
    }
    Ok(())
}

/// Collects problems as (field, message) so one response lists them all.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn push(&mut self, field: impl Into<String>, msg: impl Into<String>) {
        self.0.push((field.into(), msg.into()));
    }
    fn into_result<T>(self, ok: impl FnOnce() -> T) -> Result<T, Error> {
        if self.0.is_empty() {
            return Ok(ok());
        }
        Err(Error::from_problems(self.0))
    }
}

/// Parses a deadline given as RFC 3339 text or as Unix milliseconds.
pub fn parse_deadline(value: &Value) -> Result<Option<Millis>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| "must be unix milliseconds or an RFC 3339 time".into()),
        Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s)
                .map_err(|e| format!("is not an RFC 3339 time: {e}"))?;
            let ms = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| "is before 1970".to_string())?
                .as_millis();
            Ok(Some(ms as Millis))
        }
        _ => Err("must be unix milliseconds or an RFC 3339 time".into()),
    }
}

impl TaskSpec {
    /// Parses one submission. `field_prefix` locates problems inside a batch
    /// (`tasks[3].`). The time is needed only to refuse deadlines in the past.
    pub fn from_json(
        value: &Value,
        limits: &Limits,
        now: Millis,
        field_prefix: &str,
    ) -> Result<TaskSpec, Error> {
        let mut p = Problems::default();
        let f = |name: &str| format!("{field_prefix}{name}");
        let Some(obj) = value.as_object() else {
            p.push(
                f("").trim_end_matches('.').to_string(),
                "must be a JSON object",
            );
            return p.into_result(|| unreachable!());
        };
        for key in obj.keys() {
            if !SUBMIT_FIELDS.contains(&key.as_str()) {
                p.push(
                    f(key),
                    format!("is not a known field (known: {})", SUBMIT_FIELDS.join(", ")),
                );
            }
        }
        let task_id = match obj.get("task_id") {
            None | Some(Value::Null) => Some(TaskId::generate()),
            Some(Value::String(s)) => match TaskId::parse(s.clone()) {
                Ok(id) => Some(id),
                Err(e) => {
                    p.push(
                        f("task_id"),
                        e.message.trim_start_matches("task_id ").to_string(),
                    );
                    None
                }
            },
            Some(_) => {
                p.push(f("task_id"), "must be a string");
                None
            }
        };
        let task_type = match obj.get("task_type") {
            Some(Value::String(s)) => match validate_task_type(s) {
                Ok(()) => Some(s.clone()),
                Err(m) => {
                    p.push(f("task_type"), m);
                    None
                }
            },
            None | Some(Value::Null) => {
                p.push(f("task_type"), "is required");
                None
            }
            Some(_) => {
                p.push(f("task_type"), "must be a string");
                None
            }
        };
        let mut inputs = Vec::new();
        match obj.get("inputs") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match InputPart::from_json_value(i, item) {
                        Ok(part) => inputs.push(part),
                        Err(e) => {
                            // The part names the exact field (`inputs[0].data`).
                            for (at, message) in e.problems(&format!("inputs[{i}]")) {
                                p.push(f(&at), message)
                            }
                        }
                    }
                }
            }
            Some(_) => p.push(f("inputs"), "must be an array of {type, data} objects"),
        }
        // Seed 001 submits a `payload`: it becomes a json input named "payload".
        match obj.get("payload") {
            None | Some(Value::Null) => {}
            Some(v) => inputs.push(InputPart {
                name: Some("payload".into()),
                ..InputPart::json(v.clone())
            }),
        }
        let total: usize = inputs.iter().map(InputPart::approx_size).sum();
        if total > limits.max_task_bytes {
            p.push(
                f("inputs"),
                format!(
                    "total {total} bytes exceed the limit of {} bytes",
                    limits.max_task_bytes
                ),
            );
        }
        let priority = match obj
            .get("priority")
            .map(Priority::from_json)
            .unwrap_or(Ok(Priority::default()))
        {
            Ok(pr) => pr,
            Err(e) => {
                p.push(f("priority"), e.message);
                Priority::default()
            }
        };
        let timeout_ms = match obj.get("timeout_ms") {
            None | Some(Value::Null) => limits.default_timeout_ms,
            Some(v) => match v.as_i64() {
                Some(t) if t <= 0 => {
                    p.push(f("timeout_ms"), "must be greater than zero");
                    0
                }
                Some(t) if t as u64 > limits.max_timeout_ms => {
                    p.push(
                        f("timeout_ms"),
                        format!("must be at most {}", limits.max_timeout_ms),
                    );
                    0
                }
                Some(t) => t as u64,
                None => {
                    p.push(f("timeout_ms"), "must be a whole number of milliseconds");
                    0
                }
            },
        };
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                p.push(f("metadata"), "must be a JSON object");
                Map::new()
            }
        };
        let retry = match obj.get("retry") {
            None | Some(Value::Null) => limits.default_retry.clone(),
            Some(v @ Value::Object(m)) => {
                // Missing fields fall back to the server's defaults, not to the type's.
                let mut merged =
                    serde_json::to_value(&limits.default_retry).expect("policy serialises");
                if let Value::Object(base) = &mut merged {
                    for (k, val) in m {
                        base.insert(k.clone(), val.clone());
                    }
                }
                match serde_json::from_value::<RetryPolicy>(merged) {
                    Ok(r) => {
                        for (field, msg) in r.problems() {
                            p.push(f(&field), msg);
                        }
                        r
                    }
                    Err(e) => {
                        let _ = v;
                        p.push(f("retry"), format!("is not a valid retry policy: {e}"));
                        limits.default_retry.clone()
                    }
                }
            }
            Some(_) => {
                p.push(f("retry"), "must be an object (max_attempts, backoff_base_ms, backoff_cap_ms, backoff_multiplier, jitter)");
                limits.default_retry.clone()
            }
        };
        let deadline_ms = match parse_deadline(obj.get("deadline").unwrap_or(&Value::Null)) {
            Ok(Some(d)) if d <= now => {
                p.push(f("deadline"), "is already in the past");
                None
            }
            Ok(d) => d,
            Err(m) => {
                p.push(f("deadline"), m);
                None
            }
        };
        let execution_mode = match obj.get("execution_mode") {
            None | Some(Value::Null) => None,
            Some(v) => match serde_json::from_value::<ExecutionMode>(v.clone()) {
                Ok(m) => Some(m),
                Err(_) => {
                    p.push(
                        f("execution_mode"),
                        "must be one of sequential, parallel, hybrid",
                    );
                    None
                }
            },
        };
        let mut dependencies: Vec<TaskId> = Vec::new();
        match obj.get("dependencies") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let field = f(&format!("dependencies[{i}]"));
                    match item.as_str().map(TaskId::parse) {
                        Some(Ok(id)) if task_id.as_ref() == Some(&id) => {
                            p.push(field, "a task cannot depend on itself")
                        }
                        Some(Ok(id)) if dependencies.contains(&id) => {
                            p.push(field, format!("{id} is listed twice"))
                        }
                        Some(Ok(id)) => dependencies.push(id),
                        Some(Err(e)) => {
                            p.push(field, e.message.trim_start_matches("task_id ").to_string())
                        }
                        None => p.push(field, "must be a task id (a string)"),
                    }
                }
                if dependencies.len() > MAX_DEPENDENCIES {
                    p.push(
                        f("dependencies"),
                        format!("lists more than {MAX_DEPENDENCIES} tasks"),
                    );
                }
            }
            Some(_) => p.push(f("dependencies"), "must be an array of task ids"),
        }
        p.into_result(|| TaskSpec {
            task_id: task_id.expect("checked"),
            task_type: task_type.expect("checked"),
            inputs,
            priority,
            timeout_ms,
            metadata,
            retry,
            deadline_ms,
            execution_mode,
            dependencies,
            run_id: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<TaskSpec, Error> {
        TaskSpec::from_json(&v, &Limits::default(), 1_000, "")
    }

    #[test]
    fn seed_000_example_parses() {
        let t = parse(json!({
            "task_id": "report-001", "task_type": "report_generation",
            "inputs": [{"type": "text", "data": "Q4 sales data..."}, {"type": "image", "data": "aGVsbG8="}],
            "execution_mode": "sequential", "priority": 5, "timeout_ms": 30000,
            "metadata": {"report_title": "Q4 Sales Analysis"}
        }))
        .unwrap();
        assert_eq!(t.task_id.as_str(), "report-001");
        assert_eq!(t.priority, Priority::Normal);
        assert_eq!(t.inputs.len(), 2);
        assert_eq!(t.execution_mode, Some(ExecutionMode::Sequential));
        assert_eq!(t.timeout_ms, 30_000);
    }

    #[test]
    fn seed_001_payload_becomes_a_json_input() {
        let t = parse(json!({"task_type": "backend_development", "payload": {"service": "payment-api"}, "priority": "HIGH"}))
            .unwrap();
        assert_eq!(t.priority, Priority::High);
        assert_eq!(t.inputs.len(), 1);
        assert_eq!(t.inputs[0].name.as_deref(), Some("payload"));
        assert_eq!(
            t.inputs[0].data,
            crate::input::PartData::Json(json!({"service": "payment-api"}))
        );
    }

    #[test]
    fn defaults_apply() {
        let t = parse(json!({"task_type": "echo"})).unwrap();
        assert_eq!(t.timeout_ms, 30_000);
        assert_eq!(t.retry, RetryPolicy::default());
        assert!(!t.task_id.as_str().is_empty());
        let r = parse(json!({"task_type": "echo", "retry": {"max_attempts": 5}})).unwrap();
        assert_eq!(r.retry.max_attempts, 5);
        assert_eq!(
            r.retry.backoff_base_ms,
            RetryPolicy::default().backoff_base_ms
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let e = parse(
            json!({"task_type": "", "priority": 42, "timeout_ms": 0, "metadata": [], "priorty": 1,
                             "retry": {"max_attempts": 0}, "deadline": "yesterday"}),
        )
        .unwrap_err();
        let problems = e.details["problems"].as_array().unwrap();
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p["field"].as_str().unwrap())
            .collect();
        for want in [
            "task_type",
            "priority",
            "timeout_ms",
            "metadata",
            "priorty",
            "retry.max_attempts",
            "deadline",
        ] {
            assert!(fields.contains(&want), "missing {want} in {fields:?}");
        }
    }

    #[test]
    fn wrong_types_are_refused() {
        for bad in [
            json!([]),
            json!("x"),
            json!({"task_type": 5}),
            json!({"task_type": "a b"}),
            json!({"task_type": "x", "timeout_ms": -5}),
            json!({"task_type": "x", "timeout_ms": "5"}),
            json!({"task_type": "x", "inputs": {}}),
            json!({"task_type": "x", "retry": {"bogus": 1}}),
            json!({"task_type": "x", "deadline": 500}),
            json!({"task_type": "x", "execution_mode": "random"}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_input_part_names_its_exact_field_once() {
        let e = parse(json!({"task_type": "x", "inputs": [
            {"type": "text", "data": "ok"},
            {"type": "text", "content": "hi"},
            {"type": "image", "data": "%%%"},
            {"type": "sound", "data": ""},
            "part",
        ]}))
        .unwrap_err();
        let problems: Vec<(String, String)> = e.details["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["field"].as_str().unwrap().into(),
                    p["message"].as_str().unwrap().into(),
                )
            })
            .collect();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "inputs[1].data",
                "inputs[2].data",
                "inputs[3].type",
                "inputs[4]"
            ]
        );
        for (field, message) in &problems {
            assert!(!message.contains(field.as_str()), "{field}: {message}");
        }
        assert!(
            problems[1].1.starts_with("is not valid base64"),
            "{problems:?}"
        );
        assert_eq!(
            e.message,
            "inputs[1].data must be a string for text (and 3 more problems)"
        );
    }

    #[test]
    fn oversized_inputs_are_refused() {
        let limits = Limits {
            max_task_bytes: 10,
            ..Limits::default()
        };
        let v = json!({"task_type": "x", "inputs": [{"type": "text", "data": "01234567890"}]});
        assert!(TaskSpec::from_json(&v, &limits, 0, "").is_err());
    }
}
