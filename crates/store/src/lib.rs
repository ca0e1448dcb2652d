//! The `Store` trait: Baton's only way to durable state. Every backend (embedded
//! SQLite, PostgreSQL) implements it and must pass [`conformance`].
//!
//! The contract is written for several orchestrator replicas sharing one store:
//! no method relies on a lock held in the caller's memory. A running attempt is a
//! *claim* with a lease (`lease_owner`, `lease_deadline_ms`) and a fencing token (the
//! attempt number); results are accepted only for the current attempt. Hot paths
//! take batches so that a backend can commit many operations per transaction.
//! The lifecycle rules themselves live in `baton_core::lifecycle`; a backend loads
//! the state, calls `apply`, and writes the result, so every backend makes exactly
//! the same decisions.

pub mod conformance;

use async_trait::async_trait;
use baton_core::lifecycle::{Command, Effect, Failure, Refusal, TaskState};
use baton_core::{AgentId, Millis, Status, TaskId, TaskSpec};
use serde::{Deserialize, Serialize};

/// Errors of the store itself (not of the lifecycle: those are per-item outcomes).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot be reached or refused the operation for a transient reason.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Data read back could not be decoded, or an invariant of the backend broke.
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// A list cursor that this store did not hand out (or that no longer parses).
    #[error("invalid cursor")]
    InvalidCursor,
    /// A singleton duty's write carried a fence that is no longer the leadership's:
    /// another replica took over, or the lease ran out. Nothing was written.
    #[error("fenced off: {0}")]
    Fenced(String),
    #[error("store error: {0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What [`Store::submit_starting_then`] and [`Store::write_runs_then`] call
/// with their outcomes once they are committed.
pub type AtCommit<T> = Box<dyn FnOnce(&[T]) + Send>;

impl From<Error> for baton_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(m) => {
                baton_core::Error::unavailable(format!("store unavailable: {m}"))
            }
            Error::Fenced(m) => baton_core::Error::unavailable(format!("fenced off: {m}")),
            Error::InvalidCursor => {
                baton_core::Error::invalid("invalid cursor").with_field("cursor")
            }
            other => baton_core::Error::internal(other.to_string()),
        }
    }
}

/// A task as stored: its immutable spec and its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub spec: TaskSpec,
    pub state: TaskState,
}

/// Outcome of submitting one task.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// Newly stored and queued.
    Created(TaskRecord),
    /// The same id with the same spec already exists: nothing changed.
    Existing(TaskRecord),
    /// The same id exists with a different spec: nothing changed.
    Conflict(TaskRecord),
    /// The id is that of a run started from a registered flow, which is also a
    /// task (seed 000's flow tasks: the task id is the run id): nothing changed.
    FlowRun(TaskId),
}

/// Where a task being submitted starts at once, as a running attempt, instead of
/// waiting in its queue ([`Store::submit_starting`]): the dispatcher asks for it
/// when an agent serving the type has a free slot and nothing of the type is
/// queued, so the task skips a claim, and its commit, on its way to the agent.
#[derive(Debug, Clone, PartialEq)]
pub struct StartAt {
    pub agent_id: AgentId,
    /// Who must keep extending the lease: an agent session on some replica.
    pub lease_owner: String,
    pub lease_deadline_ms: Millis,
}

/// The state a new task is stored in (the rule every backend applies): queued,
/// or waiting when it has dependencies; with `start`, its first attempt running
/// on that agent, exactly as a claim would leave it, when it could be claimed
/// (it is queued and its deadline has not passed). Otherwise `start` is ignored
/// and the task is queued as usual.
pub fn initial_state(spec: &TaskSpec, start: Option<&StartAt>, now: Millis) -> TaskState {
    let state = TaskState::new_for(spec, now);
    let Some(start) = start else {
        return state;
    };
    if state.status != Status::Queued {
        return state;
    }
    let command = Command::Claim {
        agent_id: start.agent_id.clone(),
        lease_owner: start.lease_owner.clone(),
        lease_deadline_ms: start.lease_deadline_ms,
    };
    // A claim needs no jitter: only failures draw a backoff.
    let ctx = baton_core::lifecycle::Ctx::for_spec(spec, now, 0.0);
    match baton_core::lifecycle::apply(&state, command, ctx) {
        Ok(t) if t.state.status == Status::Running => t.state,
        _ => state,
    }
}

/// Ask for up to `max` queued tasks of `task_type`, highest priority first and FIFO
/// within a priority, each to become a running attempt on `agent_id`.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub task_type: String,
    pub max: usize,
    pub agent_id: AgentId,
    /// Who must keep extending the lease: an agent session on some replica.
    pub lease_owner: String,
    pub lease_deadline_ms: Millis,
    pub now: Millis,
}

/// A claimed attempt, ready to send to its agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub spec: TaskSpec,
    pub attempt: u32,
}

/// A queued task the scheduler chose for an agent, to claim by id
/// ([`Store::claim_selected`]).
#[derive(Debug, Clone)]
pub struct Selected {
    pub task_id: TaskId,
    pub agent_id: AgentId,
    /// Who must keep extending the lease: an agent session on some replica.
    pub lease_owner: String,
}

/// Result of claiming one [`Selected`] task.
// Most outcomes are `Claimed`; the rare `Finished` carries a whole record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SelectedOutcome {
    /// It was queued and is now a running attempt with this number. The spec is
    /// not returned: the caller read it when it chose the task, and a spec never
    /// changes.
    Claimed { attempt: u32 },
    /// It was queued, but the claim ended it instead (its deadline had passed,
    /// as in [`Store::claim`]).
    Finished {
        record: TaskRecord,
        effects: Vec<Effect>,
    },
    /// Not queued (another replica claimed it, it was cancelled or it ended)
    /// or not found: nothing changed.
    NotQueued,
}

/// A command for one task, fenced by attempt where the command names one.
#[derive(Debug, Clone)]
pub struct Update {
    pub task_id: TaskId,
    pub command: Command,
}

/// Result of one [`Update`].
// Most outcomes are `Applied`; boxing the record would add an allocation to each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    Applied {
        record: TaskRecord,
        effects: Vec<Effect>,
    },
    Refused(Refusal),
    NotFound,
}

/// Filters for listing tasks. Results come newest first.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub task_type: Option<String>,
    pub limit: usize,
    /// Opaque cursor returned by the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub tasks: Vec<TaskRecord>,
    pub next_cursor: Option<String>,
}

/// Task counts per status, and queued counts per task type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub by_status: std::collections::BTreeMap<String, u64>,
    pub queued_by_type: std::collections::BTreeMap<String, u64>,
}

/// One version of a registered flow definition (seed 003's flow registry). Versions
/// are immutable once stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub name: String,
    pub version: u32,
    /// The definition document as registered (the workflow engine parses it).
    pub definition: serde_json::Value,
    pub created_at_ms: Millis,
}

/// Outcome of registering a flow definition.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowOutcome {
    /// Stored as a new version.
    Created(FlowRecord),
    /// That version (or, with no version asked, the latest one) already holds the
    /// same definition: nothing changed.
    Existing(FlowRecord),
    /// The version asked for exists with another definition: nothing changed.
    Conflict(FlowRecord),
}

/// Who holds the singleton duties (sweeping expired leases, promoting due retries)
/// among the processes sharing a store, until when, and since which epoch. The
/// epoch grows by one each time the role changes hands or lapses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    pub holder: String,
    pub epoch: u64,
    pub expires_at_ms: Millis,
}

impl Leadership {
    /// The fence `candidate` writes with, if it holds the role.
    pub fn fence_for(&self, candidate: &str) -> Option<Fence> {
        (self.holder == candidate).then(|| Fence {
            holder: self.holder.clone(),
            epoch: self.epoch,
        })
    }
}

/// What a singleton duty's write carries. The store refuses it ([`Error::Fenced`])
/// unless `holder` still holds the role, in the same `epoch`, with its lease
/// running at the write's `now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub holder: String,
    pub epoch: u64,
}

impl Fence {
    /// Whether `current` (the stored leadership, if any) admits a write at `now`.
    pub fn admits(&self, current: Option<&Leadership>, now: Millis) -> bool {
        current.is_some_and(|l| {
            l.holder == self.holder && l.epoch == self.epoch && l.expires_at_ms > now
        })
    }

    /// The error a refused write returns.
    pub fn refusal(&self, current: Option<&Leadership>) -> Error {
        Error::Fenced(match current {
            Some(l) if l.holder == self.holder && l.epoch == self.epoch => format!(
                "the leadership of {} (epoch {}) lapsed at {}",
                self.holder, self.epoch, l.expires_at_ms
            ),
            Some(l) => format!(
                "{} (epoch {}) is no longer the leader: {} holds epoch {}",
                self.holder, self.epoch, l.holder, l.epoch
            ),
            None => format!(
                "{} (epoch {}) is not the leader: nobody is",
                self.holder, self.epoch
            ),
        })
    }
}

/// The leadership after `candidate` asked for it at `now` (the rule every backend
/// applies, inside the transaction that holds the stored row): a vacant or lapsed
/// role goes to the candidate with the next epoch; the holder renews its own lease
/// without a new epoch; anyone else gets the current leadership back unchanged.
pub fn next_leadership(
    current: Option<&Leadership>,
    candidate: &str,
    now: Millis,
    ttl_ms: u64,
) -> Leadership {
    match current {
        None => Leadership {
            holder: candidate.to_string(),
            epoch: 1,
            expires_at_ms: now + ttl_ms,
        },
        Some(l) if l.expires_at_ms <= now => Leadership {
            holder: candidate.to_string(),
            epoch: l.epoch + 1,
            expires_at_ms: now + ttl_ms,
        },
        Some(l) if l.holder == candidate => Leadership {
            expires_at_ms: l.expires_at_ms.max(now + ttl_ms),
            ..l.clone()
        },
        Some(l) => l.clone(),
    }
}

/// An opaque JSON document, held as its text: the engine encodes its state
/// straight to text and decodes it straight from text, and a backend stores the
/// text as it is. Building a `serde_json::Value` tree on every write and
/// encoding it again cost the run engine about a fifth of the server's CPU.
///
/// Equality compares the JSON values, not the text: a backend may normalise the
/// text it gives back (PostgreSQL's `jsonb` orders keys and drops spaces).
#[derive(Debug, Clone)]
pub struct Document(std::sync::Arc<str>);

impl Document {
    /// Encodes a value as a document.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Document> {
        serde_json::to_string(value)
            .map(|text| Document(text.into()))
            .map_err(|e| Error::Other(format!("cannot encode json: {e}")))
    }

    /// A document from text read back from a backend; `what` names it in the
    /// error when the text is not JSON.
    pub fn from_text(text: String, what: &str) -> Result<Document> {
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| Error::Corrupt(format!("{what} is not json: {e}")))?;
        Ok(Document(text.into()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Decodes the document into a type of the caller's.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }

    /// The document as a JSON value (for readers that look into it by path).
    pub fn to_value(&self) -> serde_json::Value {
        self.decode().unwrap_or(serde_json::Value::Null)
    }
}

impl From<&serde_json::Value> for Document {
    fn from(value: &serde_json::Value) -> Document {
        Document(value.to_string().into())
    }
}

impl From<serde_json::Value> for Document {
    fn from(value: serde_json::Value) -> Document {
        Document::from(&value)
    }
}

impl PartialEq for Document {
    fn eq(&self, other: &Document) -> bool {
        self.0 == other.0 || self.to_value() == other.to_value()
    }
}

impl Serialize for Document {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Document, D::Error> {
        serde_json::Value::deserialize(deserializer).map(Document::from)
    }
}

/// A workflow run as stored. The store keeps the engine's document (`body`) opaque;
/// the other fields are copies the store can filter and order on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// Name of the registered flow it was started from, if any.
    pub flow_name: Option<String>,
    pub status: String,
    /// Not finished: the engine still has work to do for it (listed by `active_runs`).
    pub active: bool,
    /// Bumped by every write; writes name the revision they replace (compare-and-set).
    pub revision: u64,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
    /// The engine's document: the run's state, rewritten by every write.
    pub body: Document,
    /// The run's definition, which never changes: written with the run (a write
    /// with `None` keeps what is stored, so advancing a run does not rewrite it).
    /// Reads give back what is stored: `None` only for a run stored without one.
    pub definition: Option<serde_json::Value>,
}

/// Writes one run, and submits the tasks it starts, in one transaction.
#[derive(Debug, Clone)]
pub struct RunWrite {
    pub record: RunRecord,
    /// `None`: the run must not exist yet. `Some(r)`: the stored revision must be `r`;
    /// `record.revision` must be greater.
    pub expected_revision: Option<u64>,
    /// Submitted exactly as by [`Store::submit_starting`], in the same transaction.
    pub tasks: Vec<TaskSpec>,
    /// Which of `tasks` start at once (may be shorter than `tasks`).
    pub starts: Vec<Option<StartAt>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunWriteOutcome {
    /// The run was written; the outcome of each task, in order.
    Written(Vec<SubmitOutcome>),
    /// The expected revision did not match (or the run already existed): nothing was
    /// written, and no task submitted. The stored run, if there is one.
    Conflict(Option<RunRecord>),
}

/// Filters for listing runs, newest first.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<String>,
    pub flow_name: Option<String>,
    pub limit: usize,
    pub cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    pub runs: Vec<RunRecord>,
    pub next_cursor: Option<String>,
}

/// How soon a submit must be made durable on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// As soon as it commits: its answer is what the submitter waits for.
    #[default]
    Now,
    /// The submitter goes on waiting for its tasks' ends: the store may make
    /// the write durable together with a later one (typically the task's
    /// result) instead of on its own, answering a little later (the embedded
    /// store: at most 2 ms) but sparing a sync on the way to the result. The
    /// answer still comes only once the write is durable.
    Deferred,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores new tasks as queued, durably, before returning. Idempotent per task id.
    /// An id that is a run's started from a flow is refused (`SubmitOutcome::FlowRun`).
    async fn submit(&self, tasks: Vec<TaskSpec>, now: Millis) -> Result<Vec<SubmitOutcome>> {
        self.submit_starting(tasks, Vec::new(), now).await
    }

    /// [`Store::submit`], where task `i` with `starts[i]` set is stored already
    /// running on that agent (see [`initial_state`]) when it is created; `starts`
    /// may be shorter than `tasks`. An existing task is never started by this: the
    /// caller tells from each `Created` record's state whether it started.
    async fn submit_starting(
        &self,
        tasks: Vec<TaskSpec>,
        starts: Vec<Option<StartAt>>,
        now: Millis,
    ) -> Result<Vec<SubmitOutcome>>;

    /// [`Store::submit_starting`], calling `at_commit` with the outcomes as soon
    /// as they are committed (visible to every reader), which may come before
    /// they are durable: the answer still waits for durability. A caller starts
    /// work there that need not wait for the disk (an assignment to an agent: a
    /// result for a task lost in a crash before the sync is refused, and the
    /// submitter, never answered, submits again). Not called if the write does
    /// not commit. `sync` says whether the write may share a later write's sync
    /// (see [`SyncMode`]). The default, for a store whose commit is durable,
    /// calls the hook just before answering and ignores `sync`.
    async fn submit_starting_then(
        &self,
        tasks: Vec<TaskSpec>,
        starts: Vec<Option<StartAt>>,
        now: Millis,
        at_commit: AtCommit<SubmitOutcome>,
        _sync: SyncMode,
    ) -> Result<Vec<SubmitOutcome>> {
        let outcomes = self.submit_starting(tasks, starts, now).await?;
        at_commit(&outcomes);
        Ok(outcomes)
    }

    /// Claims queued tasks (see [`ClaimRequest`]). Tasks whose deadline passed are
    /// failed instead of claimed and are not returned.
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Claimed>>;

    /// Applies commands (results, failures, cancels, reprocess, promotions) in order,
    /// durably, each through `baton_core::lifecycle::apply`. Outcomes are in the same order.
    async fn update(&self, updates: Vec<Update>, now: Millis) -> Result<Vec<UpdateOutcome>>;

    /// Moves the lease deadline of every running attempt held by any of
    /// `lease_owners` to at least `lease_deadline_ms`, in one write (a replica extends
    /// all its sessions at once). Returns how many attempts they hold.
    async fn extend_leases(
        &self,
        lease_owners: &[String],
        lease_deadline_ms: Millis,
    ) -> Result<u64>;

    /// Fails (as `lease_expired`) every running attempt whose lease deadline is before
    /// `now`. A singleton duty: refused with [`Error::Fenced`] unless `fence` holds.
    async fn expire_leases(&self, now: Millis, fence: &Fence) -> Result<Vec<TaskId>>;

    /// Fails (with `failure`) every running attempt held by `lease_owner`, e.g. when
    /// its agent disconnected. Returns the tasks affected.
    async fn release_owner(
        &self,
        lease_owner: &str,
        failure: Failure,
        now: Millis,
    ) -> Result<Vec<TaskId>>;

    /// Queues again every retry-waiting task whose wait ended by `now`.
    /// Returns the task types that got work. A singleton duty, fenced like
    /// [`Store::expire_leases`].
    async fn promote_due(&self, now: Millis, fence: &Fence) -> Result<Vec<String>>;

    /// Asks for the singleton duties' role for `candidate` at `now`, for `ttl_ms`
    /// (see [`next_leadership`]); the holder calls it again to renew. Returns the
    /// leadership as it stands after the call.
    async fn acquire_leadership(
        &self,
        candidate: &str,
        now: Millis,
        ttl_ms: u64,
    ) -> Result<Leadership>;

    /// Gives the role up at once (a clean shutdown), if `fence` still holds it, so
    /// another process need not wait for the lease to lapse.
    async fn resign_leadership(&self, fence: &Fence) -> Result<()>;

    /// Earliest time a retry wait ends, if any task waits.
    async fn next_wake(&self) -> Result<Option<Millis>>;

    async fn get(&self, task_id: &TaskId) -> Result<Option<TaskRecord>>;

    async fn list(&self, filter: ListFilter) -> Result<Page>;

    async fn counts(&self) -> Result<Counts>;

    /// Task types that have queued tasks.
    async fn queued_types(&self) -> Result<Vec<String>>;

    /// The specs of up to `limit` queued tasks of `task_type` in claim order
    /// (priority, then submission), without claiming them: the scheduler reads
    /// them to decide which task goes to which agent, then claims those by id
    /// with [`Store::claim_selected`], which skips any another replica took
    /// meanwhile. Only specs: a queued task's state holds nothing the decision
    /// reads, and the scheduler reads this window on every look.
    ///
    /// Tasks named in `skip` are left out and do not count towards `limit`:
    /// the scheduler passes those it is still claiming (they read as queued
    /// until the claim commits), so that the window holds only tasks it can
    /// decide over and no spec is read for nothing.
    async fn peek_queued(
        &self,
        task_type: &str,
        limit: usize,
        skip: Vec<TaskId>,
    ) -> Result<Vec<TaskSpec>>;

    /// Claims the tasks the scheduler chose from a [`Store::peek_queued`] window,
    /// each for its own agent and lease owner, durably and in one write. Each is
    /// claimed only if it is still queued (compare-and-set: another replica may
    /// have taken it since the peek), through `Command::Claim` as `update` would
    /// apply it, so a task whose deadline passed fails instead. Outcomes are in
    /// the same order. Unlike `update`, a claimed task's spec is not read back.
    async fn claim_selected(
        &self,
        selected: Vec<Selected>,
        lease_deadline_ms: Millis,
        now: Millis,
    ) -> Result<Vec<SelectedOutcome>>;

    /// Queued tasks per priority, keyed by `Priority::as_str`, non-zero entries only
    /// (metrics read it at scrape time; it may scan the queued tasks).
    async fn queued_by_priority(&self) -> Result<std::collections::BTreeMap<String, u64>>;

    /// Whether this store is used by one process only (the embedded store). Such a
    /// store's running attempts at start-up belong to a previous, dead process.
    fn exclusive(&self) -> bool;

    /// Whether the backend answers right now (readiness).
    async fn ping(&self) -> Result<()>;

    /// Task types that got queued work from any process sharing this store (another
    /// replica's submission), for backends that can tell. A server uses it to wake
    /// without polling; `None` when the store is used by one process only.
    fn work_notifications(&self) -> Option<tokio::sync::broadcast::Receiver<String>> {
        None
    }

    /// Registers a flow definition under `name`: as `version` when given, else as the
    /// latest version plus one (or 1) unless the latest holds the same definition.
    async fn put_flow(
        &self,
        name: &str,
        version: Option<u32>,
        definition: serde_json::Value,
        now: Millis,
    ) -> Result<FlowOutcome>;

    /// One version of a flow, or its latest version when `version` is `None`.
    async fn get_flow(&self, name: &str, version: Option<u32>) -> Result<Option<FlowRecord>>;

    /// Every version of every flow, by name then version.
    async fn list_flows(&self) -> Result<Vec<FlowRecord>>;

    /// Writes runs (see [`RunWrite`]), each atomically with its tasks; outcomes in order.
    async fn write_runs(&self, writes: Vec<RunWrite>, now: Millis) -> Result<Vec<RunWriteOutcome>>;

    /// [`Store::write_runs`], calling `at_commit` with the outcomes once they
    /// are committed, as [`Store::submit_starting_then`] does.
    async fn write_runs_then(
        &self,
        writes: Vec<RunWrite>,
        now: Millis,
        at_commit: AtCommit<RunWriteOutcome>,
    ) -> Result<Vec<RunWriteOutcome>> {
        let outcomes = self.write_runs(writes, now).await?;
        at_commit(&outcomes);
        Ok(outcomes)
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>>;

    async fn list_runs(&self, filter: RunFilter) -> Result<RunPage>;

    /// Every run with `active` set, oldest first (what the engine resumes after a restart).
    async fn active_runs(&self) -> Result<Vec<RunRecord>>;
}
