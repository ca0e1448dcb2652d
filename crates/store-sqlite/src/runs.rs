//! Flow definitions and workflow runs: plain rows keyed by name and version, and by
//! run id, with the engine's run document kept as LZ4-compressed JSON (a blob;
//! a run written as plain JSON text by an earlier build reads the same). The
//! document is rewritten at every step of its run, and compressed it takes a
//! third of the pages: a third of the write-ahead log and checkpoint writes
//! the run rows cost. Writes run on the writer thread (see
//! `writer::Session::write_runs`), compressed before they get there; reads on
//! the reader pool.

use crate::codec::{encode_cursor, millis, sql_error};
use baton_core::Millis;
use baton_store::{
    Document, Error, FlowOutcome, FlowRecord, Result, RunFilter, RunPage, RunRecord,
};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Row};

const RUN_COLUMNS: &str =
    "seq, run_id, flow_name, status, active, revision, created_at, updated_at, body, definition";

fn json_text(value: &serde_json::Value) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Other(format!("cannot encode json: {e}")))
}

fn json_value(text: &str, what: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{what} is not json: {e}")))
}

fn decode_flow(row: &Row<'_>) -> rusqlite::Result<Result<FlowRecord>> {
    let name: String = row.get(0)?;
    let version: i64 = row.get(1)?;
    let definition: String = row.get(2)?;
    let created_at: i64 = row.get(3)?;
    Ok(
        json_value(&definition, &format!("flow {name} v{version}")).map(|definition| FlowRecord {
            name,
            version: version as u32,
            definition,
            created_at_ms: created_at as Millis,
        }),
    )
}

/// A run document as stored: LZ4 blocks with their length first.
fn compress_body(text: &str) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(text.as_bytes())
}

/// The JSON text of a stored run document: a compressed blob, or the plain
/// text an earlier build wrote.
fn body_text(value: ValueRef<'_>, run_id: &str) -> Result<String> {
    let bytes = match value {
        ValueRef::Text(text) => text.to_vec(),
        ValueRef::Blob(blob) => lz4_flex::block::decompress_size_prepended(blob)
            .map_err(|e| Error::Corrupt(format!("run {run_id}: body does not decompress: {e}")))?,
        other => {
            return Err(Error::Corrupt(format!(
                "run {run_id}: body is a {:?}, not a document",
                other.data_type()
            )))
        }
    };
    String::from_utf8(bytes)
        .map_err(|e| Error::Corrupt(format!("run {run_id}: body is not UTF-8: {e}")))
}

fn decode_run(row: &Row<'_>) -> rusqlite::Result<Result<(i64, RunRecord)>> {
    let seq: i64 = row.get(0)?;
    let run_id: String = row.get(1)?;
    let body = match body_text(row.get_ref(8)?, &run_id) {
        Ok(text) => text,
        Err(e) => return Ok(Err(e)),
    };
    let definition: Option<String> = row.get(9)?;
    let definition = match definition {
        Some(text) => match json_value(&text, &format!("run {run_id}'s definition")) {
            Ok(v) => Some(v),
            Err(e) => return Ok(Err(e)),
        },
        None => None,
    };
    let record = RunRecord {
        flow_name: row.get(2)?,
        status: row.get(3)?,
        active: row.get::<_, i64>(4)? != 0,
        revision: row.get::<_, i64>(5)? as u64,
        created_at_ms: row.get::<_, i64>(6)? as Millis,
        updated_at_ms: row.get::<_, i64>(7)? as Millis,
        body: Document::from(serde_json::Value::Null),
        definition,
        run_id,
    };
    Ok(Document::from_text(body, &format!("run {}", record.run_id))
        .map(|body| (seq, RunRecord { body, ..record })))
}

pub(crate) fn get_flow(
    conn: &Connection,
    name: &str,
    version: Option<u32>,
) -> Result<Option<FlowRecord>> {
    let row = match version {
        Some(v) => conn
            .prepare_cached(
                "SELECT name, version, definition, created_at FROM flows WHERE name = ?1 AND version = ?2",
            )
            .map_err(sql_error)?
            .query_row(params![name, v], decode_flow)
            .optional(),
        None => conn
            .prepare_cached(
                "SELECT name, version, definition, created_at FROM flows WHERE name = ?1 ORDER BY version DESC LIMIT 1",
            )
            .map_err(sql_error)?
            .query_row(params![name], decode_flow)
            .optional(),
    }
    .map_err(sql_error)?;
    row.transpose()
}

pub(crate) fn list_flows(conn: &Connection) -> Result<Vec<FlowRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT name, version, definition, created_at FROM flows ORDER BY name, version",
        )
        .map_err(sql_error)?;
    let rows = stmt.query_map([], decode_flow).map_err(sql_error)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(sql_error)??);
    }
    Ok(out)
}

/// Registers a flow version (see `Store::put_flow`). Runs inside the writer's transaction.
pub(crate) fn put_flow(
    conn: &Connection,
    name: &str,
    version: Option<u32>,
    definition: serde_json::Value,
    now: Millis,
) -> Result<FlowOutcome> {
    let target = match version {
        Some(v) => {
            if let Some(existing) = get_flow(conn, name, Some(v))? {
                return Ok(if existing.definition == definition {
                    FlowOutcome::Existing(existing)
                } else {
                    FlowOutcome::Conflict(existing)
                });
            }
            v
        }
        None => match get_flow(conn, name, None)? {
            Some(latest) if latest.definition == definition => {
                return Ok(FlowOutcome::Existing(latest))
            }
            Some(latest) => latest
                .version
                .checked_add(1)
                .ok_or_else(|| Error::Other(format!("flow {name} has no version numbers left")))?,
            None => 1,
        },
    };
    conn.prepare_cached(
        "INSERT INTO flows (name, version, definition, created_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(sql_error)?
    .execute(params![name, target, json_text(&definition)?, millis(now)])
    .map_err(sql_error)?;
    Ok(FlowOutcome::Created(FlowRecord {
        name: name.to_string(),
        version: target,
        definition,
        created_at_ms: now,
    }))
}

pub(crate) fn get_run(conn: &Connection, run_id: &str) -> Result<Option<RunRecord>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1");
    let row = conn
        .prepare_cached(&sql)
        .map_err(sql_error)?
        .query_row(params![run_id], decode_run)
        .optional()
        .map_err(sql_error)?;
    Ok(row.transpose()?.map(|(_, r)| r))
}

/// A run's document and definition as the text columns hold them.
pub(crate) struct RunText {
    /// The document, compressed ([`compress_body`]).
    body: Vec<u8>,
    definition: Option<String>,
}

impl RunText {
    pub(crate) fn encode(record: &RunRecord) -> Result<RunText> {
        Ok(RunText {
            body: compress_body(record.body.as_str()),
            definition: record.definition.as_ref().map(json_text).transpose()?,
        })
    }
}

/// Writes a run (its columns from `record`, its text from `text`) if the stored
/// revision is the expected one; `Err(current)` if not.
pub(crate) fn check_and_write(
    conn: &Connection,
    record: &RunRecord,
    text: &RunText,
    expected_revision: Option<u64>,
) -> Result<Result<(), Option<RunRecord>>> {
    let (body, definition) = (text.body.as_slice(), &text.definition);
    let changed = match expected_revision {
        None => conn
            .prepare_cached(
                "INSERT INTO runs (run_id, flow_name, status, active, revision, created_at, updated_at, body, definition)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (run_id) DO NOTHING",
            )
            .map_err(sql_error)?
            .execute(params![
                record.run_id,
                record.flow_name,
                record.status,
                record.active as i64,
                record.revision as i64,
                millis(record.created_at_ms),
                millis(record.updated_at_ms),
                body,
                definition,
            ])
            .map_err(sql_error)?,
        Some(expected) => {
            conn.prepare_cached(
                "UPDATE runs SET flow_name = ?2, status = ?3, active = ?4, revision = ?5,
                    updated_at = ?6, body = ?7, definition = coalesce(?9, definition)
                 WHERE run_id = ?1 AND revision = ?8",
            )
            .map_err(sql_error)?
            .execute(params![
                record.run_id,
                record.flow_name,
                record.status,
                record.active as i64,
                record.revision as i64,
                millis(record.updated_at_ms),
                body,
                expected as i64,
                definition,
            ])
            .map_err(sql_error)?
        }
    };
    if changed == 1 {
        Ok(Ok(()))
    } else {
        Ok(Err(get_run(conn, &record.run_id)?))
    }
}

pub(crate) fn list_runs(conn: &Connection, filter: &RunFilter) -> Result<RunPage> {
    let (before, limit) = crate::reader::page_bounds(filter.cursor.as_deref(), filter.limit)?;
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE seq < ?1
           AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR flow_name = ?4)
         ORDER BY seq DESC LIMIT ?2"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
    let rows = stmt
        .query_map(
            params![before, limit as i64 + 1, filter.status, filter.flow_name],
            decode_run,
        )
        .map_err(sql_error)?;
    let mut runs = Vec::new();
    let mut last = None;
    let mut more = false;
    for row in rows {
        if runs.len() == limit {
            more = true;
            break;
        }
        let (seq, run) = row.map_err(sql_error)??;
        last = Some(seq);
        runs.push(run);
    }
    Ok(RunPage {
        runs,
        next_cursor: if more { last.map(encode_cursor) } else { None },
    })
}

pub(crate) fn active_runs(conn: &Connection) -> Result<Vec<RunRecord>> {
    let sql = format!(
        "SELECT {RUN_COLUMNS} FROM runs INDEXED BY runs_active WHERE active = 1 ORDER BY seq"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
    let rows = stmt.query_map([], decode_run).map_err(sql_error)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(sql_error)??.1);
    }
    Ok(out)
}
