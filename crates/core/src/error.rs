//! The error codes every API speaks. The mapping of a code to an HTTP status and a
//! gRPC code lives in one table in `baton-proto`; here is only the domain meaning.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a field has a wrong value.
    InvalidArgument,
    /// The named task, agent or entry does not exist.
    NotFound,
    /// The id exists with different content, or the state forbids the operation.
    Conflict,
    /// The request is larger than the configured limit.
    PayloadTooLarge,
    /// The server sheds load or a limit was hit; retry later.
    ResourceExhausted,
    /// A result names an attempt that is no longer current (fencing).
    StaleAttempt,
    /// The task is not in a state that allows the operation.
    FailedPrecondition,
    /// The store or another dependency is unreachable right now.
    Unavailable,
    /// A deadline passed.
    DeadlineExceeded,
    /// The endpoint exists but does not take this HTTP method.
    MethodNotAllowed,
    /// A bug or an unexpected failure inside Baton.
    Internal,
}

/// The message of an error whose details list every problem: the first, then how
/// many more there are.
pub fn summarize_problems(first: &str, total: usize) -> String {
    match total {
        0 | 1 => first.to_string(),
        2 => format!("{first} (and 1 more problem)"),
        n => format!("{first} (and {} more problems)", n - 1),
    }
}

/// `message` without the name of `field` it starts with, if it does (see
/// [`Error::from_problems`]).
fn without_field<'a>(field: &str, message: &'a str) -> &'a str {
    let suffixes =
        std::iter::once(field).chain(field.match_indices('.').map(|(i, _)| &field[i + 1..]));
    for name in suffixes.filter(|n| !n.is_empty()) {
        if let Some(rest) = message.strip_prefix(name).and_then(|r| r.strip_prefix(' ')) {
            if !rest.is_empty() {
                return rest;
            }
        }
    }
    message
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::StaleAttempt => "stale_attempt",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(raw.to_string())).ok()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as every client sees it: a code, a lowercase message and optional details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    /// A validation error that lists every problem in `details.problems` as
    /// `{field, message}`; its own message is the first problem, then how many
    /// more there are. A problem's message that starts with its field's name,
    /// or with the name's last segments (a part checked on its own names
    /// itself: `inputs[0].data …` under `tasks[2].inputs[0].data`), loses it,
    /// so that no field is named twice.
    pub fn from_problems<F: Into<String>, M: Into<String>>(
        problems: impl IntoIterator<Item = (F, M)>,
    ) -> Self {
        let problems: Vec<(String, String)> = problems
            .into_iter()
            .map(|(field, message)| {
                let field = field.into();
                let message = without_field(&field, &message.into()).to_string();
                (field, message)
            })
            .collect();
        let first = problems
            .first()
            .map(|(field, message)| format!("{field} {message}"))
            .unwrap_or_default();
        let list: Vec<serde_json::Value> = problems
            .iter()
            .map(|(field, message)| serde_json::json!({"field": field, "message": message}))
            .collect();
        Self::invalid(summarize_problems(&first, list.len()))
            .with_details(serde_json::json!({ "problems": list }))
    }
    /// The problems this error lists, as (field, message). An error without a
    /// list is one problem, under the field its details name, or else `field`.
    pub fn problems(&self, field: &str) -> Vec<(String, String)> {
        let text = |v: &serde_json::Value, default: &str| v.as_str().unwrap_or(default).to_string();
        match self.details["problems"].as_array() {
            Some(list) => list
                .iter()
                .map(|p| (text(&p["field"], field), text(&p["message"], "")))
                .collect(),
            None => vec![(text(&self.details["field"], field), self.message.clone())],
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
    /// Names the offending field in `details.field`.
    pub fn with_field(self, field: &str) -> Self {
        self.with_details(serde_json::json!({ "field": field }))
    }
    /// The fields a validation error's `details.problems` name, in order (empty
    /// for an error without problems).
    pub fn problem_fields(&self) -> Vec<&str> {
        self.details["problems"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["field"].as_str()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::{summarize_problems, Error};

    #[test]
    fn a_problem_names_its_field_once() {
        let e = Error::from_problems([
            ("priority", "priority 99 is out of range"),
            ("tasks[2].inputs[0].data", "inputs[0].data must be a string"),
            ("timeout_ms", "must be greater than zero"),
            ("name", "name"),
        ]);
        assert_eq!(
            e.message,
            "priority 99 is out of range (and 3 more problems)"
        );
        let messages: Vec<String> = e.problems("").into_iter().map(|(_, m)| m).collect();
        assert_eq!(
            messages,
            [
                "99 is out of range",
                "must be a string",
                "must be greater than zero",
                "name"
            ]
        );
        // An error without a list is one problem, under the field it names.
        let one = Error::invalid("x is reserved").with_field("metadata.x");
        assert_eq!(
            one.problems("tasks[0]"),
            [("metadata.x".into(), "x is reserved".into())]
        );
        assert_eq!(Error::invalid("bad").problems("tasks[0]")[0].0, "tasks[0]");
    }

    #[test]
    fn problem_counts_read_as_english() {
        assert_eq!(summarize_problems("a is bad", 1), "a is bad");
        assert_eq!(
            summarize_problems("a is bad", 2),
            "a is bad (and 1 more problem)"
        );
        assert_eq!(
            summarize_problems("a is bad", 4),
            "a is bad (and 3 more problems)"
        );
    }
}
