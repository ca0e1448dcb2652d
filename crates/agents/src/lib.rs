//! Baton's built-in agent handlers, run by `baton agent --type echo|sleep|fail` and
//! by `baton dev`. They exist to try Baton out and to test it end to end: each one's
//! behaviour is driven entirely by the task's inputs and metadata.
//!
//! | type    | output                                   | metadata                                            |
//! |---------|------------------------------------------|-----------------------------------------------------|
//! | `echo`  | `{"inputs": [...], "metadata": {...}}`   | echoed back (omitted when empty)                    |
//! | `sleep` | `{"slept_ms": n}`                        | `sleep_ms` (default 0)                              |
//! | `fail`  | `{"attempt": n}` once it stops failing   | `fail_times` (default: every attempt), `permanent`, `retry_after_ms` |
//!
//! A metadata value of the wrong type is a permanent failure naming the field.

use baton_sdk::{BoxHandler, Handler, HandlerError, InputPart, Task};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The task types [`handler_for`] knows.
pub const BUILTIN_TYPES: &[&str] = &["echo", "sleep", "fail"];

/// The built-in handler for `task_type`, if there is one.
pub fn handler_for(task_type: &str) -> Option<BoxHandler> {
    match task_type {
        "echo" => Some(BoxHandler::new(echo)),
        "sleep" => Some(BoxHandler::new(sleep)),
        "fail" => Some(BoxHandler::new(fail)),
        _ => None,
    }
}

/// One handler for every built-in type, choosing by the task's type, for an agent
/// registered for several of them (`baton dev`).
pub fn builtin() -> BoxHandler {
    BoxHandler::new(|task: Task| async move {
        match handler_for(&task.task_type) {
            Some(handler) => handler.call(task).await,
            None => Err(HandlerError::permanent(format!(
                "no built-in handler for task type {:?} (built-in: {})",
                task.task_type,
                BUILTIN_TYPES.join(", ")
            ))),
        }
    })
}

/// Returns the task's inputs in their JSON shape, and its metadata when there is any.
pub async fn echo(task: Task) -> Result<Value, HandlerError> {
    let mut out = Map::new();
    out.insert(
        "inputs".into(),
        task.inputs.iter().map(InputPart::to_json_value).collect(),
    );
    if !task.metadata.is_empty() {
        out.insert("metadata".into(), Value::Object(task.metadata));
    }
    Ok(Value::Object(out))
}

/// Sleeps `metadata.sleep_ms` milliseconds (default 0).
pub async fn sleep(task: Task) -> Result<Value, HandlerError> {
    let sleep_ms = whole_number(&task.metadata, "sleep_ms")?.unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    Ok(json!({ "slept_ms": sleep_ms }))
}

/// Fails while `attempt <= metadata.fail_times` (every attempt when it is absent),
/// then succeeds with `{"attempt": n}`. The failure is retryable, after
/// `metadata.retry_after_ms` when given, or permanent when `metadata.permanent` is true.
pub async fn fail(task: Task) -> Result<Value, HandlerError> {
    let fail_times = whole_number(&task.metadata, "fail_times")?;
    let retry_after_ms = whole_number(&task.metadata, "retry_after_ms")?;
    let permanent = match task.metadata.get("permanent") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(HandlerError::permanent(format!(
                "metadata.permanent must be true or false, got {other}"
            )))
        }
    };
    let attempt = task.attempt;
    let message = match fail_times {
        None => format!("planned failure on attempt {attempt} (fails every attempt)"),
        Some(n) if u64::from(attempt) <= n => {
            format!("planned failure on attempt {attempt} of {n}")
        }
        Some(_) => return Ok(json!({ "attempt": attempt })),
    };
    Err(match (permanent, retry_after_ms) {
        (true, _) => HandlerError::permanent(message),
        (false, Some(ms)) => HandlerError::retry_after(Duration::from_millis(ms), message),
        (false, None) => HandlerError::retryable(message),
    })
}

/// An optional non-negative integer from the metadata; anything else is the
/// submitter's mistake, which no retry can fix.
fn whole_number(metadata: &Map<String, Value>, key: &str) -> Result<Option<u64>, HandlerError> {
    match metadata.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            HandlerError::permanent(format!(
                "metadata.{key} must be a non-negative whole number, got {v}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_sdk::testing::{Harness, TaskBuilder};
    use baton_sdk::InputKind;

    fn task(task_type: &str, metadata: Value) -> TaskBuilder {
        TaskBuilder::new(task_type).metadata(metadata)
    }

    async fn check(cases: Vec<(&str, Task, Result<Value, HandlerError>)>) {
        let harness = Harness::new(builtin());
        for (name, task, want) in cases {
            assert_eq!(harness.run(task).await, want, "case {name}");
        }
    }

    #[test]
    fn every_builtin_type_has_a_handler() {
        for t in BUILTIN_TYPES {
            assert!(handler_for(t).is_some(), "{t}");
        }
        assert!(handler_for("report").is_none());
    }

    #[tokio::test]
    async fn echo_returns_inputs_and_metadata() {
        let named = InputPart {
            mime_type: Some("text/plain".into()),
            name: Some("note".into()),
            ..InputPart::text("n")
        };
        check(vec![
            (
                "nothing",
                task("echo", json!({})).build(),
                Ok(json!({"inputs": []})),
            ),
            (
                "every kind",
                task("echo", json!({"k": "v"}))
                    .text("hi")
                    .json(json!({"a": [1, 2]}))
                    .bytes(InputKind::Image, vec![0, 1])
                    .input(named)
                    .build(),
                Ok(json!({
                    "inputs": [
                        {"type": "text", "data": "hi"},
                        {"type": "json", "data": {"a": [1, 2]}},
                        {"type": "image", "data": "AAE="},
                        {"type": "text", "data": "n", "mime_type": "text/plain", "name": "note"},
                    ],
                    "metadata": {"k": "v"},
                })),
            ),
        ])
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_sleeps_for_the_requested_time() {
        let start = tokio::time::Instant::now();
        check(vec![
            (
                "default",
                task("sleep", json!({})).build(),
                Ok(json!({"slept_ms": 0})),
            ),
            (
                "null",
                task("sleep", json!({"sleep_ms": null})).build(),
                Ok(json!({"slept_ms": 0})),
            ),
            (
                "250 ms",
                task("sleep", json!({"sleep_ms": 250})).build(),
                Ok(json!({"slept_ms": 250})),
            ),
        ])
        .await;
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_refuses_bad_durations_and_respects_the_timeout() {
        let bad = |got: &str| {
            Err(HandlerError::permanent(format!(
                "metadata.sleep_ms must be a non-negative whole number, got {got}"
            )))
        };
        check(vec![
            (
                "negative",
                task("sleep", json!({"sleep_ms": -5})).build(),
                bad("-5"),
            ),
            (
                "fraction",
                task("sleep", json!({"sleep_ms": 1.5})).build(),
                bad("1.5"),
            ),
            (
                "text",
                task("sleep", json!({"sleep_ms": "10"})).build(),
                bad("\"10\""),
            ),
            (
                "past the timeout",
                task("sleep", json!({"sleep_ms": 5000}))
                    .timeout(Duration::from_secs(1))
                    .build(),
                Err(HandlerError::timeout(
                    "handler exceeded its timeout of 1000 ms",
                )),
            ),
        ])
        .await;
    }

    #[tokio::test]
    async fn fail_fails_as_planned() {
        let attempt = |metadata: Value, n: u32| task("fail", metadata).attempt(n).build();
        check(vec![
            (
                "always, attempt 1",
                attempt(json!({}), 1),
                Err(HandlerError::retryable(
                    "planned failure on attempt 1 (fails every attempt)",
                )),
            ),
            (
                "always, attempt 50",
                attempt(json!({}), 50),
                Err(HandlerError::retryable(
                    "planned failure on attempt 50 (fails every attempt)",
                )),
            ),
            (
                "within fail_times",
                attempt(json!({"fail_times": 2}), 2),
                Err(HandlerError::retryable("planned failure on attempt 2 of 2")),
            ),
            (
                "after fail_times",
                attempt(json!({"fail_times": 2}), 3),
                Ok(json!({"attempt": 3})),
            ),
            (
                "never",
                attempt(json!({"fail_times": 0}), 1),
                Ok(json!({"attempt": 1})),
            ),
            (
                "permanent",
                attempt(json!({"permanent": true}), 1),
                Err(HandlerError::permanent(
                    "planned failure on attempt 1 (fails every attempt)",
                )),
            ),
            (
                "permanent false",
                attempt(json!({"permanent": false, "fail_times": 1}), 1),
                Err(HandlerError::retryable("planned failure on attempt 1 of 1")),
            ),
            (
                "permanent but done",
                attempt(json!({"permanent": true, "fail_times": 1}), 2),
                Ok(json!({"attempt": 2})),
            ),
            (
                "retry after",
                attempt(json!({"fail_times": 1, "retry_after_ms": 1500}), 1),
                Err(HandlerError::retry_after(
                    Duration::from_millis(1500),
                    "planned failure on attempt 1 of 1",
                )),
            ),
            (
                "permanent wins over retry after",
                attempt(json!({"permanent": true, "retry_after_ms": 1500}), 1),
                Err(HandlerError::permanent(
                    "planned failure on attempt 1 (fails every attempt)",
                )),
            ),
        ])
        .await;
    }

    #[tokio::test]
    async fn fail_refuses_bad_metadata() {
        check(vec![
            (
                "fail_times",
                task("fail", json!({"fail_times": -1})).build(),
                Err(HandlerError::permanent(
                    "metadata.fail_times must be a non-negative whole number, got -1",
                )),
            ),
            (
                "permanent",
                task("fail", json!({"permanent": "yes"})).build(),
                Err(HandlerError::permanent(
                    "metadata.permanent must be true or false, got \"yes\"",
                )),
            ),
            (
                "retry_after_ms",
                task("fail", json!({"retry_after_ms": 2.5})).build(),
                Err(HandlerError::permanent(
                    "metadata.retry_after_ms must be a non-negative whole number, got 2.5",
                )),
            ),
        ])
        .await;
    }

    #[tokio::test]
    async fn builtin_refuses_unknown_types() {
        check(vec![(
            "unknown",
            task("report", json!({})).build(),
            Err(HandlerError::permanent(
                "no built-in handler for task type \"report\" (built-in: echo, sleep, fail)",
            )),
        )])
        .await;
    }

    #[tokio::test]
    async fn handler_for_matches_builtin() {
        let echo = Harness::new(handler_for("echo").unwrap());
        assert_eq!(
            echo.run(task("echo", json!({})).text("x").build()).await,
            Ok(json!({"inputs": [{"type": "text", "data": "x"}]}))
        );
    }
}
