//! Baton's embedded default store: one SQLite file in WAL mode, one writer thread
//! with group commit, and a small pool of read-only connections.
//!
//! # Layout of a data directory
//!
//! - `baton.db` (+ `-wal`, `-shm`): the database.
//! - `LOCK`: held with an exclusive file lock while a store has the directory open,
//!   so that two servers never share one data directory.
//!
//! # Schema (version 5, tracked in `PRAGMA user_version`)
//!
//! Two tables. `tasks` holds one small row per task, the only row a transition
//! rewrites; `task_specs` holds the spec, written once at submit and only read after:
//!
//! | column           | type    | meaning                                                        |
//! |------------------|---------|----------------------------------------------------------------|
//! | `seq`            | INTEGER | primary key (rowid): submission order, FIFO tie-break, cursor  |
//! | `id`             | TEXT    | the task id, `UNIQUE`                                          |
//! | `task_type`      | TEXT    |                                                                |
//! | `status`         | INTEGER | `Status::code()`: 0 queued, 1 running, 2 retry_wait, 3 completed, 4 failed, 5 cancelled, 6 dead_lettered |
//! | `priority`       | INTEGER | `Priority::rank()`: 0 background … 4 critical                  |
//! | `ready_at`       | INTEGER | end of the retry wait, ms (retry_wait only)                    |
//! | `lease_owner`    | TEXT    | who holds the running attempt (running only)                   |
//! | `lease_deadline` | INTEGER | lease end, ms (running only); **authoritative** over the copy in `state`, because extending leases rewrites only this column |
//! | `state`          | TEXT    | JSON of the `TaskState`, events included                       |
//!
//! `task_specs (seq INTEGER PRIMARY KEY, spec TEXT)`: JSON of the `TaskSpec`, same
//! `seq` as its task. The columns of `tasks` other than `state` are copies of fields
//! of the state or spec, written in the same statement, so that SQL can select and
//! order on them.
//!
//! Indexes, each for one query:
//!
//! - `tasks_queued (task_type, priority DESC, seq) WHERE status = 0`: claims, and the
//!   queued counts at open;
//! - `tasks_running_owner (lease_owner, lease_deadline) WHERE status = 1`: extending
//!   and releasing the leases of one owner, and lease expiry (a scan of this index,
//!   which carries the deadline: running tasks are bounded by the server's workers,
//!   and one index fewer is maintained by every claim and result);
//! - `tasks_retry_ready (ready_at) WHERE status = 2`: `next_wake` and `promote_due`;
//! - `tasks_by_status (status, seq) WHERE status > 1` and `tasks_by_type
//!   (task_type, seq)`: listing, newest first, and the counts at open. Queued and
//!   running tasks are left out of the status index (schema version 5), so that
//!   submits, claims and results do not maintain it: a task enters it once, when it
//!   comes to rest. Queued tasks are listed and counted from `tasks_queued` (a
//!   page is one pass over that index), running ones from `tasks_running_owner`.
//!
//! # Counts
//!
//! The store is exclusive, so `counts` and `queued_types` are answered from exact
//! counters in memory (the `tally` module), counted once at open and then kept by the
//! writer thread, which applies each batch's changes after its commit and before
//! answering its callers.
//!
//! # Concurrency
//!
//! Every mutating call becomes an operation on a bounded channel to the writer
//! thread, which owns the only read-write connection (see the `writer` module).
//! Reads run on read-only connections in `spawn_blocking` and never wait for the
//! writer. Every transition is decided by `baton_core::lifecycle::apply`; this
//! crate only loads rows, calls it and writes the result back.
//!
//! A caller that stops waiting for a write does not cancel it: once queued, the
//! operation runs and commits.

/// `SELECT <the columns codec::decode_record reads> FROM tasks <tail>`, as a literal.
///
/// Status codes appear in SQL text as literals (`status = 0` queued, `1` running,
/// `2` retry_wait), never as parameters, so that SQLite can use the partial
/// indexes; `codec::tests::status_codes_match_core` pins them to `Status::code()`.
/// Hot queries name their index (`INDEXED BY`): without statistics the planner
/// prefers `tasks_by_status`, which scans every running or queued task.
macro_rules! select_records {
    ($tail:literal) => {
        concat!(
            "SELECT seq, (SELECT spec FROM task_specs WHERE task_specs.seq = tasks.seq), state, lease_deadline FROM tasks ",
            $tail
        )
    };
}

mod checkpoint;
mod codec;
mod reader;
mod runs;
mod schema;
mod spec_cache;
mod tally;
mod writer;

/// A sync or checkpoint slower than this is logged at warn: a stalled disk
/// is where a latency spike of the whole server shows first.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(20);
/// The same for a write transaction (a bulk insert takes a few ms per 1,000 tasks).
const SLOW_TRANSACTION: std::time::Duration = std::time::Duration::from_millis(100);

fn warn_if_slow(what: &'static str, began: std::time::Instant, limit: std::time::Duration) {
    let took = began.elapsed();
    if took >= limit {
        tracing::warn!(took_ms = took.as_secs_f64() * 1000.0, "slow sqlite {what}");
    }
}

pub use reader::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
pub use schema::SCHEMA_VERSION;

use async_trait::async_trait;
use baton_core::lifecycle::Failure;
use baton_core::{Millis, TaskId, TaskSpec};
use baton_store::{
    AtCommit, ClaimRequest, Claimed, Counts, Error, Fence, FlowOutcome, FlowRecord, Leadership,
    ListFilter, Page, Result, RunFilter, RunPage, RunRecord, RunWrite, RunWriteOutcome, Selected,
    SelectedOutcome, StartAt, Store, SubmitOutcome, SyncMode, TaskRecord, Update, UpdateOutcome,
};
use reader::Readers;
use rusqlite::{Connection, OpenFlags};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tally::Tally;
use tokio::sync::{mpsc, oneshot};
use writer::{Op, Pending, Session};

/// How hard SQLite works to make each commit survive a power failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync the WAL after every commit, before answering its callers: a task
    /// is on disk before `submit` returns. The sync runs in a thread of its
    /// own while the writer goes on with the next transaction.
    #[default]
    Full,
    /// fsync only at checkpoints: faster, and still safe against a crash of the
    /// process, but a power failure or OS crash can lose the last commits (never
    /// corrupt the database).
    Normal,
}

/// Tuning of the SQLite store; the defaults favour durability.
#[derive(Debug, Clone)]
pub struct Options {
    pub synchronous: Synchronous,
    /// Most items one transaction takes before it commits: tasks of a submit,
    /// updates of an update, `max` of a claim, 1 for other calls. The first queued
    /// call always goes in, whatever its size.
    pub max_batch: usize,
    /// Read-only connections for `get`, `list`, `counts` and the like.
    pub readers: usize,
    /// Page cache of each connection, in KiB. Bigger is not better for the writer:
    /// SQLite walks the cache's hash table at the end of every transaction.
    pub cache_size_kib: u32,
    /// WAL pages (4 KiB) past which the writer copies the WAL into the
    /// database itself (default 16,000: 64 MiB). A checkpointer thread does
    /// that beside the writer every few milliseconds, so the writer reaches
    /// this only when the checkpointer cannot keep up (bulk loads); it bounds
    /// the WAL then. At least 100.
    pub wal_backstop_pages: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            max_batch: 4096,
            readers: 2,
            cache_size_kib: 8 * 1024,
            wal_backstop_pages: 16_000,
        }
    }
}

/// Counters of committed writes since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Store calls (submit, claim, update, …) committed in them.
    pub operations: u64,
}

/// File in the data directory that an open store keeps locked.
pub const LOCK_FILE: &str = "LOCK";
/// The database file in the data directory.
pub const DB_FILE: &str = "baton.db";

/// The SQLite store. Dropping it finishes the queued writes, stops the writer and
/// releases the data directory.
pub struct SqliteStore {
    dir: PathBuf,
    options: Options,
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Copies the WAL into the database beside the writer (see `checkpoint`).
    checkpointer: Option<checkpoint::Checkpointer>,
    readers: Arc<Readers>,
    counters: Arc<writer::Counters>,
    tally: Arc<Mutex<Tally>>,
    /// Held for the lock; released when the store is dropped.
    _lock: File,
    /// Declared last: removed only after everything above is closed.
    temp: Option<TempDir>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`. Fails if another store holds
    /// the directory, or if the database was written by a newer schema.
    pub fn open(dir: &Path, options: Options) -> Result<SqliteStore> {
        if options.max_batch == 0 || options.readers == 0 {
            return Err(Error::Other(
                "sqlite options: max_batch and readers must be at least 1".into(),
            ));
        }
        if options.wal_backstop_pages < 100 {
            return Err(Error::Other(
                "sqlite options: wal_backstop_pages must be at least 100".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Unavailable(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::Unavailable(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Unavailable(format!(
                    "data directory {} is in use by another baton process (lock held on {})",
                    dir.display(),
                    lock_path.display()
                )))
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::Unavailable(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )))
            }
        }

        let db_path = dir.join(DB_FILE);
        let mut conn = Connection::open(&db_path).map_err(codec::sql_error)?;
        schema::configure_writer(&mut conn, &options)?;
        let tally = Arc::new(Mutex::new(Tally::load(&conn)?));
        let mut readers = Vec::with_capacity(options.readers);
        for _ in 0..options.readers {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI;
            let reader = Connection::open_with_flags(&db_path, flags).map_err(codec::sql_error)?;
            schema::configure_reader(&reader, &options)?;
            readers.push(reader);
        }

        // Full durability: the WAL is synced after every commit through a handle
        // of our own (an fsync of any descriptor flushes the file), in the
        // writer's syncer thread.
        let wal = match options.synchronous {
            Synchronous::Full => {
                let wal_path = dir.join(format!("{DB_FILE}-wal"));
                let wal = File::options()
                    .read(true)
                    .append(true)
                    .create(true)
                    .open(&wal_path);
                Some(wal.map_err(|e| {
                    Error::Unavailable(format!("cannot open {}: {e}", wal_path.display()))
                })?)
            }
            Synchronous::Normal => None,
        };
        let (tx, rx) = mpsc::channel(1024);
        let max_batch = options.max_batch;
        let counters = Arc::new(writer::Counters::default());
        let writer_counters = Arc::clone(&counters);
        let writer_tally = Arc::clone(&tally);
        let writer = std::thread::Builder::new()
            .name("baton-sqlite-writer".into())
            .spawn(move || writer::run(conn, rx, max_batch, writer_counters, writer_tally, wal))
            .map_err(|e| {
                Error::Unavailable(format!("cannot start the sqlite writer thread: {e}"))
            })?;
        let checkpointer = checkpoint::Checkpointer::start(&db_path, &options)?;
        tracing::info!(dir = %dir.display(), synchronous = ?options.synchronous, "sqlite store open");
        Ok(SqliteStore {
            dir: dir.to_path_buf(),
            options,
            ops: Some(tx),
            writer: Some(writer),
            checkpointer: Some(checkpointer),
            readers: Arc::new(Readers::new(readers)),
            counters,
            tally,
            _lock: lock,
            temp: None,
        })
    }

    /// A store in a new directory under the system temp dir, removed when the store
    /// is dropped. For tests.
    pub fn open_temp() -> Result<SqliteStore> {
        Self::open_temp_with(Options::default())
    }

    pub fn open_temp_with(options: Options) -> Result<SqliteStore> {
        let temp = TempDir::new()
            .map_err(|e| Error::Unavailable(format!("cannot create a temp dir: {e}")))?;
        let mut store = Self::open(&temp.0, options)?;
        store.temp = Some(temp);
        Ok(store)
    }

    /// Closes the store and opens its directory again, as a restarted server would.
    /// A temp directory stays owned by the new store.
    pub fn reopen(mut self) -> Result<SqliteStore> {
        let dir = self.dir.clone();
        let options = self.options.clone();
        let temp = self.temp.take();
        drop(self);
        let mut store = Self::open(&dir, options)?;
        store.temp = temp;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// What the writer has committed so far; `operations / transactions` is the
    /// average group-commit size.
    pub fn write_stats(&self) -> WriteStats {
        WriteStats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            operations: self.counters.operations.load(Ordering::Relaxed),
        }
    }

    /// Queues `work` for the writer and waits until its batch committed.
    async fn write<T, F>(&self, weight: usize, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session<'_>) -> Result<T> + Send + 'static,
    {
        self.queue(weight, false, work).await
    }

    /// Like [`Self::write`], for work that may be bulk (submissions, run writes):
    /// from [`BULK_WEIGHT`] tasks, the writer commits it after the other work
    /// it found waiting, so that claims and results do not wait behind a large
    /// insert. A small one stays in the first transaction: a single submission
    /// is as eager for its reply as a claim. `at_commit` runs at its commit.
    async fn write_bulk<T, F>(
        &self,
        weight: usize,
        sync: SyncMode,
        at_commit: Option<writer::Hook<T>>,
        work: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session<'_>) -> Result<T> + Send + 'static,
    {
        let defer_sync = sync == SyncMode::Deferred;
        self.queue_hooked(weight, weight >= BULK_WEIGHT, defer_sync, at_commit, work)
            .await
    }

    async fn queue<T, F>(&self, weight: usize, bulk: bool, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session<'_>) -> Result<T> + Send + 'static,
    {
        self.queue_hooked(weight, bulk, false, None, work).await
    }

    /// Queues `work` for the writer; `at_commit` runs on the writer thread with
    /// its result once committed, before the sync the answer waits for (which
    /// may be deferred: see [`Op::defer_sync`]).
    async fn queue_hooked<T, F>(
        &self,
        weight: usize,
        bulk: bool,
        defer_sync: bool,
        at_commit: Option<writer::Hook<T>>,
        work: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Session<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op = Op {
            weight: weight.max(1),
            bulk,
            defer_sync,
            job: Box::new(Pending::new(work, reply).with_hook(at_commit)),
        };
        let ops = self.ops.as_ref().ok_or_else(stopped)?;
        ops.send(op).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Tasks from which a submission or run write is bulk work for the writer.
const BULK_WEIGHT: usize = 64;

impl SqliteStore {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn stopped() -> Error {
    Error::Unavailable("the sqlite writer has stopped".into())
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and exit.
        self.ops.take();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "sqlite writer thread panicked");
            }
        }
        self.checkpointer.take();
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn submit_starting(
        &self,
        tasks: Vec<TaskSpec>,
        starts: Vec<Option<StartAt>>,
        now: Millis,
    ) -> Result<Vec<SubmitOutcome>> {
        self.submit_starting_then(tasks, starts, now, Box::new(|_| {}), SyncMode::Now)
            .await
    }

    async fn submit_starting_then(
        &self,
        tasks: Vec<TaskSpec>,
        starts: Vec<Option<StartAt>>,
        now: Millis,
        at_commit: AtCommit<SubmitOutcome>,
        sync: SyncMode,
    ) -> Result<Vec<SubmitOutcome>> {
        if tasks.is_empty() {
            at_commit(&[]);
            return Ok(Vec::new());
        }
        let hook: writer::Hook<Vec<SubmitOutcome>> = Box::new(move |o| at_commit(o));
        self.write_bulk(tasks.len(), sync, Some(hook), move |s| {
            s.submit(tasks, starts, now)
        })
        .await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>> {
        if request.max == 0 {
            return Ok(Vec::new());
        }
        self.write(request.max, move |s| s.claim(request)).await
    }

    async fn claim_selected(
        &self,
        selected: Vec<Selected>,
        lease_deadline_ms: Millis,
        now: Millis,
    ) -> Result<Vec<SelectedOutcome>> {
        if selected.is_empty() {
            return Ok(Vec::new());
        }
        self.write(selected.len(), move |s| {
            s.claim_selected(selected, lease_deadline_ms, now)
        })
        .await
    }

    async fn update(&self, updates: Vec<Update>, now: Millis) -> Result<Vec<UpdateOutcome>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        self.write(updates.len(), move |s| s.update(updates, now))
            .await
    }

    async fn extend_leases(
        &self,
        lease_owners: &[String],
        lease_deadline_ms: Millis,
    ) -> Result<u64> {
        let lease_owners = lease_owners.to_vec();
        self.write(1, move |s| {
            s.extend_leases(&lease_owners, lease_deadline_ms)
        })
        .await
    }

    async fn expire_leases(&self, now: Millis, fence: &Fence) -> Result<Vec<TaskId>> {
        let fence = fence.clone();
        self.write(1, move |s| s.expire_leases(now, &fence)).await
    }

    async fn acquire_leadership(
        &self,
        candidate: &str,
        now: Millis,
        ttl_ms: u64,
    ) -> Result<Leadership> {
        let candidate = candidate.to_string();
        self.write(1, move |s| s.acquire_leadership(&candidate, now, ttl_ms))
            .await
    }

    async fn resign_leadership(&self, fence: &Fence) -> Result<()> {
        let fence = fence.clone();
        self.write(1, move |s| s.resign_leadership(&fence)).await
    }

    async fn release_owner(
        &self,
        lease_owner: &str,
        failure: Failure,
        now: Millis,
    ) -> Result<Vec<TaskId>> {
        let lease_owner = lease_owner.to_string();
        self.write(1, move |s| s.release_owner(&lease_owner, failure, now))
            .await
    }

    async fn promote_due(&self, now: Millis, fence: &Fence) -> Result<Vec<String>> {
        let fence = fence.clone();
        self.write(1, move |s| s.promote_due(now, &fence)).await
    }

    async fn next_wake(&self) -> Result<Option<Millis>> {
        self.readers.run(reader::next_wake).await
    }

    async fn get(&self, task_id: &TaskId) -> Result<Option<TaskRecord>> {
        let task_id = task_id.clone();
        self.readers
            .run(move |conn| reader::get(conn, &task_id))
            .await
    }

    async fn list(&self, filter: ListFilter) -> Result<Page> {
        if let Some(cursor) = &filter.cursor {
            codec::decode_cursor(cursor)?;
        }
        self.readers
            .run(move |conn| reader::list(conn, &filter))
            .await
    }

    async fn counts(&self) -> Result<Counts> {
        Ok(self.tally().counts())
    }

    async fn queued_types(&self) -> Result<Vec<String>> {
        Ok(self.tally().queued_types())
    }

    async fn peek_queued(
        &self,
        task_type: &str,
        limit: usize,
        skip: Vec<TaskId>,
    ) -> Result<Vec<TaskSpec>> {
        let task_type = task_type.to_string();
        self.readers
            .run(move |conn| reader::peek_queued(conn, &task_type, limit, &skip))
            .await
    }

    async fn queued_by_priority(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        self.readers.run(reader::queued_by_priority).await
    }

    fn exclusive(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<()> {
        self.readers.run(reader::ping).await
    }

    async fn put_flow(
        &self,
        name: &str,
        version: Option<u32>,
        definition: serde_json::Value,
        now: Millis,
    ) -> Result<FlowOutcome> {
        let name = name.to_string();
        self.write(1, move |s| s.put_flow(&name, version, definition, now))
            .await
    }

    async fn get_flow(&self, name: &str, version: Option<u32>) -> Result<Option<FlowRecord>> {
        let name = name.to_string();
        self.readers
            .run(move |conn| runs::get_flow(conn, &name, version))
            .await
    }

    async fn list_flows(&self) -> Result<Vec<FlowRecord>> {
        self.readers.run(runs::list_flows).await
    }

    async fn write_runs(&self, writes: Vec<RunWrite>, now: Millis) -> Result<Vec<RunWriteOutcome>> {
        self.write_runs_then(writes, now, Box::new(|_| {})).await
    }

    async fn write_runs_then(
        &self,
        writes: Vec<RunWrite>,
        now: Millis,
        at_commit: AtCommit<RunWriteOutcome>,
    ) -> Result<Vec<RunWriteOutcome>> {
        if writes.is_empty() {
            at_commit(&[]);
            return Ok(Vec::new());
        }
        let weight: usize = writes.iter().map(|w| 1 + w.tasks.len()).sum();
        // Encoded here, on the caller's thread, not on the one writer thread.
        let texts = writes
            .iter()
            .map(|w| runs::RunText::encode(&w.record))
            .collect::<Result<Vec<_>>>()?;
        let hook: writer::Hook<Vec<RunWriteOutcome>> = Box::new(move |o| at_commit(o));
        self.write_bulk(weight, SyncMode::Now, Some(hook), move |s| {
            s.write_runs(writes, texts, now)
        })
        .await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let run_id = run_id.to_string();
        self.readers
            .run(move |conn| runs::get_run(conn, &run_id))
            .await
    }

    async fn list_runs(&self, filter: RunFilter) -> Result<RunPage> {
        if let Some(cursor) = &filter.cursor {
            codec::decode_cursor(cursor)?;
        }
        self.readers
            .run(move |conn| runs::list_runs(conn, &filter))
            .await
    }

    async fn active_runs(&self) -> Result<Vec<RunRecord>> {
        self.readers.run(runs::active_runs).await
    }
}

/// A uniquely named directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "baton-store-sqlite-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        // Parameters stay unbound (NULL): the plan does not depend on them.
        let mut rows = stmt.raw_query();
        let mut details = Vec::new();
        while let Some(row) = rows.next().expect("plan row") {
            details.push(row.get::<_, String>(3).expect("detail"));
        }
        details.join(" | ")
    }

    /// Each hot query must be answered from the index made for it, not a table scan.
    #[test]
    fn queries_use_their_indexes() {
        let store = SqliteStore::open_temp().expect("open");
        let conn = Connection::open(store.dir().join(DB_FILE)).expect("raw connection");
        let cases = [
            (writer::PICK, "tasks_queued"),
            // Covering: the window reads no task row, only the specs.
            (reader::PEEK, "COVERING INDEX tasks_queued"),
            (writer::OVERDUE, "tasks_running_owner"),
            (writer::HELD, "tasks_running_owner"),
            (writer::EXTEND, "tasks_running_owner"),
            (writer::DUE, "tasks_retry_ready"),
            (writer::BY_ID, "sqlite_autoindex_tasks_1"),
            (reader::NEXT_WAKE, "tasks_retry_ready"),
            (reader::LIST_BY_STATUS, "tasks_by_status"),
            (reader::LIST_QUEUED, "tasks_queued"),
            (reader::LIST_QUEUED_BY_TYPE, "tasks_queued"),
            (reader::LIST_RUNNING, "tasks_running_owner"),
            (reader::LIST_RUNNING_BY_TYPE, "tasks_running_owner"),
            (reader::LIST_BY_TYPE, "tasks_by_type"),
            (reader::LIST_ALL, "INTEGER PRIMARY KEY"),
        ];
        let mut wrong = Vec::new();
        for (sql, index) in cases {
            let plan = plan(&conn, sql);
            if !plan.contains(index) {
                wrong.push(format!(
                    "expected {index} in the plan of {sql:?}, got: {plan}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        let both = plan(&conn, reader::LIST_BY_BOTH);
        assert!(
            both.contains("tasks_by_status") || both.contains("tasks_by_type"),
            "{both}"
        );
    }
}
