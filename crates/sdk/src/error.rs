//! The two error types of the SDK: what a handler returns for a failed attempt
//! ([`HandlerError`], carrying its retry intent) and why an agent stopped ([`Error`]).

use baton_proto::v1;
use std::fmt;
use std::time::Duration;

/// How the server should treat a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// Another attempt may succeed; the task's retry policy decides when.
    Retryable,
    /// No attempt can ever succeed (bad input): the task fails without retrying.
    Permanent,
    /// The attempt ran past its timeout. Set by the SDK, not by handlers.
    Timeout,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
            FailureKind::Timeout => "timeout",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed attempt, as a handler reports it. The kind tells the server whether to
/// retry, so an agent author never has to encode intent in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} failure: {message}")]
pub struct HandlerError {
    kind: FailureKind,
    message: String,
    retry_after: Option<Duration>,
}

impl HandlerError {
    /// The task can never succeed (for example its input is malformed): do not retry.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Permanent,
            message: message.into(),
            retry_after: None,
        }
    }

    /// This attempt failed; retry with the task's backoff.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Retryable,
            message: message.into(),
            retry_after: None,
        }
    }

    /// This attempt failed; retry no sooner than `delay` (a rate limit said so, say).
    pub fn retry_after(delay: Duration, message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Retryable,
            message: message.into(),
            retry_after: Some(delay),
        }
    }

    /// The attempt ran out of time. The SDK raises this when a handler exceeds the
    /// task's timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Timeout,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn retry_after_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    pub fn is_permanent(&self) -> bool {
        self.kind == FailureKind::Permanent
    }

    /// The wire form sent in a `Result`.
    pub fn to_proto(&self) -> v1::Failure {
        let kind = match self.kind {
            FailureKind::Retryable => v1::FailureKind::Retryable,
            FailureKind::Permanent => v1::FailureKind::Permanent,
            FailureKind::Timeout => v1::FailureKind::Timeout,
        };
        // 0 on the wire means "use the task's backoff", so a requested delay of less
        // than a millisecond is rounded up rather than lost.
        let retry_after_ms = match self.retry_after {
            None => 0,
            Some(d) if d.is_zero() => 0,
            Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
        };
        v1::Failure {
            kind: kind as i32,
            message: self.message.clone(),
            retry_after_ms,
        }
    }
}

/// Any other error is treated as a transient failure of this attempt; return a
/// [`HandlerError::permanent`] explicitly when retrying cannot help.
impl From<anyhow::Error> for HandlerError {
    fn from(err: anyhow::Error) -> Self {
        Self::retryable(format!("{err:#}"))
    }
}

/// Why [`crate::AgentBuilder::run`] returned an error. Connection problems are not
/// errors: the agent retries them until it is shut down.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The builder was given a value the server would refuse.
    #[error("invalid agent configuration: {0}")]
    Config(String),
    /// The server refused the registration for a reason retrying cannot fix.
    #[error("server refused registration: {code}: {message}")]
    Rejected { code: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_errors_map_to_wire_failures() {
        let table = [
            (
                HandlerError::permanent("bad input"),
                v1::FailureKind::Permanent,
                "bad input",
                0,
            ),
            (
                HandlerError::retryable("flaky"),
                v1::FailureKind::Retryable,
                "flaky",
                0,
            ),
            (
                HandlerError::retry_after(Duration::from_secs(30), "rate limited"),
                v1::FailureKind::Retryable,
                "rate limited",
                30_000,
            ),
            (
                HandlerError::retry_after(Duration::from_micros(10), "soon"),
                v1::FailureKind::Retryable,
                "soon",
                1,
            ),
            (
                HandlerError::retry_after(Duration::ZERO, "now"),
                v1::FailureKind::Retryable,
                "now",
                0,
            ),
            (
                HandlerError::timeout("too slow"),
                v1::FailureKind::Timeout,
                "too slow",
                0,
            ),
            (
                HandlerError::from(anyhow::anyhow!("inner").context("outer")),
                v1::FailureKind::Retryable,
                "outer: inner",
                0,
            ),
        ];
        for (err, kind, message, retry_after_ms) in table {
            let wire = err.to_proto();
            assert_eq!(wire.kind, kind as i32, "{err}");
            assert_eq!(wire.message, message, "{err}");
            assert_eq!(wire.retry_after_ms, retry_after_ms, "{err}");
        }
    }

    #[test]
    fn accessors_report_intent() {
        let e = HandlerError::retry_after(Duration::from_secs(2), "later");
        assert_eq!(e.kind(), FailureKind::Retryable);
        assert_eq!(e.retry_after_delay(), Some(Duration::from_secs(2)));
        assert!(!e.is_permanent());
        assert!(HandlerError::permanent("x").is_permanent());
        assert_eq!(
            HandlerError::permanent("no such file").to_string(),
            "permanent failure: no such file"
        );
    }
}
