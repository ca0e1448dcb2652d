//! Baton's built-in agent handlers, run by `baton agent --type <type>` and by
//! `baton dev`. `echo`, `sleep` and `fail` exist to try Baton out and to test it end
//! to end; the others do the work of seed 000's use cases and call external APIs.
//! Each module documents its JSON input and output.
//!
//! | type                   | module           | does                                                              |
//! |------------------------|------------------|-------------------------------------------------------------------|
//! | `echo`                 | here             | `{"inputs": [...], "metadata": {...}}` (metadata omitted when empty) |
//! | `sleep`                | here             | sleeps `metadata.sleep_ms` (default 0): `{"slept_ms": n}`          |
//! | `fail`                 | here             | fails per `fail_times`, `permanent`, `retry_after_ms`; then `{"attempt": n}` |
//! | `data_ingest`          | [`ingest`]       | text, CSV, JSON and PNG/JPEG/GIF inputs → numeric series, image statistics |
//! | `data_analysis`        | [`analysis`]     | statistics, percentiles, trend, anomalies, insights per series    |
//! | `synthesis`            | [`synthesis`]    | seed 000's report (`report_id`, `title`, `executive_summary`, …)  |
//! | `report_generation`    | [`synthesis`]    | the three above in one task (seed 000's task type)                |
//! | `video_detection`      | [`monitoring`]   | animated GIF or image frames → people/objects per frame           |
//! | `alerting`             | [`monitoring`]   | detections + metadata rules → seed 000's alerts                   |
//! | `real_time_monitoring` | [`monitoring`]   | the two above in one task (seed 000's task type)                  |
//! | `api_caller`           | [`api_caller`]   | an HTTP call with retries and a circuit breaker per destination   |
//! | `llm`                  | [`llm`]          | a streamed chat completion; only when [`llm::Config::from_env`] finds one |
//!
//! A malformed input or metadata value is a permanent failure naming the field; a
//! transient problem (an API down, a rate limit) is retryable or retry-after.

pub mod analysis;
pub mod api_caller;
pub mod breaker;
pub mod ingest;
pub mod llm;
pub mod monitoring;
mod request;
pub mod samples;
pub mod sse;
pub mod stats;
pub mod synthesis;
pub mod vision;

use baton_sdk::{BoxHandler, Handler, HandlerError, InputPart, Task};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The task types [`handler_for`] always knows. `llm` is added by [`builtin_types`]
/// when an LLM is configured.
pub const BUILTIN_TYPES: &[&str] = &[
    "echo",
    "sleep",
    "fail",
    "data_ingest",
    "data_analysis",
    "synthesis",
    "report_generation",
    "video_detection",
    "alerting",
    "real_time_monitoring",
    "api_caller",
];

/// Every type this process can serve: [`BUILTIN_TYPES`], and `llm` when
/// [`llm::Config::from_env`] finds a configuration.
pub fn builtin_types() -> Vec<&'static str> {
    let mut types = BUILTIN_TYPES.to_vec();
    if llm::Config::from_env().is_some() {
        types.push("llm");
    }
    types
}

/// The built-in handler for `task_type`, if there is one. The LLM configuration is
/// read from the environment when the handler is made.
pub fn handler_for(task_type: &str) -> Option<BoxHandler> {
    Some(match task_type {
        "echo" => BoxHandler::new(echo),
        "sleep" => BoxHandler::new(sleep),
        "fail" => BoxHandler::new(fail),
        "data_ingest" => BoxHandler::new(ingest::handler),
        "data_analysis" => BoxHandler::new(analysis::handler),
        "synthesis" | "report_generation" => {
            let llm = llm::Config::from_env();
            BoxHandler::new(move |task| synthesis::handle(task, llm.clone()))
        }
        "video_detection" => BoxHandler::new(monitoring::detection_handler),
        "alerting" | "real_time_monitoring" => BoxHandler::new(monitoring::alerting_handler),
        "api_caller" => BoxHandler::new(|task| api_caller::ApiCaller::shared().handle(task)),
        "llm" => {
            let config = llm::Config::from_env()?;
            BoxHandler::new(move |task| llm::handle(task, config.clone()))
        }
        _ => return None,
    })
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
                builtin_types().join(", ")
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
            Err(HandlerError::permanent(format!(
                "no built-in handler for task type \"report\" (built-in: {})",
                builtin_types().join(", ")
            ))),
        )])
        .await;
    }

    #[test]
    fn llm_is_served_only_when_configured() {
        let configured = llm::Config::from_env().is_some();
        assert_eq!(handler_for("llm").is_some(), configured);
        assert_eq!(builtin_types().contains(&"llm"), configured);
        assert!(!BUILTIN_TYPES.contains(&"llm"));
    }

    #[tokio::test]
    async fn report_generation_runs_the_whole_use_case() {
        let out = Harness::new(builtin())
            .run(
                task(
                    "report_generation",
                    json!({"report_title": "Q4 Sales Analysis"}),
                )
                .text("month,sales\nOct,120\nNov,135\nDec,150\nJan,165")
                .build(),
            )
            .await
            .unwrap();
        assert_eq!(out["title"], "Q4 Sales Analysis");
        assert!(out["report_id"].as_str().unwrap().starts_with("report_"));
        assert_eq!(
            out["detailed_findings"]["statistics"],
            json!({"series": "sales", "count": 4, "sum": 570.0, "mean": 142.5, "median": 142.5,
                   "std_dev": 19.364917, "min": 120.0, "max": 165.0, "p25": 131.25, "p50": 142.5,
                   "p75": 153.75, "p90": 160.5, "p95": 162.75, "p99": 164.55})
        );
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
