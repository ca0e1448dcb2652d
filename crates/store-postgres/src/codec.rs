//! Conversions between rows and the model: JSON columns in and out, status codes,
//! times as signed integers, list cursors, and PostgreSQL errors as `store::Error`.

use baton_core::lifecycle::TaskState;
use baton_core::{Millis, Status, TaskSpec};
use baton_store::{Document, Error, FlowRecord, RunRecord, TaskRecord};
use serde::Serialize;
use std::error::Error as StdError;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::Row;

/// A failure inside a store call: either from PostgreSQL (kept whole, so that a
/// deadlock or serialization failure can be told apart and retried) or already a
/// store error (bad data, invariant broken).
#[derive(Debug)]
pub(crate) enum Fault {
    Db(tokio_postgres::Error),
    Store(Error),
}

pub(crate) type Res<T> = std::result::Result<T, Fault>;

impl From<tokio_postgres::Error> for Fault {
    fn from(e: tokio_postgres::Error) -> Self {
        Fault::Db(e)
    }
}

impl From<Error> for Fault {
    fn from(e: Error) -> Self {
        Fault::Store(e)
    }
}

impl Fault {
    /// The transaction was rolled back by PostgreSQL because of a conflict with
    /// another one; running it again can succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Fault::Db(e) => matches!(
                e.code(),
                Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
            ),
            Fault::Store(_) => false,
        }
    }

    pub(crate) fn into_store(self) -> Error {
        match self {
            Fault::Db(e) => db_error(&e),
            Fault::Store(e) => e,
        }
    }
}

/// Maps a PostgreSQL error to a store error with a readable message: connection
/// trouble, authentication, a missing database, shutdown and resource limits are
/// `Unavailable`; anything else is `Other`.
pub(crate) fn db_error(e: &tokio_postgres::Error) -> Error {
    let message = describe(e);
    let Some(db) = e.as_db_error() else {
        // No server error: the connection failed, closed or timed out.
        return Error::Unavailable(message);
    };
    let code = db.code().code();
    let unavailable = code.starts_with("08") // connection exception
        || code.starts_with("28") // invalid authorization
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // shutdown, cannot connect now
        || code == "3D000" // database does not exist
        || code == "40001"
        || code == "40P01";
    if unavailable {
        Error::Unavailable(message)
    } else if code == "XX001" || code == "XX002" {
        Error::Corrupt(message)
    } else {
        Error::Other(message)
    }
}

/// The whole story of a PostgreSQL error: tokio-postgres's own `Display` says only
/// "db error" or "error connecting to server", the cause is in the source chain.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut out = format!(
            "postgres: {} ({}): {}",
            db.severity().to_lowercase(),
            db.code().code(),
            db.message()
        );
        if let Some(detail) = db.detail() {
            out.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            out.push_str(&format!("; hint: {hint}"));
        }
        return out;
    }
    let mut out = format!("postgres: {e}");
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    out
}

fn corrupt(what: impl std::fmt::Display) -> Fault {
    Fault::Store(Error::Corrupt(what.to_string()))
}

/// Times are `u64` in the model and `BIGINT` in PostgreSQL; times beyond year 292
/// million are clamped rather than wrapped, so comparisons stay right.
pub(crate) fn millis(value: Millis) -> i64 {
    value.min(i64::MAX as u64) as i64
}

pub(crate) fn opt_millis(value: Option<Millis>) -> Option<i64> {
    value.map(millis)
}

fn read_millis(raw: i64, what: &str) -> Res<Millis> {
    Millis::try_from(raw).map_err(|_| corrupt(format!("{what}: negative time {raw}")))
}

/// A status as stored, checked against the statuses this build knows.
pub(crate) fn read_status(code: i16) -> Res<Status> {
    u8::try_from(code)
        .ok()
        .and_then(Status::from_code)
        .ok_or_else(|| corrupt(format!("unknown status code {code}")))
}

/// JSON as a query parameter: serialised once by us (so a failure is ours to
/// report), sent as text to a `json` or `jsonb` parameter.
#[derive(Debug)]
pub(crate) struct JsonParam(Vec<u8>);

impl JsonParam {
    pub(crate) fn encode<T: Serialize>(value: &T) -> Res<Self> {
        serde_json::to_vec(value)
            .map(JsonParam)
            .map_err(|e| Fault::Store(Error::Other(format!("cannot encode json: {e}"))))
    }

    /// A document already encoded by its owner.
    pub(crate) fn document(doc: &Document) -> Self {
        JsonParam(doc.as_str().as_bytes().to_vec())
    }
}

impl ToSql for JsonParam {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        if *ty == Type::JSONB {
            // The binary format of jsonb is a version byte, then the text.
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }

    to_sql_checked!();
}

/// The text of a `json` or `jsonb` column, decoded by us so that bad data becomes
/// `Error::Corrupt` with the row named.
pub(crate) struct RawJson<'a>(&'a [u8]);

impl<'a> FromSql<'a> for RawJson<'a> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        if *ty == Type::JSONB {
            return match raw.split_first() {
                Some((1, text)) => Ok(RawJson(text)),
                _ => Err("unsupported jsonb format version".into()),
            };
        }
        Ok(RawJson(raw))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSON | Type::JSONB)
    }
}

impl RawJson<'_> {
    fn decode<T: serde::de::DeserializeOwned>(&self, what: impl Fn() -> String) -> Res<T> {
        serde_json::from_slice(self.0).map_err(|e| corrupt(format!("{}: {e}", what())))
    }

    /// The text as an opaque document, checked to be JSON.
    fn document(&self, what: &str) -> Res<Document> {
        let text = std::str::from_utf8(self.0)
            .map_err(|e| corrupt(format!("{what} is not utf-8: {e}")))?;
        Ok(Document::from_text(text.to_owned(), what)?)
    }
}

/// Reads one column; a type mismatch or NULL where none is allowed is corruption.
fn column<'a, T: FromSql<'a>>(row: &'a Row, index: usize, what: &str) -> Res<T> {
    row.try_get(index)
        .map_err(|e| corrupt(format!("{what}: {}", describe(&e))))
}

/// A task row loaded for reading or for a transition.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub seq: i64,
    pub spec: TaskSpec,
    pub state: TaskState,
}

impl Loaded {
    pub(crate) fn into_record(self) -> TaskRecord {
        TaskRecord {
            spec: self.spec,
            state: self.state,
        }
    }
}

/// Decodes the columns of `tasks::from_tasks!` (seq, state, lease_deadline, spec).
/// The third column, the later of the task's `lease_deadline` and its owner's
/// extended deadline, is authoritative over the copy inside `state`: extending
/// leases rewrites neither.
pub(crate) fn decode_task(row: &Row) -> Res<Loaded> {
    let seq: i64 = column(row, 0, "task row")?;
    let what = |field: &str| format!("task row {seq}: {field}");
    let state: RawJson<'_> = column(row, 1, &what("state column"))?;
    let lease_deadline: Option<i64> = column(row, 2, &what("lease_deadline column"))?;
    let spec: RawJson<'_> = column(row, 3, &what("spec column"))?;
    let spec: TaskSpec = spec.decode(|| what("spec is not a valid task spec"))?;
    let mut state: TaskState = state.decode(|| what("state is not a valid task state"))?;
    state.lease_deadline_ms = lease_deadline
        .map(|d| read_millis(d, &what("lease_deadline")))
        .transpose()?;
    Ok(Loaded { seq, spec, state })
}

/// Decodes a `(seq, spec)` row.
pub(crate) fn decode_spec_row(row: &Row) -> Res<TaskSpec> {
    let seq: i64 = column(row, 0, "task row")?;
    let spec: RawJson<'_> = column(row, 1, &format!("task row {seq}: spec column"))?;
    spec.decode(|| format!("task row {seq}: spec is not a valid task spec"))
}

/// Decodes the columns of `runs::select_flows!`.
pub(crate) fn decode_flow(row: &Row) -> Res<FlowRecord> {
    let name: String = column(row, 0, "flow row")?;
    let version: i64 = column(row, 1, &format!("flow {name}"))?;
    let what = |field: &str| format!("flow {name} version {version}: {field}");
    let definition: RawJson<'_> = column(row, 2, &what("definition column"))?;
    let created_at: i64 = column(row, 3, &what("created_at column"))?;
    Ok(FlowRecord {
        version: u32::try_from(version).map_err(|_| corrupt(what("version out of range")))?,
        definition: definition.decode(|| what("definition is not json"))?,
        created_at_ms: read_millis(created_at, &what("created_at"))?,
        name,
    })
}

/// Decodes the columns of `runs::select_runs!`, with the run's `seq` (its list cursor).
pub(crate) fn decode_run(row: &Row) -> Res<(i64, RunRecord)> {
    let seq: i64 = column(row, 0, "run row")?;
    let run_id: String = column(row, 1, &format!("run row {seq}"))?;
    let what = |field: &str| format!("run {run_id}: {field}");
    let revision: i64 = column(row, 5, &what("revision column"))?;
    let created_at: i64 = column(row, 6, &what("created_at column"))?;
    let updated_at: i64 = column(row, 7, &what("updated_at column"))?;
    let body: RawJson<'_> = column(row, 8, &what("body column"))?;
    let definition: Option<RawJson<'_>> = column(row, 9, &what("definition column"))?;
    let record = RunRecord {
        flow_name: column(row, 2, &what("flow_name column"))?,
        status: column(row, 3, &what("status column"))?,
        active: column(row, 4, &what("active column"))?,
        revision: u64::try_from(revision).map_err(|_| corrupt(what("negative revision")))?,
        created_at_ms: read_millis(created_at, &what("created_at"))?,
        updated_at_ms: read_millis(updated_at, &what("updated_at"))?,
        body: body.document(&what("body"))?,
        definition: definition
            .map(|d| d.decode(|| what("definition is not json")))
            .transpose()?,
        run_id: run_id.clone(),
    };
    Ok((seq, record))
}

/// Revisions are `u64` in the model and `BIGINT` here.
pub(crate) fn revision(value: u64) -> Res<i64> {
    i64::try_from(value).map_err(|_| {
        Fault::Store(Error::Other(format!(
            "run revision {value} is beyond what the store can hold"
        )))
    })
}

/// List cursors (of tasks and of runs) are the `seq` of the last item of the
/// previous page.
pub(crate) fn encode_cursor(seq: i64) -> String {
    seq.to_string()
}

pub(crate) fn decode_cursor(cursor: Option<&str>) -> Result<i64, Error> {
    match cursor {
        None => Ok(i64::MAX),
        Some(raw) => match raw.parse::<i64>() {
            Ok(seq) if seq > 0 => Ok(seq),
            _ => Err(Error::InvalidCursor),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_match_core() {
        let codes: Vec<u8> = [
            Status::Queued,
            Status::Running,
            Status::RetryWait,
            Status::Waiting,
        ]
        .map(Status::code)
        .to_vec();
        assert_eq!(codes, vec![0, 1, 2, 7], "the SQL text hard-codes these");
        for status in Status::ALL {
            assert_eq!(read_status(i16::from(status.code())).unwrap(), status);
        }
        assert!(read_status(-1).is_err());
        assert!(read_status(99).is_err());
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(Some(&encode_cursor(42))).unwrap(), 42);
        assert_eq!(decode_cursor(None).unwrap(), i64::MAX);
        for bad in ["", "x", "0", "-3", "1.5", "99999999999999999999"] {
            assert!(
                matches!(decode_cursor(Some(bad)), Err(Error::InvalidCursor)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn far_future_times_are_clamped_and_negative_ones_refused() {
        assert_eq!(millis(u64::MAX), i64::MAX);
        assert_eq!(millis(5), 5);
        assert!(read_millis(-1, "t").is_err());
        assert!(revision(u64::MAX).is_err());
    }
}
