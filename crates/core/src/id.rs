//! Identifier newtypes, so that a task id is never confused with an agent id.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest id accepted from a client; longer ones are refused as invalid input.
pub const MAX_ID_LEN: usize = 256;

macro_rules! string_id {
    ($name:ident, $what:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a client-supplied id after checking it is usable.
            pub fn parse(raw: impl Into<String>) -> Result<Self, crate::Error> {
                let raw = raw.into();
                validate_id(&raw, $what)?;
                Ok(Self(raw))
            }

            /// Wraps a string already known to be valid (read back from a store).
            pub fn from_trusted(raw: impl Into<String>) -> Self {
                Self(raw.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(TaskId, "task_id");
string_id!(AgentId, "agent_id");

impl TaskId {
    /// A new time-ordered id (UUID v7), used when the client gives none.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

fn validate_id(raw: &str, what: &str) -> Result<(), crate::Error> {
    if raw.is_empty() {
        return Err(crate::Error::invalid(format!("{what} must not be empty")).with_field(what));
    }
    if raw.len() > MAX_ID_LEN {
        return Err(
            crate::Error::invalid(format!("{what} is longer than {MAX_ID_LEN} bytes"))
                .with_field(what),
        );
    }
    if raw
        .chars()
        .any(|c| c.is_control() || c == '/' || c.is_whitespace())
    {
        return Err(crate::Error::invalid(format!(
            "{what} may not contain whitespace, control characters or '/'"
        ))
        .with_field(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(TaskId::parse("report-001").is_ok());
        assert!(TaskId::parse("").is_err());
        assert!(TaskId::parse("a/b").is_err());
        assert!(TaskId::parse("a b").is_err());
        assert!(TaskId::parse("x".repeat(MAX_ID_LEN + 1)).is_err());
        assert_ne!(TaskId::generate(), TaskId::generate());
    }
}
