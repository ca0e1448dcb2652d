//! Conversions between rows and the task model: status codes in SQL, JSON columns,
//! times as signed integers, list cursors and error mapping.

use baton_core::lifecycle::TaskState;
use baton_core::{Millis, TaskSpec};
use baton_store::{Error, Result, TaskRecord};
use rusqlite::types::ValueRef;
use rusqlite::Row;
use serde::Serialize;

/// A task row loaded for reading or for a transition.
pub(crate) struct Loaded {
    pub seq: i64,
    pub spec: TaskSpec,
    pub state: TaskState,
    /// The stored spec's size in bytes.
    pub spec_bytes: usize,
}

/// Times are `u64` in the model and `i64` in SQLite; times beyond year 292 million
/// are clamped rather than wrapped, so comparisons stay right.
pub(crate) fn millis(value: Millis) -> i64 {
    value.min(i64::MAX as u64) as i64
}

pub(crate) fn opt_millis(value: Option<Millis>) -> Option<i64> {
    value.map(millis)
}

/// Decodes the columns of `select_records!`. The `lease_deadline` column is authoritative over the
/// copy inside `state`: extending leases rewrites only the column.
pub(crate) fn decode_record(row: &Row<'_>) -> rusqlite::Result<Result<Loaded>> {
    decode_record_with(row, |_| None)
}

/// [`decode_record`], taking the spec from `known` (given the row's `seq`)
/// instead of decoding it when `known` has it.
pub(crate) fn decode_record_with(
    row: &Row<'_>,
    known: impl FnOnce(i64) -> Option<TaskSpec>,
) -> rusqlite::Result<Result<Loaded>> {
    let seq: i64 = row.get(0)?;
    let spec = row.get_ref(1)?;
    let state = row.get_ref(2)?;
    let lease_deadline: Option<i64> = row.get(3)?;
    Ok(decode_parts(seq, spec, state, lease_deadline, known(seq)))
}

fn decode_parts(
    seq: i64,
    spec: ValueRef<'_>,
    state: ValueRef<'_>,
    lease_deadline: Option<i64>,
    known: Option<TaskSpec>,
) -> Result<Loaded> {
    let spec_column = column_bytes(seq, spec, "spec")?;
    let spec = match known {
        Some(spec) => spec,
        None => decode_spec(seq, spec_column)?,
    };
    let state = decode_state(seq, column_bytes(seq, state, "state")?, lease_deadline)?;
    Ok(Loaded {
        seq,
        spec,
        state,
        spec_bytes: spec_column.len(),
    })
}

/// The bytes of row `seq`'s `what` column.
pub(crate) fn column_bytes<'a>(seq: i64, value: ValueRef<'a>, what: &str) -> Result<&'a [u8]> {
    value
        .as_bytes()
        .map_err(|e| Error::Corrupt(format!("task row {seq}: {what} column: {e}")))
}

/// Row `seq`'s spec, or the part of it `T` names.
pub(crate) fn decode_spec<T: serde::de::DeserializeOwned>(seq: i64, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::Corrupt(format!(
            "task row {seq}: spec is not a valid task spec: {e}"
        ))
    })
}

/// Row `seq`'s state, with its lease deadline from its own column.
pub(crate) fn decode_state(
    seq: i64,
    bytes: &[u8],
    lease_deadline: Option<i64>,
) -> Result<TaskState> {
    let mut state: TaskState = serde_json::from_slice(bytes).map_err(|e| {
        Error::Corrupt(format!(
            "task row {seq}: state is not a valid task state: {e}"
        ))
    })?;
    state.lease_deadline_ms = lease_deadline.map(|d| d as Millis);
    Ok(state)
}

impl Loaded {
    pub(crate) fn into_record(self) -> TaskRecord {
        TaskRecord {
            spec: self.spec,
            state: self.state,
        }
    }
}

/// Serialises into a reused buffer and returns it as text.
pub(crate) fn encode_json<'b, T: Serialize>(buf: &'b mut Vec<u8>, value: &T) -> Result<&'b str> {
    buf.clear();
    serde_json::to_writer(&mut *buf, value)
        .map_err(|e| Error::Other(format!("cannot encode json: {e}")))?;
    std::str::from_utf8(buf)
        .map_err(|e| Error::Other(format!("json encoder produced invalid utf-8: {e}")))
}

/// List cursors are the `seq` of the last task on the previous page.
pub(crate) fn encode_cursor(seq: i64) -> String {
    seq.to_string()
}

pub(crate) fn decode_cursor(cursor: &str) -> Result<i64> {
    match cursor.parse::<i64>() {
        Ok(seq) if seq > 0 => Ok(seq),
        _ => Err(Error::InvalidCursor),
    }
}

pub(crate) fn sql_error(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as Code;
    match e.sqlite_error_code() {
        Some(
            Code::DatabaseBusy
            | Code::DatabaseLocked
            | Code::DiskFull
            | Code::SystemIoFailure
            | Code::CannotOpen
            | Code::OutOfMemory
            | Code::PermissionDenied
            | Code::ReadOnly,
        ) => Error::Unavailable(format!("sqlite: {e}")),
        Some(Code::DatabaseCorrupt | Code::NotADatabase) => Error::Corrupt(format!("sqlite: {e}")),
        _ => Error::Other(format!("sqlite: {e}")),
    }
}

/// `store::Error` is not `Clone`; a failed commit is reported to every operation in it.
pub(crate) fn copy_error(e: &Error) -> Error {
    match e {
        Error::Unavailable(m) => Error::Unavailable(m.clone()),
        Error::Corrupt(m) => Error::Corrupt(m.clone()),
        Error::InvalidCursor => Error::InvalidCursor,
        Error::Fenced(m) => Error::Fenced(m.clone()),
        Error::Other(m) => Error::Other(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::Status;

    #[test]
    fn status_codes_match_core() {
        let codes: Vec<u8> = [Status::Queued, Status::Running, Status::RetryWait]
            .map(Status::code)
            .to_vec();
        assert_eq!(codes, vec![0, 1, 2], "the SQL text hard-codes these");
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)).unwrap(), 42);
        for bad in ["", "x", "0", "-3", "1.5", "99999999999999999999"] {
            assert!(
                matches!(decode_cursor(bad), Err(Error::InvalidCursor)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn far_future_times_are_clamped() {
        assert_eq!(millis(u64::MAX), i64::MAX);
        assert_eq!(millis(5), 5);
    }
}
