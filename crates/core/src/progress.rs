//! Progress events: what a handler emits while an attempt runs (an alert, an LLM
//! token, ...), relayed to clients watching the task. The rules both ends apply to
//! an event's kind and size live here so the SDK and the server agree.

/// Longest kind accepted.
pub const MAX_KIND_LEN: usize = 64;
/// Largest `data` accepted, as JSON text; a bigger event is dropped.
pub const MAX_DATA_BYTES: usize = 64 * 1024;
/// Names the server's own task event stream uses; an agent may not emit them.
pub const RESERVED_KINDS: &[&str] = &["status", "end", "lagged", "error", "message"];

/// Checks an event kind: 1 to [`MAX_KIND_LEN`] ASCII letters, digits, `_`, `-` or
/// `.`, and not one of [`RESERVED_KINDS`]. `Err` says what is wrong.
pub fn validate_kind(kind: &str) -> Result<(), String> {
    if kind.is_empty() || kind.len() > MAX_KIND_LEN {
        return Err(format!(
            "event kind must be 1 to {MAX_KIND_LEN} characters, got {}",
            kind.len()
        ));
    }
    if !kind
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "event kind {kind:?} may hold only letters, digits, '_', '-' and '.'"
        ));
    }
    if RESERVED_KINDS.contains(&kind) {
        return Err(format!("event kind {kind:?} is reserved by the server"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        for ok in ["alert", "token", "detection", "a.b-c_1"] {
            assert_eq!(validate_kind(ok), Ok(()), "{ok}");
        }
        let long = "x".repeat(MAX_KIND_LEN + 1);
        for bad in [
            "",
            "with space",
            "new\nline",
            "end",
            "status",
            long.as_str(),
        ] {
            assert!(validate_kind(bad).is_err(), "{bad:?}");
        }
    }
}
