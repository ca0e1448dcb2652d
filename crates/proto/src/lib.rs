//! Baton's gRPC API, generated at build time by a pure-Rust protobuf compiler, and
//! the one table that maps an [`ErrorCode`] to its HTTP status and gRPC code.

use baton_core::{Error, ErrorCode};

/// Generated code: `Register` is much larger than the other agent messages, and
/// boxing it would only cost an allocation per connection.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("baton.v1");
}

pub mod traceparent;

/// The error table: every failure maps to exactly one HTTP status and one gRPC code,
/// so REST and gRPC clients see the same code and message.
pub const ERROR_TABLE: &[(ErrorCode, u16, tonic::Code)] = &[
    (
        ErrorCode::InvalidArgument,
        400,
        tonic::Code::InvalidArgument,
    ),
    (ErrorCode::NotFound, 404, tonic::Code::NotFound),
    (ErrorCode::Conflict, 409, tonic::Code::AlreadyExists),
    (
        ErrorCode::PayloadTooLarge,
        413,
        tonic::Code::InvalidArgument,
    ),
    (
        ErrorCode::ResourceExhausted,
        429,
        tonic::Code::ResourceExhausted,
    ),
    (ErrorCode::StaleAttempt, 409, tonic::Code::Aborted),
    (
        ErrorCode::FailedPrecondition,
        409,
        tonic::Code::FailedPrecondition,
    ),
    (ErrorCode::Unavailable, 503, tonic::Code::Unavailable),
    (
        ErrorCode::DeadlineExceeded,
        504,
        tonic::Code::DeadlineExceeded,
    ),
    (ErrorCode::MethodNotAllowed, 405, tonic::Code::Unimplemented),
    (ErrorCode::Internal, 500, tonic::Code::Internal),
];

fn row(code: ErrorCode) -> &'static (ErrorCode, u16, tonic::Code) {
    ERROR_TABLE
        .iter()
        .find(|(c, _, _)| *c == code)
        .expect("every error code has a row")
}

pub fn http_status(code: ErrorCode) -> u16 {
    row(code).1
}

pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    row(code).2
}

/// The gRPC status for an error. The Baton code travels in the `baton-error-code`
/// metadata and the details as JSON in `baton-error-details`, so a gRPC client can
/// rebuild exactly what a REST client sees.
pub fn to_status(err: &Error) -> tonic::Status {
    let mut status = tonic::Status::new(grpc_code(err.code), err.message.clone());
    if let Ok(v) = err.code.as_str().parse() {
        status.metadata_mut().insert("baton-error-code", v);
    }
    if !err.details.is_null() {
        if let Ok(v) = ascii_json(&err.details).parse() {
            status.metadata_mut().insert("baton-error-details", v);
        }
    }
    status
}

/// JSON text with every non-ASCII character escaped (`\uXXXX`), so that details
/// naming, say, a step `données` still fit in a metadata value.
fn ascii_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            // Non-ASCII and control characters only occur inside JSON strings (serde_json
            // escapes all but DEL), where escapes are valid.
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// Rebuilds a Baton error from a gRPC status (client side).
pub fn from_status(status: &tonic::Status) -> Error {
    let code = status
        .metadata()
        .get("baton-error-code")
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::parse)
        .unwrap_or_else(|| match status.code() {
            tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
            tonic::Code::NotFound => ErrorCode::NotFound,
            tonic::Code::AlreadyExists => ErrorCode::Conflict,
            tonic::Code::ResourceExhausted => ErrorCode::ResourceExhausted,
            tonic::Code::FailedPrecondition => ErrorCode::FailedPrecondition,
            tonic::Code::Aborted => ErrorCode::StaleAttempt,
            tonic::Code::Unavailable => ErrorCode::Unavailable,
            tonic::Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            tonic::Code::Unimplemented => ErrorCode::MethodNotAllowed,
            _ => ErrorCode::Internal,
        });
    let details = status
        .metadata()
        .get("baton-error-details")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null);
    Error {
        code,
        message: status.message().to_string(),
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_row_and_round_trips() {
        let codes = [
            ErrorCode::InvalidArgument,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::PayloadTooLarge,
            ErrorCode::ResourceExhausted,
            ErrorCode::StaleAttempt,
            ErrorCode::FailedPrecondition,
            ErrorCode::Unavailable,
            ErrorCode::DeadlineExceeded,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Internal,
        ];
        assert_eq!(codes.len(), ERROR_TABLE.len());
        for code in codes {
            assert_eq!(ERROR_TABLE.iter().filter(|r| r.0 == code).count(), 1);
            let err = Error::new(code, "something went wrong").with_field("task_type");
            assert_eq!(from_status(&to_status(&err)), err);
        }
    }

    #[test]
    fn details_with_non_ascii_text_survive_the_metadata() {
        let err = Error::invalid("bad definition").with_details(serde_json::json!({
            "problems": [{"field": "steps[0].id", "message": "données → 🚀 duplicate"}]
        }));
        assert_eq!(from_status(&to_status(&err)), err);
    }
}
