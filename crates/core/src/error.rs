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
    use super::summarize_problems;

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
