//! Task operations. Writes run inside a transaction the caller opened (the
//! `transaction!` macro of the crate root); each loads rows under a row lock, asks
//! `baton_core::lifecycle::apply` what to do, and writes every changed row back in
//! one multi-row statement. Reads take a plain connection.

use crate::codec::{
    db_error, decode_cursor, decode_spec_row, decode_task, encode_cursor, millis, opt_millis,
    read_status, Fault, JsonParam, Loaded, Res,
};
use baton_core::lifecycle::{apply, Command, Ctx, Failure, FailureKind, TaskState, Transition};
use baton_core::{Millis, Status, TaskId, TaskSpec};
use baton_store::{
    initial_state, ClaimRequest, Claimed, Counts, Error, ListFilter, Page, Selected,
    SelectedOutcome, StartAt, SubmitOutcome, TaskRecord, Update, UpdateOutcome,
};
use deadpool_postgres::GenericClient;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// The channel every transaction that queues work notifies, with the task type as
/// payload.
pub const WORK_CHANNEL: &str = "baton_work";

/// Page size when the filter asks for 0.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// Largest page handed out, whatever the filter asks for.
pub const MAX_LIST_LIMIT: usize = 1_000;

/// `SELECT` of every query that loads tasks, decoded by `codec::decode_task`. The
/// spec comes from a subquery rather than a join: one primary-key probe per row
/// returned, whatever the planner estimates (a join may be planned as a scan of
/// every spec), and a missing spec shows as corruption instead of hiding its task.
macro_rules! from_tasks {
    ($tail:literal) => {
        concat!(
            "SELECT t.seq, t.state, GREATEST(t.lease_deadline, (SELECT o.deadline FROM lease_owners o WHERE o.owner = t.lease_owner AND t.status = 1)), (SELECT s.spec FROM task_specs s WHERE s.seq = t.seq) FROM tasks t ",
            $tail
        )
    };
}

// Status codes appear in SQL text as literals (`status = 0` queued, `1` running,
// `2` retry_wait), never as parameters, so that the planner can match the partial
// indexes whatever the plan; `codec::tests::status_codes_match_core` pins them to
// `Status::code()`.

/// Inserts the first occurrence of each new task, in submission order (so `seq`
/// is FIFO order), and its spec; returns the ids it inserted. An id that exists
/// already, or that a concurrent transaction is inserting, is left alone.
const INSERT: &str = "WITH input AS (
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::int2[], $4::int2[], $5::json[], $6::json[],
                $7::text[], $8::int8[])
            WITH ORDINALITY AS i (id, task_type, status, priority, state, spec, lease_owner, lease_deadline, ord)
    ), inserted AS (
        INSERT INTO tasks (id, task_type, status, priority, state, lease_owner, lease_deadline)
        SELECT id, task_type, status, priority, state, lease_owner, lease_deadline FROM input
        WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.run_id = input.id AND r.flow_name IS NOT NULL)
        ORDER BY ord
        ON CONFLICT (id) DO NOTHING
        RETURNING seq, id
    ), specs AS (
        INSERT INTO task_specs (seq, spec)
        SELECT inserted.seq, input.spec FROM inserted JOIN input ON input.id = inserted.id
    )
    SELECT id FROM inserted";

pub(crate) const BY_ID: &str = from_tasks!("WHERE t.id = $1");
const BY_IDS: &str = from_tasks!("WHERE t.id = ANY($1)");
/// Locks in `seq` order, as every waiting lock in this crate does, so that two
/// transactions never wait for each other in a cycle.
const LOCK_BY_IDS: &str = from_tasks!("WHERE t.id = ANY($1) ORDER BY t.seq FOR UPDATE");
/// The queued tasks among these ids, locked in `seq` order (see `LOCK_BY_IDS`).
/// One that another transaction holds is waited for, then looked at again: if
/// that transaction claimed it, it is no longer queued and not returned.
const LOCK_QUEUED_BY_IDS: &str =
    from_tasks!("WHERE t.id = ANY($1) AND t.status = 0 ORDER BY t.seq FOR UPDATE");
/// Queued tasks of one type in claim order, skipping those another transaction is
/// claiming right now: two replicas never claim the same attempt, and never wait
/// for each other.
pub(crate) const PICK: &str = from_tasks!(
    "WHERE t.status = 0 AND t.task_type = $1 ORDER BY t.priority DESC, t.seq LIMIT $2 FOR UPDATE SKIP LOCKED"
);
/// The owner's running tasks, locked in `seq` order (see `LOCK_BY_IDS`) before
/// [`EXTEND`] moves their deadline. (An `UPDATE … WHERE lease_owner = $1` alone
/// would lock in index order and could deadlock with `update`.)
/// A replica extends all its sessions' leases in one statement on one row per
/// session, never on the tasks they hold: no task row is written by a heartbeat.
/// A running task's lease ends at the later of its own `lease_deadline` (set when
/// claimed) and its owner's.
pub(crate) const EXTEND: &str = "INSERT INTO lease_owners (owner, deadline)
        SELECT o, $2 FROM UNNEST($1::text[]) AS o
    ON CONFLICT (owner) DO UPDATE SET deadline = GREATEST(lease_owners.deadline, excluded.deadline)";
pub(crate) const HELD_COUNT: &str =
    "SELECT count(*) FROM tasks WHERE status = 1 AND lease_owner = ANY($1)";
/// Scans the running tasks' owner index (running tasks are bounded by the
/// replicas' workers). Sweeps skip rows another transaction holds: that one is
/// changing the task, and the next sweep sees the result.
pub(crate) const OVERDUE: &str = from_tasks!(
    "WHERE t.status = 1 AND t.lease_deadline < $1
       AND NOT EXISTS (SELECT 1 FROM lease_owners o WHERE o.owner = t.lease_owner AND o.deadline >= $1)
     ORDER BY t.seq FOR UPDATE OF t SKIP LOCKED"
);
/// Owners whose lease ended a minute ago hold nothing a sweep has not failed.
const FORGET_OWNERS: &str = "DELETE FROM lease_owners WHERE deadline < $1";
const FORGET_OWNER: &str = "DELETE FROM lease_owners WHERE owner = $1";
pub(crate) const HELD: &str =
    from_tasks!("WHERE t.status = 1 AND t.lease_owner = $1 ORDER BY t.seq FOR UPDATE");
pub(crate) const DUE: &str = from_tasks!(
    "WHERE t.status = 2 AND t.ready_at <= $1 ORDER BY t.ready_at, t.seq FOR UPDATE SKIP LOCKED"
);
const WRITE_BACK: &str = "UPDATE tasks AS t SET status = u.status, ready_at = u.ready_at,
        lease_owner = u.lease_owner, lease_deadline = u.lease_deadline, state = u.state
    FROM UNNEST($1::int8[], $2::int2[], $3::int8[], $4::text[], $5::int8[], $6::json[])
        AS u (seq, status, ready_at, lease_owner, lease_deadline, state)
    WHERE t.seq = u.seq";
const NOTIFY: &str = "SELECT pg_notify($1, task_type) FROM UNNEST($2::text[]) AS task_type";

pub(crate) const NEXT_WAKE: &str = "SELECT MIN(ready_at) FROM tasks WHERE status = 2";
/// Counts by status (`task_type` NULL), then queued counts by type: one statement,
/// so one snapshot, and the two agree.
pub(crate) const COUNTS: &str = "SELECT status, NULL::text, COUNT(*) FROM tasks GROUP BY status
    UNION ALL
    SELECT 0::int2, task_type, COUNT(*) FROM tasks WHERE status = 0 GROUP BY task_type";
/// Distinct types of queued tasks by skipping through `tasks_queued` (one index
/// probe per type, however long the queues).
pub(crate) const QUEUED_TYPES: &str = "WITH RECURSIVE types (task_type) AS (
        (SELECT task_type FROM tasks WHERE status = 0 ORDER BY task_type LIMIT 1)
        UNION ALL
        SELECT (SELECT t.task_type FROM tasks t
                WHERE t.status = 0 AND t.task_type > types.task_type
                ORDER BY t.task_type LIMIT 1)
        FROM types WHERE types.task_type IS NOT NULL
    )
    SELECT task_type FROM types WHERE task_type IS NOT NULL";

/// Uniform samples for backoff jitter (splitmix64 over an atomic counter): shared
/// by every call without a lock. Quality hardly matters here; not depending on a
/// random crate does.
#[derive(Debug)]
pub(crate) struct Jitter(AtomicU64);

impl Jitter {
    pub(crate) fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Jitter(AtomicU64::new(
            nanos ^ u64::from(std::process::id()).rotate_left(32),
        ))
    }

    pub(crate) fn sample(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Task types that got queued work in the current transaction: announced on
/// [`WORK_CHANNEL`] just before it commits (PostgreSQL delivers notifications
/// only on commit, and drops them on rollback).
#[derive(Debug, Default)]
pub(crate) struct Work(BTreeSet<String>);

impl Work {
    fn queued(&mut self, task_type: &str) {
        if !self.0.contains(task_type) {
            self.0.insert(task_type.to_string());
        }
    }

    /// Records the task's type if `from -> to` put it in the queue.
    fn moved(&mut self, task_type: &str, from: Status, to: Status) {
        if to == Status::Queued && from != Status::Queued {
            self.queued(task_type);
        }
    }

    pub(crate) fn into_types(self) -> Vec<String> {
        self.0.into_iter().collect()
    }

    pub(crate) async fn announce(&self, tx: &Tx<'_>) -> Res<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let types: Vec<&str> = self.0.iter().map(String::as_str).collect();
        let stmt = tx.prepare_cached(NOTIFY).await?;
        tx.execute(&stmt, &[&WORK_CHANNEL, &types]).await?;
        Ok(())
    }
}

type Params<'a> = [&'a (dyn tokio_postgres::types::ToSql + Sync)];

async fn load(client: &impl GenericClient, sql: &str, params: &Params<'_>) -> Res<Vec<Loaded>> {
    let stmt = client.prepare_cached(sql).await?;
    let rows = client.query(&stmt, params).await?;
    rows.iter().map(decode_task).collect()
}

/// Like [`load`], but planned for these very parameters (a statement of its own,
/// not the connection's cached one): listing filters on values as skewed as task
/// statuses, where a generic plan walks the whole table for a rare one.
async fn load_planned_for(
    client: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Res<Vec<Loaded>> {
    let rows = client.query(sql, params).await?;
    rows.iter().map(decode_task).collect()
}

/// Writes the state of each task back, in one statement.
async fn write_back(tx: &Tx<'_>, tasks: &[&Loaded]) -> Res<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let n = tasks.len();
    let (mut seqs, mut statuses, mut ready, mut owners, mut deadlines, mut states) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for task in tasks {
        let state = &task.state;
        seqs.push(task.seq);
        statuses.push(i16::from(state.status.code()));
        ready.push(opt_millis(state.ready_at_ms));
        owners.push(state.lease_owner.as_deref());
        deadlines.push(opt_millis(state.lease_deadline_ms));
        states.push(JsonParam::encode(state)?);
    }
    let stmt = tx.prepare_cached(WRITE_BACK).await?;
    let written = tx
        .execute(
            &stmt,
            &[&seqs, &statuses, &ready, &owners, &deadlines, &states],
        )
        .await?;
    if written != n as u64 {
        return Err(Error::Corrupt(format!("wrote back {written} of {n} locked task rows")).into());
    }
    Ok(())
}

/// Applies one command to a loaded task, keeping the new state in `task` if the
/// lifecycle accepted it.
fn transition(
    task: &mut Loaded,
    command: Command,
    now: Millis,
    jitter: &Jitter,
    work: &mut Work,
) -> Result<Transition, baton_core::lifecycle::Refusal> {
    let ctx = Ctx::for_spec(&task.spec, now, jitter.sample());
    let transition = apply(&task.state, command, ctx)?;
    work.moved(
        &task.spec.task_type,
        task.state.status,
        transition.state.status,
    );
    task.state = transition.state.clone();
    Ok(transition)
}

/// Stores new tasks; see `Store::submit`. Duplicates within `tasks` compare with
/// the first occurrence.
/// Stores new tasks; task `i` starts running at once on `starts[i]`, if given,
/// when it is created (see [`baton_store::initial_state`]).
pub(crate) async fn submit(
    tx: &Tx<'_>,
    tasks: &[TaskSpec],
    starts: &[Option<StartAt>],
    now: Millis,
    work: &mut Work,
) -> Res<Vec<SubmitOutcome>> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    // The first occurrence of each id is the one inserted.
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
    let mut fresh = Vec::with_capacity(tasks.len());
    for (i, spec) in tasks.iter().enumerate() {
        if !first.contains_key(spec.task_id.as_str()) {
            first.insert(spec.task_id.as_str(), i);
            fresh.push(i);
        }
    }
    let states: Vec<TaskState> = fresh
        .iter()
        .map(|&i| initial_state(&tasks[i], starts.get(i).and_then(Option::as_ref), now))
        .collect();
    let n = fresh.len();
    let (mut ids, mut types, mut statuses, mut priorities, mut state_json, mut spec_json) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut owners, mut deadlines) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (&i, state) in fresh.iter().zip(&states) {
        let spec = &tasks[i];
        ids.push(spec.task_id.as_str());
        types.push(spec.task_type.as_str());
        statuses.push(i16::from(state.status.code()));
        priorities.push(i16::from(spec.priority.rank()));
        state_json.push(JsonParam::encode(state)?);
        spec_json.push(JsonParam::encode(spec)?);
        owners.push(state.lease_owner.as_deref());
        deadlines.push(state.lease_deadline_ms.map(millis));
    }
    let stmt = tx.prepare_cached(INSERT).await?;
    let rows = tx
        .query(
            &stmt,
            &[
                &ids,
                &types,
                &statuses,
                &priorities,
                &state_json,
                &spec_json,
                &owners,
                &deadlines,
            ],
        )
        .await?;
    let mut inserted = BTreeSet::new();
    for row in &rows {
        let id: String = row.try_get(0).map_err(|e| Fault::Store(db_error(&e)))?;
        inserted.insert(id);
    }
    // Ids that were there already (or that a concurrent submit inserted first).
    let existing_ids: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !inserted.contains(*id))
        .collect();
    let mut stored: HashMap<String, TaskRecord> = HashMap::new();
    if !existing_ids.is_empty() {
        for loaded in load(tx, BY_IDS, &[&existing_ids]).await? {
            stored.insert(
                loaded.spec.task_id.as_str().to_string(),
                loaded.into_record(),
            );
        }
    }
    let mut states = fresh.iter().copied().zip(states).collect::<HashMap<_, _>>();
    let mut out = Vec::with_capacity(tasks.len());
    for (i, spec) in tasks.iter().enumerate() {
        let id = spec.task_id.as_str();
        if inserted.contains(id) {
            if let Some(state) = states.remove(&i) {
                if state.status == Status::Queued {
                    work.queued(&spec.task_type);
                }
                let record = TaskRecord {
                    spec: spec.clone(),
                    state,
                };
                stored.insert(id.to_string(), record.clone());
                out.push(SubmitOutcome::Created(record));
                continue;
            }
        }
        let Some(record) = stored.get(id).cloned() else {
            // Neither inserted nor a task's: a flow run's id (see INSERT).
            out.push(SubmitOutcome::FlowRun(spec.task_id.clone()));
            continue;
        };
        out.push(if record.spec == *spec {
            SubmitOutcome::Existing(record)
        } else {
            SubmitOutcome::Conflict(record)
        });
    }
    Ok(out)
}

pub(crate) async fn claim(
    tx: &Tx<'_>,
    request: &ClaimRequest,
    jitter: &Jitter,
    work: &mut Work,
) -> Res<Vec<Claimed>> {
    let mut out = Vec::with_capacity(request.max.min(1024));
    // Tasks past their deadline fail instead of starting and do not use up `max`,
    // so keep picking until `max` started or no queued task of the type is free.
    while out.len() < request.max {
        let want = request.max - out.len();
        let limit = i64::try_from(want).unwrap_or(i64::MAX);
        let mut picked = load(tx, PICK, &[&request.task_type, &limit]).await?;
        let exhausted = picked.len() < want;
        for task in &mut picked {
            let command = Command::Claim {
                agent_id: request.agent_id.clone(),
                lease_owner: request.lease_owner.clone(),
                lease_deadline_ms: request.lease_deadline_ms,
            };
            let transition =
                transition(task, command, request.now, jitter, work).map_err(|refusal| {
                    Error::Corrupt(format!(
                        "task row {} is indexed as queued but {refusal}",
                        task.seq
                    ))
                })?;
            if transition.state.status == Status::Running {
                out.push(Claimed {
                    spec: task.spec.clone(),
                    attempt: transition.state.attempt,
                });
            }
        }
        // Written before the next pick: our own locks do not hide rows from us.
        write_back(tx, &picked.iter().collect::<Vec<_>>()).await?;
        if exhausted {
            break;
        }
    }
    Ok(out)
}

pub(crate) async fn update(
    tx: &Tx<'_>,
    updates: &[Update],
    now: Millis,
    jitter: &Jitter,
    work: &mut Work,
) -> Res<Vec<UpdateOutcome>> {
    let mut ids: Vec<&str> = updates.iter().map(|u| u.task_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut tasks: HashMap<String, (Loaded, bool)> = HashMap::with_capacity(ids.len());
    for loaded in load(tx, LOCK_BY_IDS, &[&ids]).await? {
        tasks.insert(loaded.spec.task_id.as_str().to_string(), (loaded, false));
    }
    let mut out = Vec::with_capacity(updates.len());
    for Update { task_id, command } in updates {
        let Some((task, changed)) = tasks.get_mut(task_id.as_str()) else {
            out.push(UpdateOutcome::NotFound);
            continue;
        };
        // Cloned: the transaction may run again after a deadlock.
        out.push(match transition(task, command.clone(), now, jitter, work) {
            Ok(Transition { state, effects }) => {
                *changed = true;
                UpdateOutcome::Applied {
                    record: TaskRecord {
                        spec: task.spec.clone(),
                        state,
                    },
                    effects,
                }
            }
            Err(refusal) => UpdateOutcome::Refused(refusal),
        });
    }
    write_changed(tx, &tasks).await?;
    Ok(out)
}

/// Writes back the loaded tasks marked changed.
async fn write_changed(tx: &Tx<'_>, tasks: &HashMap<String, (Loaded, bool)>) -> Res<()> {
    let changed: Vec<&Loaded> = tasks
        .values()
        .filter(|(_, changed)| *changed)
        .map(|(task, _)| task)
        .collect();
    write_back(tx, &changed).await
}

/// Claims the selected tasks that are still queued; see `Store::claim_selected`.
pub(crate) async fn claim_selected(
    tx: &Tx<'_>,
    selected: &[Selected],
    lease_deadline_ms: Millis,
    now: Millis,
    jitter: &Jitter,
    work: &mut Work,
) -> Res<Vec<SelectedOutcome>> {
    let mut ids: Vec<&str> = selected.iter().map(|s| s.task_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut tasks: HashMap<String, (Loaded, bool)> = HashMap::with_capacity(ids.len());
    for loaded in load(tx, LOCK_QUEUED_BY_IDS, &[&ids]).await? {
        tasks.insert(loaded.spec.task_id.as_str().to_string(), (loaded, false));
    }
    let mut out = Vec::with_capacity(selected.len());
    for s in selected {
        let Some((task, changed)) = tasks.get_mut(s.task_id.as_str()) else {
            out.push(SelectedOutcome::NotQueued);
            continue;
        };
        let command = Command::Claim {
            agent_id: s.agent_id.clone(),
            lease_owner: s.lease_owner.clone(),
            lease_deadline_ms,
        };
        // Refused only when the same id was selected twice: the first claim
        // already took it.
        out.push(match transition(task, command, now, jitter, work) {
            Ok(Transition { state, .. }) if state.status == Status::Running => {
                *changed = true;
                SelectedOutcome::Claimed {
                    attempt: state.attempt,
                }
            }
            Ok(Transition { state, effects }) => {
                *changed = true;
                SelectedOutcome::Finished {
                    record: TaskRecord {
                        spec: task.spec.clone(),
                        state,
                    },
                    effects,
                }
            }
            Err(_) => SelectedOutcome::NotQueued,
        });
    }
    write_changed(tx, &tasks).await?;
    Ok(out)
}

pub(crate) async fn extend_leases(
    tx: &Tx<'_>,
    lease_owners: &[String],
    lease_deadline_ms: Millis,
) -> Res<u64> {
    if lease_owners.is_empty() {
        return Ok(0);
    }
    let extend = tx.prepare_cached(EXTEND).await?;
    tx.execute(&extend, &[&lease_owners, &millis(lease_deadline_ms)])
        .await?;
    let count = tx.prepare_cached(HELD_COUNT).await?;
    let held: i64 = tx.query_one(&count, &[&lease_owners]).await?.try_get(0)?;
    Ok(held as u64)
}

/// Fails the current attempt of each task; returns the ids of those it applied to.
async fn fail_running(
    tx: &Tx<'_>,
    mut tasks: Vec<Loaded>,
    failure: &Failure,
    now: Millis,
    jitter: &Jitter,
    work: &mut Work,
) -> Res<Vec<TaskId>> {
    let mut failed = Vec::with_capacity(tasks.len());
    let mut changed = Vec::with_capacity(tasks.len());
    for task in &mut tasks {
        let command = Command::Fail {
            attempt: task.state.attempt,
            failure: failure.clone(),
        };
        if transition(task, command, now, jitter, work).is_ok() {
            failed.push(task.spec.task_id.clone());
            changed.push(&*task);
        }
    }
    write_back(tx, &changed).await?;
    Ok(failed)
}

pub(crate) async fn expire_leases(
    tx: &Tx<'_>,
    now: Millis,
    jitter: &Jitter,
    work: &mut Work,
) -> Res<Vec<TaskId>> {
    let tasks = load(tx, OVERDUE, &[&millis(now)]).await?;
    let forget = tx.prepare_cached(FORGET_OWNERS).await?;
    tx.execute(&forget, &[&millis(now.saturating_sub(60_000))])
        .await?;
    let failure = Failure::new(
        FailureKind::LeaseExpired,
        "the lease was not extended in time",
    );
    fail_running(tx, tasks, &failure, now, jitter, work).await
}

pub(crate) async fn release_owner(
    tx: &Tx<'_>,
    lease_owner: &str,
    failure: &Failure,
    now: Millis,
    jitter: &Jitter,
    work: &mut Work,
) -> Res<Vec<TaskId>> {
    let tasks = load(tx, HELD, &[&lease_owner]).await?;
    let forget = tx.prepare_cached(FORGET_OWNER).await?;
    tx.execute(&forget, &[&lease_owner]).await?;
    fail_running(tx, tasks, failure, now, jitter, work).await
}

pub(crate) async fn promote_due(
    tx: &Tx<'_>,
    now: Millis,
    jitter: &Jitter,
    work: &mut Work,
) -> Res<()> {
    let mut tasks = load(tx, DUE, &[&millis(now)]).await?;
    let mut changed = Vec::with_capacity(tasks.len());
    for task in &mut tasks {
        if transition(task, Command::Promote, now, jitter, work).is_ok() {
            changed.push(&*task);
        }
    }
    write_back(tx, &changed).await
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

pub(crate) async fn get(client: &impl GenericClient, task_id: &TaskId) -> Res<Option<TaskRecord>> {
    let mut found = load(client, BY_ID, &[&task_id.as_str()]).await?;
    Ok(found.pop().map(Loaded::into_record))
}

/// Queued tasks of a type in claim order, unlocked (see `Store::peek_queued`).
pub(crate) async fn peek_queued(
    client: &impl GenericClient,
    task_type: &str,
    limit: usize,
    skip: &[TaskId],
) -> Res<Vec<TaskSpec>> {
    // Only the specs: the decision reads nothing of a queued task's state.
    const SQL: &str = "SELECT t.seq, s.spec FROM tasks t JOIN task_specs s ON s.seq = t.seq \
         WHERE t.status = 0 AND t.task_type = $1 AND NOT (t.id = ANY($3)) \
         ORDER BY t.priority DESC, t.seq LIMIT $2";
    let limit = limit.min(MAX_LIST_LIMIT) as i64;
    let skip: Vec<&str> = skip.iter().map(TaskId::as_str).collect();
    let rows = client.query(SQL, &[&task_type, &limit, &skip]).await?;
    rows.iter().map(decode_spec_row).collect()
}

pub(crate) async fn list(client: &impl GenericClient, filter: &ListFilter) -> Res<Page> {
    let before = decode_cursor(filter.cursor.as_deref())?;
    let limit = match filter.limit {
        0 => DEFAULT_LIST_LIMIT,
        n => n.min(MAX_LIST_LIMIT),
    };
    // One more than asked tells whether another page exists.
    let fetch = limit as i64 + 1;
    let status = filter.status.map(|s| i16::from(s.code()));
    let task_type = filter.task_type.as_deref();
    let tasks = match (status, task_type) {
        (None, None) => {
            const SQL: &str = from_tasks!("WHERE t.seq < $1 ORDER BY t.seq DESC LIMIT $2");
            load_planned_for(client, SQL, &[&before, &fetch]).await?
        }
        (Some(status), None) => {
            const SQL: &str =
                from_tasks!("WHERE t.status = $3 AND t.seq < $1 ORDER BY t.seq DESC LIMIT $2");
            load_planned_for(client, SQL, &[&before, &fetch, &status]).await?
        }
        (None, Some(task_type)) => {
            const SQL: &str =
                from_tasks!("WHERE t.task_type = $3 AND t.seq < $1 ORDER BY t.seq DESC LIMIT $2");
            load_planned_for(client, SQL, &[&before, &fetch, &task_type]).await?
        }
        (Some(status), Some(task_type)) => {
            const SQL: &str = from_tasks!(
                "WHERE t.status = $3 AND t.task_type = $4 AND t.seq < $1 ORDER BY t.seq DESC LIMIT $2"
            );
            load_planned_for(client, SQL, &[&before, &fetch, &status, &task_type]).await?
        }
    };
    let more = tasks.len() > limit;
    let mut tasks = tasks;
    tasks.truncate(limit);
    let next_cursor = match (more, tasks.last()) {
        (true, Some(last)) => Some(encode_cursor(last.seq)),
        _ => None,
    };
    Ok(Page {
        tasks: tasks.into_iter().map(Loaded::into_record).collect(),
        next_cursor,
    })
}

pub(crate) async fn next_wake(client: &impl GenericClient) -> Res<Option<Millis>> {
    let stmt = client.prepare_cached(NEXT_WAKE).await?;
    let row = client.query_one(&stmt, &[]).await?;
    let earliest: Option<i64> = row.try_get(0)?;
    earliest
        .map(|t| {
            Millis::try_from(t)
                .map_err(|_| Fault::Store(Error::Corrupt(format!("negative ready_at {t}"))))
        })
        .transpose()
}

fn count(raw: i64) -> Res<u64> {
    u64::try_from(raw).map_err(|_| Fault::Store(Error::Corrupt(format!("negative count {raw}"))))
}

pub(crate) async fn counts(client: &impl GenericClient) -> Res<Counts> {
    let stmt = client.prepare_cached(COUNTS).await?;
    let mut counts = Counts::default();
    for row in client.query(&stmt, &[]).await? {
        let n = count(row.try_get(2)?)?;
        if n == 0 {
            continue;
        }
        match row.try_get::<_, Option<String>>(1)? {
            None => {
                let status = read_status(row.try_get(0)?)?;
                counts.by_status.insert(status.as_str().to_string(), n);
            }
            Some(task_type) => {
                counts.queued_by_type.insert(task_type, n);
            }
        }
    }
    Ok(counts)
}

pub(crate) async fn queued_types(client: &impl GenericClient) -> Res<Vec<String>> {
    let stmt = client.prepare_cached(QUEUED_TYPES).await?;
    let rows = client.query(&stmt, &[]).await?;
    rows.iter()
        .map(|row| row.try_get::<_, String>(0).map_err(Fault::from))
        .collect()
}

pub(crate) async fn queued_by_priority(
    client: &impl GenericClient,
) -> Res<std::collections::BTreeMap<String, u64>> {
    let stmt = client
        .prepare_cached("SELECT priority, COUNT(*) FROM tasks WHERE status = 0 GROUP BY priority")
        .await?;
    let mut out = std::collections::BTreeMap::new();
    for row in client.query(&stmt, &[]).await? {
        let rank: i16 = row.try_get(0)?;
        let n: i64 = row.try_get(1)?;
        let priority = u8::try_from(rank)
            .ok()
            .and_then(baton_core::Priority::from_rank)
            .ok_or_else(|| {
                Fault::Store(baton_store::Error::Corrupt(format!(
                    "unknown priority rank {rank}"
                )))
            })?;
        out.insert(priority.as_str().to_string(), n as u64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Options, PgStore};

    /// Each hot query can be answered from the index made for it; with sequential
    /// scans priced out, the plan shows which index the planner would take.
    #[tokio::test]
    async fn queries_use_their_indexes() {
        let url = std::env::var("BATON_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let store = PgStore::connect_temp(&url, Options::default())
            .await
            .expect("connect to postgres (see BATON_TEST_POSTGRES_URL)");
        let mut client = store.client().await.expect("client");
        let tx = client.transaction().await.expect("transaction");
        tx.batch_execute("SET LOCAL enable_seqscan = off")
            .await
            .expect("set");
        let (t, n, ids, owners) = ("echo", 10i64, vec!["a", "b"], vec!["a".to_string()]);
        let list_all = from_tasks!("WHERE t.seq < $1 ORDER BY t.seq DESC LIMIT $2");
        let list_by_type =
            from_tasks!("WHERE t.task_type = $3 AND t.seq < $1 ORDER BY t.seq DESC LIMIT $2");
        let cases: Vec<(&str, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>, &str)> = vec![
            (PICK, vec![&t, &n], "tasks_queued"),
            (QUEUED_TYPES, vec![], "tasks_queued"),
            (COUNTS, vec![], "tasks_queued"),
            (HELD_COUNT, vec![&owners], "tasks_running_owner"),
            (HELD, vec![&t], "tasks_running_owner"),
            (OVERDUE, vec![&n], "tasks_running_owner"),
            (DUE, vec![&n], "tasks_retry_ready"),
            (NEXT_WAKE, vec![], "tasks_retry_ready"),
            (LOCK_BY_IDS, vec![&ids], "tasks_id_key"),
            (BY_ID, vec![&t], "tasks_id_key"),
            (list_all, vec![&n, &n], "tasks_pkey"),
            (list_by_type, vec![&n, &n, &t], "tasks_by_type"),
        ];
        let mut wrong = Vec::new();
        for (sql, params, index) in cases {
            let rows = tx
                .query(&format!("EXPLAIN {sql}"), &params)
                .await
                .unwrap_or_else(|e| panic!("explain {sql}: {e:?}"));
            let plan: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let plan = plan.join("\n");
            if !plan.contains(index) || plan.contains("Seq Scan on tasks") {
                wrong.push(format!("expected {index} in the plan of {sql}:\n{plan}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    }

    #[test]
    fn jitter_samples_are_in_the_unit_interval() {
        let j = Jitter::seeded();
        let samples: Vec<f64> = (0..10_000).map(|_| j.sample()).collect();
        assert!(samples.iter().all(|s| (0.0..1.0).contains(s)));
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
    }

    #[test]
    fn work_records_only_moves_into_the_queue() {
        let mut work = Work::default();
        work.moved("a", Status::Running, Status::RetryWait);
        work.moved("b", Status::Queued, Status::Queued);
        work.moved("c", Status::RetryWait, Status::Queued);
        work.moved("d", Status::Waiting, Status::Queued);
        work.moved("c", Status::DeadLettered, Status::Queued);
        assert_eq!(work.into_types(), vec!["c".to_string(), "d".to_string()]);
    }
}
