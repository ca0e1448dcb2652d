//! The writer thread: the only connection that writes. It takes the first queued
//! operation, drains whatever else is waiting (up to `max_batch` items), runs them
//! all in one transaction, commits once and only then answers every caller — group
//! commit, so a reply always means "durable". Bulk operations (submissions and run
//! writes of `BULK_WEIGHT` tasks or more) found waiting beside others go into a second transaction, committed
//! after the first: a claim or a result never waits for a large insert queued
//! just before it.
//!
//! With full durability the commit itself does not wait for the disk: the
//! batch goes to the syncer thread, which syncs the WAL (one fsync for every
//! batch committed since its last one) and only then answers the batch's
//! callers, while the writer already runs the next transaction. A reply still
//! means "durable"; what the syncer has not synced yet is visible to reads a
//! moment before it is, as it would be between SQLite's write of the WAL and
//! its fsync inside COMMIT. An operation may carry a hook that the writer
//! runs with its result right after the commit, before the sync (a submit's
//! assignments go out to agents while the sync is in flight). A batch made
//! only of operations that may defer their sync (a submit whose caller waits
//! on for the task's result) is held up to [`DEFER_SYNC_MAX`] for a later
//! batch to share the sync with. A batch that fails to sync is answered with the
//! error (its writes may or may not survive a power failure; a retried
//! submit is idempotent).
//!
//! Each operation runs inside its own savepoint: an operation that fails (a corrupt
//! row, a bug) is rolled back alone and the others still commit. If the commit
//! itself fails, every operation of the batch gets the error.

use crate::codec::{
    column_bytes, copy_error, decode_record, decode_record_with, decode_spec, decode_state,
    encode_json, millis, opt_millis, sql_error, Loaded,
};
use crate::tally::{Delta, Tally};
use baton_core::lifecycle::{
    apply, Command, Ctx, Failure, FailureKind, Refusal, TaskState, Transition,
};
use baton_core::{Millis, RetryPolicy, Status, TaskId, TaskSpec};
use baton_store::{
    initial_state, next_leadership, ClaimRequest, Claimed, Error, Fence, FlowOutcome, Leadership,
    Result, RunWrite, RunWriteOutcome, Selected, SelectedOutcome, StartAt, SubmitOutcome,
    TaskRecord, Update, UpdateOutcome,
};
use rusqlite::{params, Connection};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// One queued write: its size (for batching), whether it is bulk work, and the work.
pub(crate) struct Op {
    pub weight: usize,
    pub bulk: bool,
    /// Its caller waits on for a later write anyway (a submit that waits for
    /// its task's result): the syncer may hold its commit for up to
    /// [`DEFER_SYNC_MAX`] to sync it with the next one.
    pub defer_sync: bool,
    pub job: Box<dyn Job>,
}

/// How long the syncer holds a commit whose every operation may defer its
/// sync, waiting for a commit to sync it with (typically its task's result,
/// a fraction of a millisecond later), before it syncs it alone.
pub(crate) const DEFER_SYNC_MAX: std::time::Duration = std::time::Duration::from_millis(2);

/// A write operation whose result is held back until the batch commits.
pub(crate) trait Job: Send {
    /// Runs the operation; returns whether it succeeded (so its savepoint is kept).
    fn run(&mut self, session: &mut Session<'_>) -> bool;
    /// Called once the batch has committed, before it is synced: runs the
    /// caller's hook, if it gave one.
    fn committed(&mut self) {}
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), &Error>);
}

/// A caller's hook on its operation's result, run on the writer thread at commit.
pub(crate) type Hook<T> = Box<dyn FnOnce(&T) + Send>;

pub(crate) struct Pending<T, F> {
    work: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
    at_commit: Option<Hook<T>>,
}

impl<T, F> Pending<T, F> {
    pub(crate) fn new(work: F, reply: oneshot::Sender<Result<T>>) -> Self {
        Self {
            work: Some(work),
            result: None,
            reply,
            at_commit: None,
        }
    }

    pub(crate) fn with_hook(mut self, at_commit: Option<Hook<T>>) -> Self {
        self.at_commit = at_commit;
        self
    }
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnOnce(&mut Session<'_>) -> Result<T> + Send,
{
    fn run(&mut self, session: &mut Session<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = catch_unwind(AssertUnwindSafe(|| work(session))).unwrap_or_else(|_| {
            Err(Error::Other(
                "the sqlite writer panicked while applying an operation".into(),
            ))
        });
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn committed(&mut self) {
        if let (Some(hook), Some(Ok(result))) = (self.at_commit.take(), &self.result) {
            // A caller's bug must not take the writer down.
            if catch_unwind(AssertUnwindSafe(|| hook(result))).is_err() {
                tracing::error!("a commit hook panicked");
            }
        }
    }

    fn finish(self: Box<Self>, commit: Result<(), &Error>) {
        let result = match (commit, self.result) {
            (Ok(()), Some(result)) => result,
            (_, Some(Err(own))) => Err(own),
            (Err(e), _) => Err(copy_error(e)),
            (Ok(()), None) => Err(Error::Other("operation was not run".into())),
        };
        // The caller may have gone away; the work is committed either way.
        let _ = self.reply.send(result);
    }
}

/// Uniform samples for backoff jitter (xorshift64*). Quality hardly matters here;
/// not depending on a random crate does.
struct Jitter(u64);

impl Jitter {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x2545_f491_4f6c_dd1d);
        Jitter(nanos | 1)
    }

    fn sample(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What an operation sees: the connection inside the open transaction, plus reused
/// buffers and the jitter source.
pub(crate) struct Session<'c> {
    conn: &'c Connection,
    jitter: Jitter,
    spec_buf: Vec<u8>,
    state_buf: Vec<u8>,
    /// Count changes of the operation running now.
    delta: Delta,
    /// Specs of tasks handed out running, for their results' updates.
    specs: crate::spec_cache::SpecCache,
}

/// Encoding buffers above this size are released after a batch, so that one huge
/// task does not pin its size in memory for good.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

/// Inserts nothing when the id is taken by a task. One row of `VALUES`, not
/// `INSERT … SELECT`: SQLite gives a statement that may write several rows a
/// statement journal of its own, which cost a tenth of the writer's time in
/// the task inserts of run writes.
const INSERT: &str =
    "INSERT INTO tasks (id, task_type, status, priority, state, lease_owner, lease_deadline)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (id) DO NOTHING";
/// Whether an id is a run's started from a flow (seed 000's flow tasks: the run
/// is the task), which no task may take.
const FLOW_RUN: &str = "SELECT 1 FROM runs WHERE run_id = ?1 AND flow_name IS NOT NULL";
const INSERT_SPEC: &str = "INSERT INTO task_specs (seq, spec) VALUES (?1, ?2)";

pub(crate) const BY_ID: &str = select_records!("WHERE id = ?1");
/// Queued tasks of one type in claim order.
pub(crate) const PICK: &str =
    select_records!("INDEXED BY tasks_queued WHERE status = 0 AND task_type = ?1 ORDER BY priority DESC, seq LIMIT ?2");
pub(crate) const EXTEND: &str = "UPDATE tasks INDEXED BY tasks_running_owner SET lease_deadline = max(lease_deadline, ?2) WHERE status = 1 AND lease_owner = ?1";
const LEADERSHIP: &str = "SELECT holder, epoch, expires_at FROM leadership WHERE name = 'duties'";
const WRITE_LEADERSHIP: &str =
    "UPDATE leadership SET holder = ?1, epoch = ?2, expires_at = ?3 WHERE name = 'duties'";
const RESIGN: &str =
    "UPDATE leadership SET expires_at = 0 WHERE name = 'duties' AND holder = ?1 AND epoch = ?2";
/// Scans the running tasks' owner index, which carries the deadline: running tasks
/// are bounded by the server's workers, and one index fewer is maintained per claim
/// and per result.
pub(crate) const OVERDUE: &str =
    select_records!("INDEXED BY tasks_running_owner WHERE status = 1 AND lease_deadline < ?1");
pub(crate) const HELD: &str =
    select_records!("INDEXED BY tasks_running_owner WHERE status = 1 AND lease_owner = ?1");
pub(crate) const DUE: &str = select_records!(
    "INDEXED BY tasks_retry_ready WHERE status = 2 AND ready_at <= ?1 ORDER BY ready_at"
);

/// A task by id if it is queued, with what claiming it needs: the state, and
/// the spec only for its policy (see [`SpecPolicy`]).
const QUEUED_BY_ID: &str = "SELECT seq, task_type, state, lease_deadline,
        (SELECT spec FROM task_specs WHERE task_specs.seq = tasks.seq)
    FROM tasks WHERE id = ?1 AND status = 0";

/// The parts of a stored spec that `lifecycle::apply` reads (its `Ctx`). A claim
/// by id decodes only these: the caller already holds the whole spec, and the
/// inputs and metadata are most of the decoding work. The defaults are
/// `TaskSpec`'s own, so that both read a stored spec alike.
#[derive(serde::Deserialize)]
struct SpecPolicy {
    #[serde(default)]
    retry: RetryPolicy,
    #[serde(default)]
    deadline_ms: Option<Millis>,
}

const WRITE_BACK: &str = "UPDATE tasks SET status = ?2, ready_at = ?3, lease_owner = ?4,
        lease_deadline = ?5, state = ?6
    WHERE seq = ?1";

impl<'c> Session<'c> {
    fn new(conn: &'c Connection) -> Self {
        Session {
            conn,
            jitter: Jitter::seeded(),
            spec_buf: Vec::new(),
            state_buf: Vec::new(),
            delta: Delta::default(),
            specs: Default::default(),
        }
    }
}

impl Session<'_> {
    fn load_by_id(&self, task_id: &str) -> Result<Option<Loaded>> {
        load_one(self.conn, task_id, |_| None)
    }

    /// A task by id for an update: its spec from the specs handed out running
    /// when it is there (see `spec_cache`), decoded from the row otherwise.
    fn load_for_update(&mut self, task_id: &str) -> Result<Option<Loaded>> {
        let specs = &mut self.specs;
        load_one(self.conn, task_id, |seq| specs.take(seq, task_id))
    }

    fn load_many(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Loaded>> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(sql_error)?;
        let mut rows = stmt.query(params).map_err(sql_error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sql_error)? {
            out.push(decode_record(row).map_err(sql_error)??);
        }
        Ok(out)
    }

    fn write_back(&mut self, seq: i64, state: &TaskState) -> Result<()> {
        let json = encode_json(&mut self.state_buf, state)?;
        let mut stmt = self.conn.prepare_cached(WRITE_BACK).map_err(sql_error)?;
        stmt.execute(params![
            seq,
            state.status.code(),
            opt_millis(state.ready_at_ms),
            state.lease_owner.as_deref(),
            opt_millis(state.lease_deadline_ms),
            json,
        ])
        .map_err(sql_error)?;
        Ok(())
    }

    /// Applies one command to a loaded task and stores the result if it was accepted.
    fn transition(
        &mut self,
        loaded: &Loaded,
        command: Command,
        now: Millis,
    ) -> Result<Result<Transition, Refusal>> {
        let ctx = Ctx::for_spec(&loaded.spec, now, self.jitter.sample());
        match apply(&loaded.state, command, ctx) {
            Ok(transition) => {
                self.record(
                    loaded.seq,
                    &loaded.spec.task_type,
                    loaded.state.status,
                    &transition.state,
                )?;
                Ok(Ok(transition))
            }
            Err(refusal) => Ok(Err(refusal)),
        }
    }

    /// Writes row `seq`'s new state back and counts its move from `from`.
    fn record(&mut self, seq: i64, task_type: &str, from: Status, state: &TaskState) -> Result<()> {
        self.write_back(seq, state)?;
        self.delta.moved(task_type, from, state.status);
        Ok(())
    }

    /// Stores new tasks; task `i` starts running at once on `starts[i]`, if
    /// given, when it is created (see [`baton_store::initial_state`]).
    pub(crate) fn submit(
        &mut self,
        tasks: Vec<TaskSpec>,
        starts: Vec<Option<StartAt>>,
        now: Millis,
    ) -> Result<Vec<SubmitOutcome>> {
        let mut out = Vec::with_capacity(tasks.len());
        let mut insert = self.conn.prepare_cached(INSERT).map_err(sql_error)?;
        let mut insert_spec = self.conn.prepare_cached(INSERT_SPEC).map_err(sql_error)?;
        let mut flow_run = self.conn.prepare_cached(FLOW_RUN).map_err(sql_error)?;
        let mut starts = starts.into_iter();
        for spec in tasks {
            let start = starts.next().flatten();
            if flow_run
                .exists(params![spec.task_id.as_str()])
                .map_err(sql_error)?
            {
                out.push(SubmitOutcome::FlowRun(spec.task_id));
                continue;
            }
            let state = initial_state(&spec, start.as_ref(), now);
            let state_json = encode_json(&mut self.state_buf, &state)?;
            let inserted = insert
                .execute(params![
                    spec.task_id.as_str(),
                    spec.task_type,
                    state.status.code(),
                    spec.priority.rank(),
                    state_json,
                    state.lease_owner.as_deref(),
                    opt_millis(state.lease_deadline_ms),
                ])
                .map_err(sql_error)?;
            if inserted == 1 {
                let seq = self.conn.last_insert_rowid();
                let spec_json = encode_json(&mut self.spec_buf, &spec)?;
                let spec_bytes = spec_json.len();
                insert_spec
                    .execute(params![seq, spec_json])
                    .map_err(sql_error)?;
                if state.status == Status::Running {
                    self.specs.stage(seq, &spec, spec_bytes);
                }
                self.delta.added(&spec.task_type, state.status);
                out.push(SubmitOutcome::Created(TaskRecord { spec, state }));
                continue;
            }
            let Some(existing) = self.load_by_id(spec.task_id.as_str())? else {
                return Err(Error::Other(format!(
                    "task {} was neither inserted nor found",
                    spec.task_id
                )));
            };
            let same = existing.spec == spec;
            let record = existing.into_record();
            out.push(if same {
                SubmitOutcome::Existing(record)
            } else {
                SubmitOutcome::Conflict(record)
            });
        }
        Ok(out)
    }

    pub(crate) fn put_flow(
        &mut self,
        name: &str,
        version: Option<u32>,
        definition: serde_json::Value,
        now: Millis,
    ) -> Result<FlowOutcome> {
        crate::runs::put_flow(self.conn, name, version, definition, now)
    }

    /// Each write checks its run's revision first; only a write that passes submits
    /// its tasks, all inside the batch's transaction.
    pub(crate) fn write_runs(
        &mut self,
        writes: Vec<RunWrite>,
        texts: Vec<crate::runs::RunText>,
        now: Millis,
    ) -> Result<Vec<RunWriteOutcome>> {
        let mut out = Vec::with_capacity(writes.len());
        for (write, text) in writes.into_iter().zip(texts) {
            match crate::runs::check_and_write(
                self.conn,
                &write.record,
                &text,
                write.expected_revision,
            )? {
                Ok(()) => out.push(RunWriteOutcome::Written(self.submit(
                    write.tasks,
                    write.starts,
                    now,
                )?)),
                Err(current) => out.push(RunWriteOutcome::Conflict(current)),
            }
        }
        Ok(out)
    }

    pub(crate) fn claim(&mut self, request: ClaimRequest) -> Result<Vec<Claimed>> {
        let mut out = Vec::with_capacity(request.max.min(4096));
        // Tasks past their deadline fail instead of starting and do not use up `max`,
        // so keep picking until `max` started or the queue of this type is empty.
        while out.len() < request.max {
            let want = request.max - out.len();
            let rows = self.load_many(PICK, params![request.task_type, want as i64])?;
            let exhausted = rows.len() < want;
            for loaded in rows {
                let command = Command::Claim {
                    agent_id: request.agent_id.clone(),
                    lease_owner: request.lease_owner.clone(),
                    lease_deadline_ms: request.lease_deadline_ms,
                };
                let transition =
                    self.transition(&loaded, command, request.now)?
                        .map_err(|refusal| {
                            Error::Corrupt(format!(
                                "task row {} is indexed as queued but {refusal}",
                                loaded.seq
                            ))
                        })?;
                if transition.state.status == Status::Running {
                    self.specs
                        .stage(loaded.seq, &loaded.spec, loaded.spec_bytes);
                    out.push(Claimed {
                        attempt: transition.state.attempt,
                        spec: loaded.spec,
                    });
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    pub(crate) fn update(
        &mut self,
        updates: Vec<Update>,
        now: Millis,
    ) -> Result<Vec<UpdateOutcome>> {
        let mut out = Vec::with_capacity(updates.len());
        for Update { task_id, command } in updates {
            let Some(loaded) = self.load_for_update(task_id.as_str())? else {
                out.push(UpdateOutcome::NotFound);
                continue;
            };
            out.push(match self.transition(&loaded, command, now)? {
                Ok(Transition { state, effects }) => UpdateOutcome::Applied {
                    record: TaskRecord {
                        spec: loaded.spec,
                        state,
                    },
                    effects,
                },
                Err(refusal) => UpdateOutcome::Refused(refusal),
            });
        }
        Ok(out)
    }

    /// Claims each selected task that is still queued. A task that is not (taken
    /// by another replica, cancelled) is skipped before anything is decoded; for
    /// one that is, only the state and the spec's policy are, and the spec is
    /// read whole only in the rare case the claim ends the task (its deadline
    /// passed), whose record the caller needs for the effects.
    pub(crate) fn claim_selected(
        &mut self,
        selected: Vec<Selected>,
        lease_deadline_ms: Millis,
        now: Millis,
    ) -> Result<Vec<SelectedOutcome>> {
        let conn = self.conn;
        let mut out = Vec::with_capacity(selected.len());
        let mut stmt = conn.prepare_cached(QUEUED_BY_ID).map_err(sql_error)?;
        for Selected {
            task_id,
            agent_id,
            lease_owner,
        } in selected
        {
            let mut rows = stmt.query(params![task_id.as_str()]).map_err(sql_error)?;
            let Some(row) = rows.next().map_err(sql_error)? else {
                out.push(SelectedOutcome::NotQueued);
                continue;
            };
            let seq: i64 = row.get(0).map_err(sql_error)?;
            let task_type: String = row.get(1).map_err(sql_error)?;
            let lease_deadline: Option<i64> = row.get(3).map_err(sql_error)?;
            let column = |i: usize, what: &str| -> Result<&[u8]> {
                column_bytes(seq, row.get_ref(i).map_err(sql_error)?, what)
            };
            let state = decode_state(seq, column(2, "state")?, lease_deadline)?;
            let spec_bytes = column(4, "spec")?;
            let policy: SpecPolicy = decode_spec(seq, spec_bytes)?;
            let command = Command::Claim {
                agent_id,
                lease_owner,
                lease_deadline_ms,
            };
            let ctx = Ctx {
                now,
                retry: &policy.retry,
                deadline_ms: policy.deadline_ms,
                jitter_sample: self.jitter.sample(),
            };
            let transition = apply(&state, command, ctx).map_err(|refusal| {
                Error::Corrupt(format!("task row {seq} is indexed as queued but {refusal}"))
            })?;
            let outcome = if transition.state.status == Status::Running {
                SelectedOutcome::Claimed {
                    attempt: transition.state.attempt,
                }
            } else {
                SelectedOutcome::Finished {
                    record: TaskRecord {
                        spec: decode_spec(seq, spec_bytes)?,
                        state: transition.state.clone(),
                    },
                    effects: transition.effects,
                }
            };
            drop(rows);
            self.record(seq, &task_type, state.status, &transition.state)?;
            out.push(outcome);
        }
        Ok(out)
    }

    pub(crate) fn extend_leases(
        &mut self,
        lease_owners: &[String],
        lease_deadline_ms: Millis,
    ) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(EXTEND).map_err(sql_error)?;
        let mut changed = 0;
        for owner in lease_owners {
            changed += stmt
                .execute(params![owner, millis(lease_deadline_ms)])
                .map_err(sql_error)?;
        }
        Ok(changed as u64)
    }

    fn leadership(&self) -> Result<Option<Leadership>> {
        let mut stmt = self.conn.prepare_cached(LEADERSHIP).map_err(sql_error)?;
        let (holder, epoch, expires_at): (String, i64, i64) = stmt
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(sql_error)?;
        // Epoch 0 is the row the migration seeds: nobody has held the role yet.
        Ok((epoch > 0).then(|| Leadership {
            holder,
            epoch: epoch as u64,
            expires_at_ms: expires_at.max(0) as u64,
        }))
    }

    pub(crate) fn acquire_leadership(
        &mut self,
        candidate: &str,
        now: Millis,
        ttl_ms: u64,
    ) -> Result<Leadership> {
        let current = self.leadership()?;
        let next = next_leadership(current.as_ref(), candidate, now, ttl_ms);
        if current.as_ref() != Some(&next) {
            let mut stmt = self
                .conn
                .prepare_cached(WRITE_LEADERSHIP)
                .map_err(sql_error)?;
            stmt.execute(params![
                next.holder,
                next.epoch as i64,
                millis(next.expires_at_ms)
            ])
            .map_err(sql_error)?;
        }
        Ok(next)
    }

    pub(crate) fn resign_leadership(&mut self, fence: &Fence) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(RESIGN).map_err(sql_error)?;
        stmt.execute(params![fence.holder, fence.epoch as i64])
            .map_err(sql_error)?;
        Ok(())
    }

    /// Refuses a singleton duty unless `fence` holds at `now`.
    pub(crate) fn check_fence(&self, fence: &Fence, now: Millis) -> Result<()> {
        let current = self.leadership()?;
        if fence.admits(current.as_ref(), now) {
            Ok(())
        } else {
            Err(fence.refusal(current.as_ref()))
        }
    }

    /// Fails the current attempt of each task; returns the ids of those it applied to.
    fn fail_running(
        &mut self,
        tasks: Vec<Loaded>,
        failure: &Failure,
        now: Millis,
    ) -> Result<Vec<TaskId>> {
        let mut out = Vec::with_capacity(tasks.len());
        for loaded in tasks {
            let command = Command::Fail {
                attempt: loaded.state.attempt,
                failure: failure.clone(),
            };
            if self.transition(&loaded, command, now)?.is_ok() {
                out.push(loaded.spec.task_id);
            }
        }
        Ok(out)
    }

    pub(crate) fn expire_leases(&mut self, now: Millis, fence: &Fence) -> Result<Vec<TaskId>> {
        self.check_fence(fence, now)?;
        let tasks = self.load_many(OVERDUE, params![millis(now)])?;
        let failure = Failure::new(
            FailureKind::LeaseExpired,
            "the lease was not extended in time",
        );
        self.fail_running(tasks, &failure, now)
    }

    pub(crate) fn release_owner(
        &mut self,
        lease_owner: &str,
        failure: Failure,
        now: Millis,
    ) -> Result<Vec<TaskId>> {
        let tasks = self.load_many(HELD, params![lease_owner])?;
        self.fail_running(tasks, &failure, now)
    }

    pub(crate) fn promote_due(&mut self, now: Millis, fence: &Fence) -> Result<Vec<String>> {
        self.check_fence(fence, now)?;
        let tasks = self.load_many(DUE, params![millis(now)])?;
        let mut types = BTreeSet::new();
        for loaded in tasks {
            if self.transition(&loaded, Command::Promote, now)?.is_ok() {
                types.insert(loaded.spec.task_type);
            }
        }
        Ok(types.into_iter().collect())
    }
}

fn exec(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
        .map_err(sql_error)
}

/// Counters of the writer's work, shared with the store.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub transactions: AtomicU64,
    pub operations: AtomicU64,
}

/// Syncs the WAL, then answers the callers of the batches committed before
/// the sync began, in commit order.
///
/// Commits whose every operation may defer its sync are held up to
/// `defer_max` for a later commit to share the sync with.
fn sync_loop(
    wal: std::fs::File,
    batches: std::sync::mpsc::Receiver<Vec<Op>>,
    defer_max: std::time::Duration,
) {
    let deferrable = |synced: &[Vec<Op>]| synced.iter().flatten().all(|op| op.defer_sync);
    while let Ok(first) = batches.recv() {
        let mut synced = vec![first];
        synced.extend(batches.try_iter());
        let until = std::time::Instant::now() + defer_max;
        while deferrable(&synced) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match batches.recv_timeout(left) {
                Ok(more) => {
                    synced.push(more);
                    synced.extend(batches.try_iter());
                }
                // Held long enough, or the writer is stopping.
                Err(_) => break,
            }
        }
        sync_and_answer(&wal, synced.into_iter().flatten());
    }
}

/// Syncs the WAL once, then answers every operation committed before.
fn sync_and_answer(wal: &std::fs::File, ops: impl IntoIterator<Item = Op>) {
    let began = std::time::Instant::now();
    let outcome = wal.sync_data();
    crate::warn_if_slow("WAL sync", began, crate::SLOW_SYNC);
    let outcome = outcome.map_err(|e| {
        tracing::error!(error = %e, "cannot sync the sqlite WAL");
        Error::Unavailable(format!("cannot sync the write-ahead log: {e}"))
    });
    for op in ops {
        op.job.finish(outcome.as_ref().map(|_| ()));
    }
}

/// Task `task_id`'s row, its spec from `known` when that has it.
fn load_one(
    conn: &Connection,
    task_id: &str,
    known: impl FnOnce(i64) -> Option<TaskSpec>,
) -> Result<Option<Loaded>> {
    let mut stmt = conn.prepare_cached(BY_ID).map_err(sql_error)?;
    let mut rows = stmt.query(params![task_id]).map_err(sql_error)?;
    match rows.next().map_err(sql_error)? {
        Some(row) => decode_record_with(row, known).map_err(sql_error)?.map(Some),
        None => Ok(None),
    }
}

/// The writer thread's loop. Returns when every sender is gone.
pub(crate) fn run(
    conn: Connection,
    mut ops: mpsc::Receiver<Op>,
    max_batch: usize,
    counters: Arc<Counters>,
    tally: Arc<Mutex<Tally>>,
    wal: Option<std::fs::File>,
) {
    let syncer = wal.map(|wal| {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Op>>();
        let thread = wal.try_clone().and_then(|own| {
            std::thread::Builder::new()
                .name("baton-sqlite-sync".into())
                .spawn(move || sync_loop(own, rx, DEFER_SYNC_MAX))
        });
        (tx, wal, thread)
    });
    let (to_sync, sync_thread) = match syncer {
        Some((tx, wal, Ok(thread))) => (Some((tx, wal)), Some(thread)),
        Some((_, _, Err(e))) => {
            // Without the thread each commit syncs on its own: still durable.
            tracing::error!(error = %e, "cannot start the sqlite sync thread; committing with fsync");
            if let Err(e) = conn.pragma_update(None, "synchronous", "FULL") {
                tracing::error!(error = %e, "cannot set synchronous = FULL");
            }
            (None, None)
        }
        None => (None, None),
    };
    let mut session = Session::new(&conn);
    let mut batch: Vec<Op> = Vec::new();
    let mut bulk: Vec<Op> = Vec::new();
    let mut batch_delta = Delta::default();
    while let Some(first) = ops.blocking_recv() {
        let mut weight = first.weight;
        batch.push(first);
        while weight < max_batch {
            match ops.try_recv() {
                Ok(op) => {
                    weight += op.weight;
                    batch.push(op);
                }
                Err(_) => break,
            }
        }
        if batch.iter().any(|op| op.bulk) && batch.iter().any(|op| !op.bulk) {
            // Both kinds: the small ones commit first (see the module's doc).
            let (small, large): (Vec<Op>, Vec<Op>) = batch.drain(..).partition(|op| !op.bulk);
            batch = small;
            bulk = large;
        }
        for part in [&mut batch, &mut bulk] {
            if !part.is_empty() {
                commit(
                    &mut session,
                    part,
                    &mut batch_delta,
                    &counters,
                    &tally,
                    to_sync.as_ref().map(|(tx, wal)| (tx, wal)),
                );
            }
        }
    }
    // The syncer answers what it holds, then stops.
    drop(to_sync);
    if let Some(thread) = sync_thread {
        if thread.join().is_err() {
            tracing::error!("sqlite sync thread panicked");
        }
    }
    tracing::debug!("sqlite writer stopped");
}

/// Runs `batch` in one transaction, then answers each of its callers (through
/// the syncer, when there is one, once the commit is on disk).
fn commit(
    session: &mut Session<'_>,
    batch: &mut Vec<Op>,
    batch_delta: &mut Delta,
    counters: &Counters,
    tally: &Mutex<Tally>,
    to_sync: Option<(&std::sync::mpsc::Sender<Vec<Op>>, &std::fs::File)>,
) {
    let conn = session.conn;
    let began = std::time::Instant::now();
    let outcome = run_batch(session, batch, batch_delta);
    crate::warn_if_slow("write transaction", began, crate::SLOW_TRANSACTION);
    match outcome {
        Ok(()) => session.specs.committed(),
        Err(_) => session.specs.rolled_back(),
    }
    for buf in [&mut session.spec_buf, &mut session.state_buf] {
        if buf.capacity() > KEEP_BUFFER_BYTES {
            *buf = Vec::new();
        }
    }
    if let Err(e) = &outcome {
        tracing::error!(error = %e, ops = batch.len(), "sqlite write batch failed");
        if !conn.is_autocommit() {
            if let Err(rollback) = exec(conn, "ROLLBACK") {
                tracing::error!(error = %rollback, "sqlite rollback failed");
            }
        }
    }
    let commit = outcome.as_ref().map(|_| ());
    if commit.is_ok() {
        // Before any caller hears of the commit, so that its next read sees it.
        tally
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(batch_delta);
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        counters
            .operations
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for op in batch.iter_mut() {
            op.job.committed();
        }
    }
    batch_delta.clear();
    if let (Ok(()), Some((to_sync, wal))) = (commit, to_sync) {
        match to_sync.send(std::mem::take(batch)) {
            Ok(()) => return,
            Err(std::sync::mpsc::SendError(unsent)) => {
                // The syncer is gone (it cannot fail, but if it did): sync here.
                tracing::error!("sqlite sync thread stopped; syncing in the writer");
                sync_and_answer(wal, unsent);
                return;
            }
        }
    }
    for op in batch.drain(..) {
        op.job.finish(commit);
    }
}

/// Runs a batch in one transaction; `delta` collects the count changes of the
/// operations that succeeded (meaningful only if this returns `Ok`).
fn run_batch(session: &mut Session<'_>, batch: &mut [Op], delta: &mut Delta) -> Result<()> {
    let conn = session.conn;
    session.delta.clear();
    exec(conn, "BEGIN IMMEDIATE")?;
    if let [only] = batch {
        // Alone in its transaction, an operation needs no savepoint of its own:
        // if it fails, the whole transaction is rolled back.
        return if only.job.run(session) {
            delta.absorb(&mut session.delta);
            exec(conn, "COMMIT")
        } else {
            session.delta.clear();
            session.specs.rolled_back();
            exec(conn, "ROLLBACK")
        };
    }
    for op in batch.iter_mut() {
        exec(conn, "SAVEPOINT op")?;
        let staged = session.specs.mark();
        if op.job.run(session) {
            delta.absorb(&mut session.delta);
        } else {
            session.delta.clear();
            session.specs.unstage(staged);
            exec(conn, "ROLLBACK TO op")?;
        }
        exec(conn, "RELEASE op")?;
    }
    exec(conn, "COMMIT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_operations_commit_before_bulk_ones_queued_ahead_of_them() {
        type Answer = oneshot::Receiver<Result<()>>;
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let small = |name: &'static str| -> (Op, Answer) {
            let (reply, answer) = oneshot::channel();
            let log = log.clone();
            let work = move |_: &mut Session<'_>| {
                log.lock().unwrap().push(format!("ran {name}"));
                Ok(())
            };
            let op = Op {
                weight: 1,
                bulk: false,
                defer_sync: false,
                job: Box::new(Pending::new(work, reply)),
            };
            (op, answer)
        };
        let (claim, claim_answer) = small("claim");
        let (result, result_answer) = small("result");
        // The bulk operation notes, as it runs, whether the small ones were
        // already answered (their transaction committed).
        let (reply, submit_answer) = oneshot::channel();
        let seen = log.clone();
        let mut waiting: Vec<Answer> = vec![claim_answer, result_answer];
        let work = move |_: &mut Session<'_>| {
            let answered = waiting
                .iter_mut()
                .map(|a| a.try_recv())
                .filter(|r| matches!(r, Ok(Ok(()))))
                .count();
            seen.lock()
                .unwrap()
                .push(format!("ran submit after {answered} answered"));
            Ok(())
        };
        let submit = Op {
            weight: 1_000,
            bulk: true,
            defer_sync: false,
            job: Box::new(Pending::new(work, reply)),
        };
        let (tx, rx) = mpsc::channel(16);
        for op in [submit, claim, result] {
            tx.try_send(op).unwrap();
        }
        drop(tx);
        run(
            Connection::open_in_memory().unwrap(),
            rx,
            4096,
            Arc::default(),
            Arc::default(),
            None,
        );
        assert!(matches!(submit_answer.blocking_recv(), Ok(Ok(()))));
        assert_eq!(
            *log.lock().unwrap(),
            ["ran claim", "ran result", "ran submit after 2 answered"]
        );
    }

    #[test]
    fn the_syncer_answers_every_operation_of_every_batch_sent_to_it() {
        let log = Arc::new(Mutex::new(Vec::<usize>::new()));
        let mut answers = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Op>>();
        for b in 0..3 {
            let mut batch = Vec::new();
            for k in 0..4 {
                let n = b * 4 + k;
                let (reply, answer) = oneshot::channel();
                let mut job: Box<dyn Job> = Box::new(Pending::new(
                    move |_: &mut Session<'_>| -> Result<usize> { Ok(n) },
                    reply,
                ));
                // Run as the writer would have, inside its transaction.
                let conn = Connection::open_in_memory().unwrap();
                let mut session = Session::new(&conn);
                assert!(job.run(&mut session));
                let log = log.clone();
                answers.push(std::thread::spawn(move || {
                    let got = answer.blocking_recv().unwrap().unwrap();
                    log.lock().unwrap().push(got);
                    got
                }));
                batch.push(Op {
                    weight: 1,
                    bulk: false,
                    defer_sync: false,
                    job,
                });
            }
            tx.send(batch).unwrap();
        }
        drop(tx);
        let dir = std::env::temp_dir().join(format!("baton-sync-{}", std::process::id()));
        let wal = std::fs::File::create(&dir).unwrap();
        sync_loop(wal, rx, DEFER_SYNC_MAX);
        let _ = std::fs::remove_file(&dir);
        let got: Vec<usize> = answers.into_iter().map(|a| a.join().unwrap()).collect();
        assert_eq!(
            got,
            (0..12).collect::<Vec<_>>(),
            "each caller gets its own answer"
        );
        assert_eq!(log.lock().unwrap().len(), 12);
    }

    /// An operation that has run, as in the writer's transaction, and the
    /// receiver of its answer.
    fn ran(defer_sync: bool) -> (Op, oneshot::Receiver<Result<()>>) {
        let (reply, answer) = oneshot::channel();
        let mut job: Box<dyn Job> = Box::new(Pending::new(
            |_: &mut Session<'_>| -> Result<()> { Ok(()) },
            reply,
        ));
        let conn = Connection::open_in_memory().unwrap();
        assert!(job.run(&mut Session::new(&conn)));
        let op = Op {
            weight: 1,
            bulk: false,
            defer_sync,
            job,
        };
        (op, answer)
    }

    #[test]
    fn a_deferrable_commit_waits_for_the_next_commit_or_the_window_to_sync() {
        use std::time::{Duration, Instant};
        let path = std::env::temp_dir().join(format!("baton-defer-{}", std::process::id()));
        let wal = std::fs::File::create(&path).unwrap();

        // Held until the next commit comes, then synced and answered with it.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Op>>();
        let own = wal.try_clone().unwrap();
        let syncer = std::thread::spawn(move || sync_loop(own, rx, Duration::from_secs(30)));
        let (deferred, mut deferred_answer) = ran(true);
        tx.send(vec![deferred]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            deferred_answer.try_recv().is_err(),
            "a deferrable commit alone is held"
        );
        let (eager, eager_answer) = ran(false);
        let sent = Instant::now();
        tx.send(vec![eager]).unwrap();
        assert!(matches!(eager_answer.blocking_recv(), Ok(Ok(()))));
        assert!(matches!(deferred_answer.blocking_recv(), Ok(Ok(()))));
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "not held to the window"
        );
        drop(tx);
        syncer.join().unwrap();

        // Alone, it is synced once the window has passed.
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Op>>();
        let own = wal.try_clone().unwrap();
        let syncer = std::thread::spawn(move || sync_loop(own, rx, Duration::from_millis(40)));
        let (deferred, deferred_answer) = ran(true);
        let sent = Instant::now();
        tx.send(vec![deferred]).unwrap();
        assert!(matches!(deferred_answer.blocking_recv(), Ok(Ok(()))));
        assert!(sent.elapsed() >= Duration::from_millis(40));
        drop(tx);
        syncer.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn jitter_samples_are_in_the_unit_interval() {
        let mut j = Jitter::seeded();
        let samples: Vec<f64> = (0..10_000).map(|_| j.sample()).collect();
        assert!(samples.iter().all(|s| (0.0..1.0).contains(s)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }
}
