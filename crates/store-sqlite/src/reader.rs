//! Reads: a small pool of read-only connections used from `spawn_blocking`, so
//! that reads never queue behind the writer. In WAL mode a reader sees the last
//! committed state, and the writer answers only after committing, so a read that
//! starts after a write returned sees that write.

use crate::codec::{
    column_bytes, decode_cursor, decode_record, decode_spec, encode_cursor, sql_error,
};
use baton_core::{Millis, Status, TaskId, TaskSpec};
use baton_store::{Error, ListFilter, Page, Result, TaskRecord};
use rusqlite::{params, Connection};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Page size when the filter asks for 0.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest page handed out, whatever the filter asks for.
pub const MAX_LIST_LIMIT: usize = 1_000;

pub(crate) const LIST_ALL: &str = select_records!("WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2");
/// Statuses other than queued and running (`status > 1` repeats the partial
/// index's condition, so that the planner may use it whatever `?3` is).
pub(crate) const LIST_BY_STATUS: &str = select_records!(
    "INDEXED BY tasks_by_status WHERE status = ?3 AND status > 1 AND seq < ?1 ORDER BY seq DESC LIMIT ?2"
);
pub(crate) const LIST_BY_TYPE: &str =
    select_records!("WHERE task_type = ?3 AND seq < ?1 ORDER BY seq DESC LIMIT ?2");
pub(crate) const LIST_BY_BOTH: &str = select_records!(
    "WHERE status = ?3 AND status > 1 AND task_type = ?4 AND seq < ?1 ORDER BY seq DESC LIMIT ?2"
);
/// Queued and running tasks are not in `tasks_by_status`: the page is picked by
/// `seq` from their own index (covering, no row read) before any row is read.
/// Running tasks are bounded by the server's workers; a queued page costs one
/// pass over the queued index (of the type, when one is given).
pub(crate) const LIST_QUEUED: &str = select_records!(
    "WHERE seq IN (SELECT seq FROM tasks INDEXED BY tasks_queued
        WHERE status = 0 AND seq < ?1 ORDER BY seq DESC LIMIT ?2)
    ORDER BY seq DESC"
);
pub(crate) const LIST_QUEUED_BY_TYPE: &str = select_records!(
    "WHERE seq IN (SELECT seq FROM tasks INDEXED BY tasks_queued
        WHERE status = 0 AND task_type = ?3 AND seq < ?1 ORDER BY seq DESC LIMIT ?2)
    ORDER BY seq DESC"
);
pub(crate) const LIST_RUNNING: &str = select_records!(
    "WHERE seq IN (SELECT seq FROM tasks INDEXED BY tasks_running_owner
        WHERE status = 1 AND seq < ?1 ORDER BY seq DESC LIMIT ?2)
    ORDER BY seq DESC"
);
pub(crate) const LIST_RUNNING_BY_TYPE: &str = select_records!(
    "WHERE seq IN (SELECT seq FROM tasks INDEXED BY tasks_running_owner
        WHERE status = 1 AND task_type = ?3 AND seq < ?1 ORDER BY seq DESC LIMIT ?2)
    ORDER BY seq DESC"
);
pub(crate) const NEXT_WAKE: &str =
    "SELECT MIN(ready_at) FROM tasks INDEXED BY tasks_retry_ready WHERE status = 2";

pub(crate) struct Readers {
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// A connection taken from the pool; it goes back when dropped, even on panic.
struct Borrowed<'a> {
    readers: &'a Readers,
    conn: Option<Connection>,
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.readers
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

impl Readers {
    pub(crate) fn new(conns: Vec<Connection>) -> Self {
        let permits = Arc::new(Semaphore::new(conns.len()));
        Self {
            idle: Mutex::new(conns),
            permits,
        }
    }

    /// Runs `read` on an idle connection in the blocking pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("the store is closed".into()))?;
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let borrowed = Borrowed {
                readers: &readers,
                conn: Some(conn.ok_or_else(|| {
                    Error::Other("reader pool is empty although a permit was held".into())
                })?),
            };
            read(borrowed.conn.as_ref().expect("set above"))
        })
        .await
        .map_err(|e| Error::Other(format!("read task failed: {e}")))?
    }
}

pub(crate) fn get(conn: &Connection, task_id: &TaskId) -> Result<Option<TaskRecord>> {
    let mut stmt = conn
        .prepare_cached(crate::writer::BY_ID)
        .map_err(sql_error)?;
    let mut rows = stmt.query(params![task_id.as_str()]).map_err(sql_error)?;
    match rows.next().map_err(sql_error)? {
        Some(row) => Ok(Some(decode_record(row).map_err(sql_error)??.into_record())),
        None => Ok(None),
    }
}

/// Where a page starts (rows with a smaller `seq`) and how many rows it holds.
pub(crate) fn page_bounds(cursor: Option<&str>, limit: usize) -> Result<(i64, usize)> {
    let before = match cursor {
        Some(cursor) => decode_cursor(cursor)?,
        None => i64::MAX,
    };
    let limit = match limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n.min(MAX_LIST_LIMIT),
    };
    Ok((before, limit))
}

pub(crate) fn list(conn: &Connection, filter: &ListFilter) -> Result<Page> {
    let (before, limit) = page_bounds(filter.cursor.as_deref(), filter.limit)?;
    // One more than asked tells whether another page exists.
    let fetch = limit as i64 + 1;
    let status = filter.status.map(Status::code);
    let task_type = filter.task_type.as_deref();
    let (queued, running) = (Status::Queued.code(), Status::Running.code());
    let sql = match (status, task_type) {
        (None, None) => LIST_ALL,
        (Some(s), None) if s == queued => LIST_QUEUED,
        (Some(s), None) if s == running => LIST_RUNNING,
        (Some(_), None) => LIST_BY_STATUS,
        (None, Some(_)) => LIST_BY_TYPE,
        (Some(s), Some(_)) if s == queued => LIST_QUEUED_BY_TYPE,
        (Some(s), Some(_)) if s == running => LIST_RUNNING_BY_TYPE,
        (Some(_), Some(_)) => LIST_BY_BOTH,
    };
    let mut stmt = conn.prepare_cached(sql).map_err(sql_error)?;
    let mut rows = match (status, task_type) {
        (None, None) => stmt.query(params![before, fetch]),
        (Some(s), None) if s == queued || s == running => stmt.query(params![before, fetch]),
        (Some(status), None) => stmt.query(params![before, fetch, status]),
        (None, Some(task_type)) => stmt.query(params![before, fetch, task_type]),
        (Some(s), Some(task_type)) if s == queued || s == running => {
            stmt.query(params![before, fetch, task_type])
        }
        (Some(status), Some(task_type)) => stmt.query(params![before, fetch, status, task_type]),
    }
    .map_err(sql_error)?;

    let mut tasks = Vec::with_capacity(limit.min(64));
    let mut last_seq = None;
    let mut more = false;
    while let Some(row) = rows.next().map_err(sql_error)? {
        if tasks.len() == limit {
            more = true;
            break;
        }
        let loaded = decode_record(row).map_err(sql_error)??;
        last_seq = Some(loaded.seq);
        tasks.push(loaded.into_record());
    }
    let next_cursor = if more {
        last_seq.map(encode_cursor)
    } else {
        None
    };
    Ok(Page { tasks, next_cursor })
}

pub(crate) fn next_wake(conn: &Connection) -> Result<Option<Millis>> {
    let mut stmt = conn.prepare_cached(NEXT_WAKE).map_err(sql_error)?;
    let earliest: Option<i64> = stmt.query_row([], |row| row.get(0)).map_err(sql_error)?;
    Ok(earliest.map(|t| t as Millis))
}

pub(crate) fn ping(conn: &Connection) -> Result<()> {
    let mut stmt = conn
        .prepare_cached("SELECT COUNT(*) FROM sqlite_schema")
        .map_err(sql_error)?;
    let _: i64 = stmt.query_row([], |row| row.get(0)).map_err(sql_error)?;
    Ok(())
}

/// The queued specs of a type in claim order. The queued index holds the
/// order and the row id, so only the specs are read: not the task rows.
pub(crate) const PEEK: &str =
    "SELECT t.seq, (SELECT spec FROM task_specs WHERE task_specs.seq = t.seq) \
     FROM tasks t INDEXED BY tasks_queued \
     WHERE t.status = 0 AND t.task_type = ?1 ORDER BY t.priority DESC, t.seq LIMIT ?2";

/// The same order with the task ids, for a peek that leaves some tasks out:
/// the id is read from the task row, and a spec only for a task kept.
const PEEK_IDS: &str = "SELECT t.seq, t.id FROM tasks t INDEXED BY tasks_queued \
     WHERE t.status = 0 AND t.task_type = ?1 ORDER BY t.priority DESC, t.seq LIMIT ?2";

const SPEC: &str = "SELECT spec FROM task_specs WHERE seq = ?1";

pub(crate) fn peek_queued(
    conn: &Connection,
    task_type: &str,
    limit: usize,
    skip: &[TaskId],
) -> Result<Vec<TaskSpec>> {
    let limit = limit.min(MAX_LIST_LIMIT);
    let mut out = Vec::new();
    if skip.is_empty() {
        let mut stmt = conn.prepare_cached(PEEK).map_err(sql_error)?;
        let mut rows = stmt
            .query(params![task_type, limit as i64])
            .map_err(sql_error)?;
        while let Some(row) = rows.next().map_err(sql_error)? {
            let seq: i64 = row.get(0).map_err(sql_error)?;
            let spec = row.get_ref(1).map_err(sql_error)?;
            out.push(decode_spec(seq, column_bytes(seq, spec, "spec")?)?);
        }
        return Ok(out);
    }
    let skip: std::collections::HashSet<&str> = skip.iter().map(TaskId::as_str).collect();
    // At most `skip.len()` of these rows are left out, so `limit` are kept
    // whenever that many are queued.
    let rows_needed = (limit + skip.len()) as i64;
    let mut ids = conn.prepare_cached(PEEK_IDS).map_err(sql_error)?;
    let mut specs = conn.prepare_cached(SPEC).map_err(sql_error)?;
    let mut rows = ids
        .query(params![task_type, rows_needed])
        .map_err(sql_error)?;
    while out.len() < limit {
        let Some(row) = rows.next().map_err(sql_error)? else {
            break;
        };
        let seq: i64 = row.get(0).map_err(sql_error)?;
        let id = row
            .get_ref(1)
            .map_err(sql_error)?
            .as_str()
            .map_err(|e| Error::Corrupt(format!("task row {seq}: id column: {e}")))?;
        if skip.contains(id) {
            continue;
        }
        let spec = specs
            .query_row(params![seq], |row| {
                let spec = row.get_ref(0)?;
                Ok(column_bytes(seq, spec, "spec").and_then(|b| decode_spec(seq, b)))
            })
            .map_err(sql_error)??;
        out.push(spec);
    }
    Ok(out)
}

pub(crate) fn queued_by_priority(
    conn: &Connection,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT priority, COUNT(*) FROM tasks INDEXED BY tasks_queued
             WHERE status = 0 GROUP BY priority",
        )
        .map_err(sql_error)?;
    let mut rows = stmt.query([]).map_err(sql_error)?;
    let mut out = std::collections::BTreeMap::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        let rank: i64 = row.get(0).map_err(sql_error)?;
        let n: i64 = row.get(1).map_err(sql_error)?;
        let priority = u8::try_from(rank)
            .ok()
            .and_then(baton_core::Priority::from_rank)
            .ok_or_else(|| Error::Corrupt(format!("unknown priority rank {rank}")))?;
        out.insert(priority.as_str().to_string(), n as u64);
    }
    Ok(out)
}
