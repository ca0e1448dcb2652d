//! The IO shell around `baton_core::workflow`: keeps active runs in memory, feeds
//! them the tasks that finish, stores each run together with the tasks it starts
//! (one store transaction, compare-and-set on the run's revision), and resumes
//! every active run after a restart. Also releases or cancels tasks submitted with
//! `dependencies` (seed 001) when their parents finish.

use crate::clock::now_ms;
use crate::dispatcher::Dispatcher;
use baton_core::lifecycle::Command;
use baton_core::task::Limits;
use baton_core::workflow::deps::{self, Decision};
use baton_core::workflow::engine::{self, Env, FlowRef, RunEvent, TaskOutcome};
use baton_core::workflow::{FlowDef, Run, RunCommand};
use baton_core::{Error, ErrorCode, Priority, Status, TaskId};
use baton_store::{
    Document, FlowOutcome, FlowRecord, ListFilter, RunFilter, RunPage, RunRecord, RunWrite,
    RunWriteOutcome, StartAt, Store, SubmitOutcome, TaskRecord, Update, UpdateOutcome,
};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// A run in memory: the state machine, its stored revision, and the outputs of its
/// completed tasks (read from the tasks, never stored in the run).
struct Slot {
    run: Run,
    revision: u64,
    /// Outputs of the run's completed tasks, when its flow reads outputs
    /// ([`FlowDef::reads_outputs`]); otherwise empty, and read from the store
    /// when asked for.
    outputs: HashMap<String, Value>,
    keeps_outputs: bool,
    /// Whether the stored record holds the definition in its own column.
    def_stored: bool,
    /// When the run is next reconciled, unless it moves before: a run that
    /// moves is looked at again only once it has been quiet for
    /// [`RECONCILE_QUIET`], and each reconcile that finds nothing doubles the
    /// wait (up to [`RECONCILE_MAX`]), so that a backlog of queued runs is not
    /// read again every round.
    reconcile_at: Instant,
    /// The wait before the next reconcile after one that finds nothing.
    reconcile_backoff: Duration,
    /// A round failed after it had changed the run in memory (an apply refused
    /// midway, a write that did not happen): the run is read back from the
    /// store ([`Engine::fresh`]) before anything uses it again. Cheaper than a
    /// copy of the run before every round, which only failures need.
    stale: bool,
}

impl Slot {
    /// A run as stored at `revision`, with no outputs yet.
    fn new(run: Run, revision: u64, def_stored: bool) -> Slot {
        Slot {
            keeps_outputs: run.def.reads_outputs(),
            run,
            revision,
            outputs: HashMap::new(),
            def_stored,
            reconcile_at: Instant::now() + RECONCILE_QUIET,
            reconcile_backoff: RECONCILE_QUIET,
            stale: false,
        }
    }

    /// The run moved: its next reconcile waits for a quiet spell again.
    fn moved(&mut self) {
        self.reconcile_backoff = RECONCILE_QUIET;
        self.reconcile_at = Instant::now() + RECONCILE_QUIET;
    }

    /// A reconcile found nothing to deliver: wait twice as long for the next.
    fn reconciled_in_vain(&mut self) {
        self.reconcile_backoff = (self.reconcile_backoff * 2).min(RECONCILE_MAX);
        self.reconcile_at = Instant::now() + self.reconcile_backoff;
    }
}

/// An active run held in memory, and whether it keeps its tasks' outputs (told
/// outside its lock, so that the finish hook does not copy an output for a run
/// that drops it).
struct Held {
    slot: Arc<tokio::sync::Mutex<Slot>>,
    keeps_outputs: bool,
}

impl Held {
    fn of(slot: Slot) -> Held {
        Held {
            keeps_outputs: slot.keeps_outputs,
            slot: Arc::new(tokio::sync::Mutex::new(slot)),
        }
    }
}

/// One round of a run's advance, between its planning and its write's outcome.
struct Round {
    cancel: Vec<TaskId>,
}

/// What a run was before it moved: whether it was active, and its events seen.
#[derive(Clone, Copy)]
struct Mark {
    active: bool,
    events: u64,
}

impl Mark {
    fn of(run: &Run) -> Mark {
        Mark {
            active: run.status.is_active(),
            events: events_seen(run),
        }
    }
}

/// Most runs one batch may start (each run also stores its first tasks in the same
/// transaction).
pub const MAX_BATCH_RUNS: usize = 1_000;

/// How long a watcher waits for a live event before it reads the run itself.
const WATCH_POLL: Duration = Duration::from_secs(2);

/// How often the engine looks for runs due a reconcile.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How long a run must have been quiet for its first reconcile. Every finish
/// reaches its run through the finish hook, so a reconcile is only the safety
/// net for one that did not (a replica that died between a task's end and its
/// run's write); a run queued behind a backlog is not read again and again.
const RECONCILE_QUIET: Duration = Duration::from_secs(5);
/// The longest a quiet active run goes without a reconcile.
const RECONCILE_MAX: Duration = Duration::from_secs(60);

pub struct Engine {
    store: Arc<dyn Store>,
    dispatcher: Arc<Dispatcher>,
    limits: Limits,
    slots: Mutex<HashMap<String, Held>>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    /// Live run events, for watchers (server-sent events, gRPC `WatchRun`).
    events: broadcast::Sender<LiveEvent>,
    /// parent task id -> waiting children.
    dependents: Mutex<HashMap<TaskId, Vec<TaskId>>>,
    /// Task types known to be (or not be) flow names, and when that was looked up.
    flow_names: Mutex<HashMap<String, (bool, Instant)>>,
}

/// How long a "this task type is (not) a flow" answer is trusted: a flow registered
/// on another replica becomes a task type here within this time.
const FLOW_NAME_TTL: Duration = Duration::from_secs(5);

/// Seed 000's flows of agents, registered at start unless a flow of that name
/// already exists. Ingestion runs one `data_ingest` task per input part, in
/// parallel; `data_analysis` merges what they found.
pub fn builtin_flows() -> Vec<(&'static str, Value)> {
    vec![
        (
            "report_generation",
            json!({"execution_mode": "sequential", "steps": [
                {"id": "data_ingest", "task_type": "data_ingest",
                 "map": {"over": "${input.inputs}"},
                 "input": {"inputs": ["${item}"], "metadata": "${input.metadata}"}},
                {"id": "data_analysis", "task_type": "data_analysis",
                 "dependencies": ["data_ingest"],
                 "input": {"ingested": "${steps.data_ingest.output}", "metadata": "${input.metadata}"}},
                {"id": "synthesis", "task_type": "synthesis", "dependencies": ["data_analysis"],
                 "input": {"analysis": "${steps.data_analysis.output}", "metadata": "${input.metadata}"}}
            ]}),
        ),
        (
            "real_time_monitoring",
            json!({"execution_mode": "sequential", "steps": [
                {"id": "video_detection", "task_type": "video_detection", "input": "${input}"},
                {"id": "alerting", "task_type": "alerting", "dependencies": ["video_detection"],
                 "input": {"frames": "${steps.video_detection.output.frames}", "rules": "${input.metadata}"}}
            ]}),
        ),
    ]
}

/// The stored record of a run: its state in `body`; its definition only when
/// `with_definition` (the first write, or the first after a run stored before
/// definitions had a column of their own); later writes keep the stored one.
fn record_of(run: &Run, revision: u64, with_definition: bool) -> Result<RunRecord, Error> {
    Ok(RunRecord {
        run_id: run.run_id.clone(),
        flow_name: run.flow.as_ref().map(|f| f.name.clone()),
        status: run.status.as_str().into(),
        active: run.status.is_active(),
        revision,
        created_at_ms: run.created_at_ms,
        updated_at_ms: run.updated_at_ms,
        body: Document::encode(&StoredRun { run })?,
        definition: with_definition.then(|| run.def.to_value()),
    })
}

/// The stored document of a run, encoded straight from the run.
#[derive(serde::Serialize)]
struct StoredRun<'a> {
    run: &'a Run,
}

/// The stored document of a run as read back; runs stored before definitions had
/// a column of their own carry it here.
#[derive(serde::Deserialize)]
struct LoadedRun {
    run: Run,
    #[serde(default)]
    definition: Option<Value>,
}

/// A stored run, and whether its definition is in the definition column (older
/// runs keep it in their document until their next write moves it).
fn load_run(record: &RunRecord) -> Result<(Run, bool), Error> {
    let loaded: LoadedRun = record
        .body
        .decode()
        .map_err(|e| Error::internal(format!("stored run {} unreadable: {e}", record.run_id)))?;
    let def = record
        .definition
        .as_ref()
        .or(loaded.definition.as_ref())
        .unwrap_or(&Value::Null);
    let run = Run::attach(loaded.run, FlowDef::reload(def)?)?;
    Ok((run, record.definition.is_some()))
}

/// What a client asks for when it starts a run.
pub struct StartRequest {
    pub run_id: Option<String>,
    pub flow: Option<(String, Option<u32>)>,
    pub definition: Option<Value>,
    pub input: Value,
    pub priority: Priority,
    pub on_failure: Option<baton_core::workflow::def::OnFailure>,
    pub execution_mode: Option<baton_core::ExecutionMode>,
}

/// The fields of a run request besides a definition's own.
const RUN_FIELDS: &[&str] = &[
    "run_id",
    "flow",
    "version",
    "definition",
    "input",
    "priority",
    "on_failure",
    "execution_mode",
];

impl StartRequest {
    /// Reads the body of `POST /api/v1/runs` (also each item of a batch, and gRPC's
    /// `StartRun`, which is turned into this JSON first): `{"flow": name, "version"?,
    /// "input"?, …}`, `{"definition": {...}, "input"?, …}`, or seed 002's workflow
    /// document as it is (`workflow_id`, `tasks`, …). The definition itself is
    /// validated when the run starts.
    pub fn from_json(body: &Value) -> Result<StartRequest, Error> {
        let obj = body
            .as_object()
            .ok_or_else(|| Error::invalid("send an object: {flow | definition, input}"))?;
        if obj.contains_key("tasks") || obj.contains_key("steps") {
            let mut definition = body.clone();
            if let Some(m) = definition.as_object_mut() {
                m.remove("run_id");
                m.remove("input");
            }
            return Ok(StartRequest {
                run_id: obj
                    .get("workflow_id")
                    .or_else(|| obj.get("run_id"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                flow: None,
                definition: Some(definition),
                input: obj.get("input").cloned().unwrap_or(Value::Null),
                priority: Priority::default(),
                on_failure: None,
                execution_mode: None,
            });
        }
        let problems: Vec<Value> = obj
            .keys()
            .filter(|k| !RUN_FIELDS.contains(&k.as_str()))
            .map(|k| json!({"field": k, "message": format!("is not a known field (known: {})", RUN_FIELDS.join(", "))}))
            .collect();
        if !problems.is_empty() {
            return Err(Error::invalid(format!(
                "{} unknown field(s) in the run request",
                problems.len()
            ))
            .with_details(json!({"problems": problems})));
        }
        let flow = match obj.get("flow") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some((s.clone(), version_field(obj.get("version"))?)),
            Some(_) => {
                return Err(
                    Error::invalid("flow must be the name of a registered flow").with_field("flow")
                )
            }
        };
        let priority = match obj.get("priority") {
            None | Some(Value::Null) => Priority::default(),
            Some(v) => Priority::from_json(v).map_err(|e| e.with_field("priority"))?,
        };
        let on_failure = match obj.get("on_failure") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<baton_core::workflow::def::OnFailure>(v.clone()).map_err(
                    |_| {
                        Error::invalid("on_failure must be fail_fast or continue")
                            .with_field("on_failure")
                    },
                )?,
            ),
        };
        let execution_mode = match obj.get("execution_mode") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<baton_core::ExecutionMode>(v.clone()).map_err(|_| {
                    Error::invalid("execution_mode must be one of sequential, parallel, hybrid")
                        .with_field("execution_mode")
                })?,
            ),
        };
        let run_id = match obj.get("run_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(Error::invalid("run_id must be a string").with_field("run_id")),
        };
        Ok(StartRequest {
            run_id,
            flow,
            definition: obj.get("definition").cloned(),
            input: obj.get("input").cloned().unwrap_or(Value::Null),
            priority,
            on_failure,
            execution_mode,
        })
    }
}

/// A flow's `version` field: absent, or a whole number from 1.
fn version_field(v: Option<&Value>) -> Result<Option<u32>, Error> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            match v.as_u64() {
                Some(n) if n >= 1 && n <= u32::MAX as u64 => Ok(Some(n as u32)),
                _ => Err(Error::invalid("version must be a whole number, at least 1")
                    .with_field("version")),
            }
        }
    }
}

/// What a client asks for when it registers a flow.
pub struct RegisterRequest {
    pub name: String,
    pub version: Option<u32>,
    pub definition: Value,
}

impl RegisterRequest {
    /// Reads the body of `POST /api/v1/flows`: `{"name", "version"?, "definition"}`,
    /// or a definition with its `name` (and `version`) at the top.
    pub fn from_json(body: &Value) -> Result<RegisterRequest, Error> {
        let obj = body
            .as_object()
            .ok_or_else(|| Error::invalid("send an object: {name, version?, definition}"))?;
        let (name, version, definition) = if let Some(def) = obj.get("definition") {
            if let Some(k) = obj
                .keys()
                .find(|k| !["name", "version", "definition"].contains(&k.as_str()))
            {
                return Err(Error::invalid(format!(
                    "{k} is not a known field (known: name, version, definition)"
                ))
                .with_field(k));
            }
            let name = obj
                .get("name")
                .and_then(Value::as_str)
                .or_else(|| def.get("name").and_then(Value::as_str));
            (
                name.map(str::to_string),
                obj.get("version").cloned(),
                def.clone(),
            )
        } else {
            let name = obj.get("name").and_then(Value::as_str).map(str::to_string);
            let mut def = body.clone();
            let version = def.as_object_mut().and_then(|m| m.remove("version"));
            (name, version, def)
        };
        let name = name.ok_or_else(|| Error::invalid("name is required").with_field("name"))?;
        Ok(RegisterRequest {
            name,
            version: version_field(version.as_ref())?,
            definition,
        })
    }
}

/// A run event as watchers receive it live.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    pub run_id: String,
    /// The event's number among all the run's events (see [`events_seen`]).
    pub seq: u64,
    pub event: RunEvent,
    /// The run's status once it has taken this event and the others it took with it.
    pub status: baton_core::workflow::RunStatus,
    /// The last of the events the run took together: `status` is its status after it.
    pub last: bool,
}

/// What a watcher of one run receives (see [`Engine::watch`]).
#[derive(Debug, Clone)]
pub enum Watched {
    Event(RunEvent),
    /// The watcher fell behind and missed this many events (of all runs).
    Lagged(u64),
    /// The run has finished, in this status; nothing follows.
    End(baton_core::workflow::RunStatus),
}

/// How many events a run has recorded in its life, the dropped ones included: the
/// next event's sequence number.
fn events_seen(run: &Run) -> u64 {
    run.events_dropped + run.events.len() as u64
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, dispatcher: Arc<Dispatcher>, limits: Limits) -> Arc<Engine> {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let engine = Arc::new(Engine {
            store,
            dispatcher: dispatcher.clone(),
            limits,
            slots: Mutex::new(HashMap::new()),
            finished_tx,
            events,
            dependents: Mutex::new(HashMap::new()),
            flow_names: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&engine);
        dispatcher.set_finish_hook(Box::new(move |record: &TaskRecord| {
            if let Some(engine) = weak.upgrade() {
                engine.task_finished(record);
            }
        }));
        tokio::spawn(Arc::clone(&engine).feed(finished_rx));
        engine
    }

    fn task_finished(&self, record: &TaskRecord) {
        let watched = record.spec.run_id.is_some()
            || self
                .dependents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&record.spec.task_id);
        if watched {
            // A run in memory that never reads an output is not sent one.
            let keeps_output = record.spec.run_id.as_deref().is_none_or(|run_id| {
                self.slots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(run_id)
                    .is_none_or(|h| h.keeps_outputs)
            });
            let _ = self
                .finished_tx
                .send(Finished::with_output(record, keeps_output));
        }
    }

    /// Runs this replica holds in memory. A run leaves as it ends here; a run
    /// another replica ended leaves at its next reconcile here.
    pub fn active_count(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.events.subscribe()
    }

    /// Delivers finished tasks to their runs and dependents: every run a batch
    /// moves is advanced, and all of them are stored in one store write.
    async fn feed(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Finished>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 4096).await > 0 {
            let mut by_run: HashMap<String, Vec<Finished>> = HashMap::new();
            let mut parents = Vec::new();
            for mut finished in batch.drain(..) {
                parents.push(finished.task_id.clone());
                if let Some(run_id) = finished.run_id.take() {
                    by_run.entry(run_id).or_default().push(finished);
                }
            }
            // A run another replica moved meanwhile is read back by its
            // conflict: its tasks are delivered again now, from the store.
            for run_id in self.deliver(by_run).await {
                if let Err(e) = self.reconcile(&run_id, true).await {
                    tracing::warn!(run_id = %run_id, error = %e, "could not advance run");
                }
            }
            self.parents_finished(parents).await;
        }
    }

    /// Advances each run by its finished tasks: one round per run, all the runs'
    /// writes in one `write_runs` call (so one writer operation, not one per run);
    /// a run with more to do after it (tasks found already finished) goes on alone.
    /// Returns the runs whose write met another writer's (see [`Engine::feed`]).
    async fn deliver(&self, by_run: HashMap<String, Vec<Finished>>) -> Vec<String> {
        let mut held = Vec::with_capacity(by_run.len());
        let mut ids: Vec<_> = by_run.into_iter().collect();
        // One lock order for every multi-run caller.
        ids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (run_id, records) in ids {
            match self.slot(&run_id).await {
                Ok(Some(slot)) => held.push((slot, records)),
                Ok(None) => {}
                Err(e) => tracing::warn!(run_id = %run_id, error = %e, "could not load run"),
            }
        }
        let mut guards = Vec::with_capacity(held.len());
        for (slot, records) in &mut held {
            let mut guard = slot.lock().await;
            if records.iter().any(|f| !guard.run.owns(f.task_id.as_str())) {
                // A task the run in memory does not know of: another replica
                // may have moved the run and started it. Read the run back.
                guard.stale = true;
            }
            match self.fresh(&mut guard).await {
                Ok(()) => guards.push((guard, records)),
                // Still stale: its next reconcile delivers these tasks again.
                Err(e) => {
                    tracing::warn!(run_id = %guard.run.run_id, error = %e, "could not reload run")
                }
            }
        }
        let now = now_ms();
        let mut planned = Vec::with_capacity(guards.len());
        let mut writes = Vec::with_capacity(guards.len());
        for (k, (slot, records)) in guards.iter_mut().enumerate() {
            let mut cmds = Vec::new();
            for f in records.drain(..) {
                if !slot.run.owns(f.task_id.as_str()) {
                    continue;
                }
                if let Some(out) = f.output.filter(|_| slot.keeps_outputs) {
                    slot.outputs.insert(f.outcome.task_id.clone(), out);
                }
                cmds.push(RunCommand::TaskFinished(f.outcome));
            }
            if cmds.is_empty() {
                continue;
            }
            let mark = Mark::of(&slot.run);
            match self.plan(slot, cmds, now) {
                Ok((write, round)) => {
                    writes.push(write);
                    planned.push((k, mark, round));
                }
                Err(e) => {
                    tracing::warn!(run_id = %slot.run.run_id, error = %e, "could not advance run")
                }
            }
        }
        if writes.is_empty() {
            return Vec::new();
        }
        let outcomes = match self.write_runs(writes, now).await {
            Ok(o) if o.len() == planned.len() => o,
            Ok(_) => {
                tracing::warn!(
                    "could not advance runs: the store answered the wrong number of outcomes"
                );
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not advance runs");
                Vec::new()
            }
        };
        if outcomes.is_empty() {
            // Nothing was stored: every run is read back from the store before
            // its next use (its reconcile delivers the tasks again).
            for (k, _, _) in planned {
                guards[k].0.stale = true;
            }
            return Vec::new();
        }
        let mut cancel = Vec::new();
        let mut conflicts = Vec::new();
        for ((k, mark, round), outcome) in planned.into_iter().zip(outcomes) {
            let slot = &mut *guards[k].0;
            if matches!(outcome, RunWriteOutcome::Conflict(_)) {
                conflicts.push(slot.run.run_id.clone());
            }
            match self.settle(slot, round, Some(outcome), &mut cancel) {
                Ok(more) if more.is_empty() => self.finish_apply(slot, mark, now),
                Ok(more) => match self.rounds(slot, more, now).await {
                    Ok(()) => self.finish_apply(slot, mark, now),
                    Err(e) => {
                        tracing::warn!(run_id = %slot.run.run_id, error = %e, "could not advance run")
                    }
                },
                Err(e) if conflicts.last() == Some(&slot.run.run_id) => {
                    tracing::debug!(run_id = %slot.run.run_id, error = %e, "run moved elsewhere; delivering again")
                }
                Err(e) => {
                    tracing::warn!(run_id = %slot.run.run_id, error = %e, "could not advance run")
                }
            }
        }
        drop(guards);
        self.cancel_tasks(cancel).await;
        conflicts
    }

    /// Stores runs with the tasks they start ([`Store::write_runs`]); those an
    /// idle agent can take start at once, in the same commit (see
    /// [`Dispatcher::reserve_starts`]), and are sent to it as soon as that
    /// commit is made, as a submit's are (`App::submit`).
    async fn write_runs(
        &self,
        mut writes: Vec<RunWrite>,
        now: u64,
    ) -> baton_store::Result<Vec<RunWriteOutcome>> {
        let specs: Vec<&baton_core::TaskSpec> =
            writes.iter().flat_map(|w| w.tasks.iter()).collect();
        let starts = self.dispatcher.reserve_starts(&specs);
        if starts.is_empty() {
            return self.store.write_runs(writes, now).await;
        }
        let mut starts = starts.into_iter();
        for w in &mut writes {
            w.starts = starts.by_ref().take(w.tasks.len()).collect();
        }
        let groups: Vec<Vec<Option<StartAt>>> = writes.iter().map(|w| w.starts.clone()).collect();
        self.dispatcher
            .write_and_send_at_commit(
                groups,
                |outcomes: &[RunWriteOutcome]| {
                    outcomes
                        .iter()
                        .map(|o| match o {
                            RunWriteOutcome::Written(tasks) => Some(tasks.as_slice()),
                            RunWriteOutcome::Conflict(_) => None,
                        })
                        .collect()
                },
                |at_commit| self.store.write_runs_then(writes, now, at_commit),
            )
            .await
    }

    /// Reads a stale run (see [`Slot::stale`]) back from the store.
    async fn fresh(&self, slot: &mut Slot) -> Result<(), Error> {
        if !slot.stale {
            return Ok(());
        }
        let run_id = slot.run.run_id.as_str();
        let record = self
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("run {run_id} not found")))?;
        (slot.run, slot.def_stored) = load_run(&record)?;
        slot.revision = record.revision;
        slot.stale = false;
        Ok(())
    }

    /// [`Engine::fresh`], and on a store shared with other replicas, the run
    /// read back anyway: another replica may have moved it since (a GET on
    /// any replica shows the run as stored).
    async fn fresh_for_reading(&self, slot: &mut Slot) -> Result<(), Error> {
        if !self.store.exclusive() {
            slot.stale = true;
        }
        self.fresh(slot).await
    }

    /// The in-memory slot of a run, loading it from the store if needed.
    async fn slot(&self, run_id: &str) -> Result<Option<Arc<tokio::sync::Mutex<Slot>>>, Error> {
        let cached = self.cached(run_id);
        if cached.is_some() {
            return Ok(cached);
        }
        let Some(record) = self.store.get_run(run_id).await? else {
            return Ok(None);
        };
        let (run, def_stored) = load_run(&record)?;
        let mut slot = Slot::new(run, record.revision, def_stored);
        if slot.keeps_outputs {
            slot.outputs = self.load_outputs(&slot.run).await?;
        }
        let held = Held::of(slot);
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Some(
            slots.entry(run_id.to_string()).or_insert(held).slot.clone(),
        ))
    }

    async fn load_outputs(&self, run: &Run) -> Result<HashMap<String, Value>, Error> {
        let mut outputs = HashMap::new();
        for id in run.completed_tasks() {
            if let Some(r) = self.store.get(&TaskId::from_trusted(id.clone())).await? {
                if let Some(out) = r.state.output {
                    outputs.insert(id, out);
                }
            }
        }
        Ok(outputs)
    }

    /// Applies commands, stores the run with the tasks it starts, cancels what it
    /// stops, and feeds back tasks that were already finished (cache hits).
    async fn apply_locked(&self, slot: &mut Slot, cmds: Vec<RunCommand>) -> Result<Run, Error> {
        let now = now_ms();
        let mark = Mark::of(&slot.run);
        self.rounds(slot, cmds, now).await?;
        self.finish_apply(slot, mark, now);
        Ok(slot.run.clone())
    }

    /// Rounds of apply-and-store until no command is left (tasks found finished
    /// when submitted come back as commands), at most 64.
    async fn rounds(&self, slot: &mut Slot, cmds: Vec<RunCommand>, now: u64) -> Result<(), Error> {
        let mut pending = cmds;
        for _ in 0..64 {
            let (write, round) = self.plan(slot, pending, now)?;
            let outcome = match self.write_runs(vec![write], now).await {
                Ok(mut o) => o.pop(),
                Err(e) => {
                    slot.stale = true;
                    return Err(e.into());
                }
            };
            let mut cancel = Vec::new();
            pending = self.settle(slot, round, outcome, &mut cancel)?;
            self.cancel_tasks(cancel).await;
            if pending.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Applies commands to a locked run in memory; the write that stores the
    /// result with the tasks it starts. On error the run is as it was.
    fn plan(
        &self,
        slot: &mut Slot,
        cmds: Vec<RunCommand>,
        now: u64,
    ) -> Result<(RunWrite, Round), Error> {
        let mut submit = Vec::new();
        let mut cancel = Vec::new();
        for cmd in cmds {
            let env = Env {
                now,
                outputs: &slot.outputs,
                default_timeout_ms: self.limits.default_timeout_ms,
                default_retry: &self.limits.default_retry,
            };
            match engine::apply(&mut slot.run, cmd, &env) {
                Ok(acts) => {
                    submit.extend(acts.submit);
                    cancel.extend(acts.cancel);
                }
                Err(e) => {
                    // Commands before it may have moved the run.
                    slot.stale = true;
                    return Err(e.into());
                }
            }
        }
        self.dispatcher.note_submitted(&submit);
        let record = match record_of(&slot.run, slot.revision + 1, !slot.def_stored) {
            Ok(r) => r,
            Err(e) => {
                slot.stale = true;
                return Err(e);
            }
        };
        let write = RunWrite {
            record,
            expected_revision: Some(slot.revision),
            tasks: submit,
            starts: Vec::new(),
        };
        Ok((write, Round { cancel }))
    }

    /// After a round's write: the run's new revision and the tasks to cancel, or
    /// back to what is stored on a conflict; the commands for tasks that were
    /// already finished when submitted (a cached step, a resubmission after a crash).
    fn settle(
        &self,
        slot: &mut Slot,
        round: Round,
        outcome: Option<RunWriteOutcome>,
        cancel: &mut Vec<TaskId>,
    ) -> Result<Vec<RunCommand>, Error> {
        match outcome {
            Some(RunWriteOutcome::Written(tasks)) => {
                count_submitted(&self.dispatcher, &tasks);
                slot.revision += 1;
                slot.def_stored = true;
                slot.moved();
                self.dispatcher.work_arrived(queued_types(&tasks));
                let mut pending = Vec::new();
                for t in tasks {
                    if let SubmitOutcome::Existing(r) = t {
                        if r.state.status.is_terminal() {
                            if let Some(out) =
                                r.state.output.as_ref().filter(|_| slot.keeps_outputs)
                            {
                                slot.outputs
                                    .insert(r.spec.task_id.as_str().to_string(), out.clone());
                            }
                            pending.push(RunCommand::TaskFinished(outcome_of(&r)));
                        }
                    }
                }
                cancel.extend(round.cancel);
                Ok(pending)
            }
            Some(RunWriteOutcome::Conflict(current)) => {
                // Another writer moved the run: reload it and let the caller retry.
                slot.stale = true;
                if let Some(rec) = current {
                    (slot.run, slot.def_stored) = load_run(&rec)?;
                    slot.revision = rec.revision;
                    slot.stale = false;
                }
                Err(Error::new(
                    ErrorCode::Unavailable,
                    "the run changed concurrently; try again",
                ))
            }
            None => {
                slot.stale = true;
                Err(Error::internal("the store answered no outcome"))
            }
        }
    }

    /// After a run moved: its events to watchers, its end counted, and a finished
    /// run let go of.
    fn finish_apply(&self, slot: &mut Slot, mark: Mark, now: u64) {
        self.publish(&slot.run, mark.events);
        if mark.active && !slot.run.status.is_active() {
            self.dispatcher.progress().end(&slot.run.run_id);
            let end = slot.run.finished_at_ms.unwrap_or(now);
            self.dispatcher.metrics().run_finished(
                slot.run.status.as_str(),
                end.saturating_sub(slot.run.created_at_ms),
            );
        }
        if !slot.run.status.is_active() {
            self.let_go(&slot.run.run_id);
        }
    }

    /// An ended run leaves memory.
    fn let_go(&self, run_id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id);
    }

    async fn cancel_tasks(&self, ids: Vec<TaskId>) {
        if ids.is_empty() {
            return;
        }
        let updates = ids
            .into_iter()
            .map(|task_id| Update {
                task_id,
                command: Command::Cancel {
                    reason: Some("cancelled by its workflow run".into()),
                },
            })
            .collect();
        self.apply_updates(updates, "cancel the tasks of a run")
            .await;
    }

    /// Applies task commands and carries out their effects; a store error is logged
    /// (the periodic reconcile and the next start try again).
    async fn apply_updates(&self, updates: Vec<Update>, what: &str) {
        match self.store.update(updates, now_ms()).await {
            Ok(outcomes) => {
                for o in outcomes {
                    if let UpdateOutcome::Applied { record, effects } = o {
                        self.dispatcher.handle_effects(&record, &effects);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not {what}"),
        }
    }

    /// Registers a flow definition (validated first).
    pub async fn register_flow(
        &self,
        name: &str,
        version: Option<u32>,
        definition: Value,
    ) -> Result<(FlowRecord, bool), Error> {
        baton_core::task::validate_task_type(name)
            .map_err(|m| Error::invalid(format!("flow name {m}")).with_field("name"))?;
        FlowDef::parse(&definition)?;
        match self
            .store
            .put_flow(name, version, definition, now_ms())
            .await?
        {
            FlowOutcome::Created(f) => Ok((f, true)),
            FlowOutcome::Existing(f) => Ok((f, false)),
            FlowOutcome::Conflict(f) => Err(Error::conflict(format!(
                "flow {} version {} already exists with another definition; register a new version",
                f.name, f.version
            ))),
        }
    }

    pub async fn get_flow(&self, name: &str, version: Option<u32>) -> Result<FlowRecord, Error> {
        self.store
            .get_flow(name, version)
            .await?
            .ok_or_else(|| match version {
                Some(v) => Error::not_found(format!("flow {name} has no version {v}")),
                None => Error::not_found(format!("flow {name} is not registered")),
            })
    }

    pub async fn list_flows(&self) -> Result<Vec<FlowRecord>, Error> {
        Ok(self.store.list_flows().await?)
    }

    /// Whether a flow of this name is registered (seed 000: a task type that is a
    /// flow). Answers are cached for [`FLOW_NAME_TTL`]; a store error means no.
    pub async fn is_flow(&self, name: &str) -> bool {
        let cached = self
            .flow_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .filter(|(_, at)| at.elapsed() < FLOW_NAME_TTL)
            .map(|(is, _)| *is);
        if let Some(is) = cached {
            return is;
        }
        let is = matches!(self.store.get_flow(name, None).await, Ok(Some(_)));
        let mut names = self.flow_names.lock().unwrap_or_else(|p| p.into_inner());
        if names.len() > 10_000 {
            names.clear();
        }
        names.insert(name.to_string(), (is, Instant::now()));
        is
    }

    /// Registers [`builtin_flows`] that are not registered yet.
    pub async fn register_builtin_flows(&self) -> Result<(), Error> {
        for (name, definition) in builtin_flows() {
            if self.store.get_flow(name, None).await?.is_none() {
                // Version 1 exactly: replicas starting together agree on it.
                match self.register_flow(name, Some(1), definition).await {
                    Ok(_) => {}
                    Err(e) if e.code == baton_core::ErrorCode::Conflict => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Starts a run. Idempotent by run id: the same id returns the existing run.
    pub async fn start(&self, req: StartRequest) -> Result<(Run, bool), Error> {
        self.start_many(vec![Ok(req)])
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::internal("no outcome for the run")))
    }

    /// Starts many runs: every item is checked on its own (a bad one gets its error
    /// and does not stop the others), a flow named by several items is read once,
    /// and all the runs are stored, each with its first tasks, in one store write.
    /// Outcomes are in the order of `items`; `Err` only when the store failed.
    pub async fn start_many(
        &self,
        items: Vec<Result<StartRequest, Error>>,
    ) -> Result<Vec<Result<(Run, bool), Error>>, Error> {
        let now = now_ms();
        let mut flows: HashMap<(String, Option<u32>), Result<FlowRecord, Error>> = HashMap::new();
        let mut out: Vec<Option<Result<(Run, bool), Error>>> = Vec::with_capacity(items.len());
        let mut prepared: Vec<(usize, Run, Vec<baton_core::TaskSpec>)> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let req = match item {
                Ok(req) => req,
                Err(e) => {
                    out.push(Some(Err(e)));
                    continue;
                }
            };
            let flow = match (&req.flow, &req.definition) {
                (Some((name, version)), None) => {
                    let key = (name.clone(), *version);
                    if !flows.contains_key(&key) {
                        let found = self.get_flow(name, *version).await;
                        flows.insert(key.clone(), found);
                    }
                    flows.get(&key)
                }
                _ => None,
            };
            match self.prepare(req, flow, now) {
                Ok((run, tasks)) => {
                    prepared.push((i, run, tasks));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        if !prepared.is_empty() {
            let mut runs = Vec::with_capacity(prepared.len());
            let mut writes = Vec::with_capacity(prepared.len());
            for (i, run, tasks) in prepared {
                writes.push(RunWrite {
                    record: record_of(&run, 1, true)?,
                    expected_revision: None,
                    tasks,
                    starts: Vec::new(),
                });
                runs.push((i, run));
            }
            for w in &writes {
                self.dispatcher.note_submitted(&w.tasks);
            }
            let outcomes = self.write_runs(writes, now).await?;
            if outcomes.len() != runs.len() {
                return Err(Error::internal(
                    "the store answered the wrong number of outcomes",
                ));
            }
            self.dispatcher
                .work_arrived(outcomes.iter().flat_map(|o| match o {
                    RunWriteOutcome::Written(tasks) => queued_types(tasks),
                    RunWriteOutcome::Conflict(_) => Vec::new(),
                }));
            for ((i, run), outcome) in runs.into_iter().zip(outcomes) {
                out[i] = Some(self.started(run, outcome, now));
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::internal("no outcome for the run"))))
            .collect())
    }

    /// [`Engine::start_many`] for a client's batch: not empty, at most
    /// `max_runs` items (and never more than [`MAX_BATCH_RUNS`]).
    pub async fn start_batch(
        &self,
        items: Vec<Result<StartRequest, Error>>,
        max_runs: usize,
    ) -> Result<Vec<Result<(Run, bool), Error>>, Error> {
        let max_runs = max_runs.clamp(1, MAX_BATCH_RUNS);
        if items.is_empty() {
            return Err(Error::invalid("runs must not be empty").with_field("runs"));
        }
        if items.len() > max_runs {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "a batch may hold at most {max_runs} runs, got {}",
                    items.len()
                ),
            )
            .with_field("runs"));
        }
        self.start_many(items).await
    }

    /// Builds a run and the tasks it starts with (no IO: `flow` was read before).
    fn prepare(
        &self,
        req: StartRequest,
        flow: Option<&Result<FlowRecord, Error>>,
        now: u64,
    ) -> Result<(Run, Vec<baton_core::TaskSpec>), Error> {
        let (mut def, flow) = match (&req.flow, &req.definition) {
            (Some(_), None) => {
                let f = match flow {
                    Some(Ok(f)) => f,
                    Some(Err(e)) => return Err(e.clone()),
                    None => return Err(Error::internal("the flow was not looked up")),
                };
                (
                    FlowDef::parse(&f.definition)?,
                    Some(FlowRef {
                        name: f.name.clone(),
                        version: f.version,
                    }),
                )
            }
            (None, Some(d)) => (FlowDef::parse(d)?, None),
            (Some(_), Some(_)) => {
                return Err(Error::invalid("give either flow or definition, not both"))
            }
            (None, None) => {
                return Err(Error::invalid(
                    "give a registered flow name (flow) or an inline definition",
                )
                .with_field("flow"))
            }
        };
        if let Some(mode) = req.execution_mode {
            if mode != def.execution_mode {
                let mut v = def.to_value();
                v["execution_mode"] = json!(mode);
                def = FlowDef::parse(&v)?;
            }
        }
        if let Some(f) = req.on_failure {
            def.on_failure = f;
        }
        let run_id = match req.run_id {
            Some(id) => TaskId::parse(id.clone()).map_err(|_| Error::invalid("run_id may not be empty, longer than 256 bytes, or contain whitespace or '/'").with_field("run_id"))?.into_string(),
            None => TaskId::generate().into_string(),
        };
        if run_id.contains(':') {
            return Err(Error::invalid("run_id may not contain ':'").with_field("run_id"));
        }
        let mut run = Run::new(run_id, def, flow, req.input, req.priority, now);
        let env_outputs = HashMap::new();
        let env = Env {
            now,
            outputs: &env_outputs,
            default_timeout_ms: self.limits.default_timeout_ms,
            default_retry: &self.limits.default_retry,
        };
        let acts = engine::apply(&mut run, RunCommand::Start, &env).map_err(Error::from)?;
        Ok((run, acts.submit))
    }

    /// After a new run's write: count it, hold it in memory, publish its events and
    /// feed back its cache hits. A run id that existed returns that run.
    fn started(&self, run: Run, outcome: RunWriteOutcome, now: u64) -> Result<(Run, bool), Error> {
        match outcome {
            RunWriteOutcome::Written(tasks) => {
                count_submitted(&self.dispatcher, &tasks);
                if !run.status.is_active() {
                    // Nothing to run: it ended as it started.
                    let end = run.finished_at_ms.unwrap_or(now);
                    self.dispatcher
                        .metrics()
                        .run_finished(run.status.as_str(), end.saturating_sub(run.created_at_ms));
                }
                if run.status.is_active() {
                    let held = Held::of(Slot::new(run.clone(), 1, true));
                    self.slots
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(run.run_id.clone(), held);
                }
                self.publish(&run, 0);
                // Cache hits: tasks that already finished reach the run like any other.
                for t in tasks {
                    if let SubmitOutcome::Existing(r) = t {
                        if r.state.status.is_terminal() {
                            let _ = self.finished_tx.send(Finished::of(&r));
                        }
                    }
                }
                Ok((run, true))
            }
            RunWriteOutcome::Conflict(Some(existing)) => Ok((load_run(&existing)?.0, false)),
            RunWriteOutcome::Conflict(None) => {
                Err(Error::internal("the store did not store the run"))
            }
        }
    }

    /// Sends a run's events from number `from` on (counted over the run's life, see
    /// [`events_seen`]) to the watchers.
    fn publish(&self, run: &Run, from: u64) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let seen = events_seen(run);
        let new = seen.saturating_sub(from).min(run.events.len() as u64) as usize;
        let first = run.events.len() - new;
        for (k, e) in run.events[first..].iter().enumerate() {
            let _ = self.events.send(LiveEvent {
                run_id: run.run_id.clone(),
                seq: seen - new as u64 + k as u64,
                event: e.clone(),
                status: run.status,
                last: k + 1 == new,
            });
        }
    }

    /// A run's events as a stream: those recorded so far, then live ones, then
    /// [`Watched::End`] once the run has finished. Errors if the run does not exist.
    /// A run that moves on another replica (no live events here) is read from the
    /// store every [`WATCH_POLL`] while it is quiet.
    pub async fn watch(
        self: &Arc<Self>,
        run_id: &str,
    ) -> Result<futures::stream::BoxStream<'static, Watched>, Error> {
        use futures::StreamExt;
        // Subscribe before reading, so nothing falls between the two; what the read
        // already holds is skipped in the live part by its sequence number.
        let live = self.subscribe();
        let run = self.run_only(run_id).await?;
        let seen = events_seen(&run);
        let head = futures::stream::iter(
            run.events
                .iter()
                .cloned()
                .map(Watched::Event)
                .collect::<Vec<_>>(),
        );
        if !run.status.is_active() {
            return Ok(head
                .chain(futures::stream::iter([Watched::End(run.status)]))
                .boxed());
        }
        struct Tail {
            rx: broadcast::Receiver<LiveEvent>,
            engine: Arc<Engine>,
            run_id: String,
            seen: u64,
            /// Events read from the run itself (after a lag or a quiet spell).
            pending: std::collections::VecDeque<RunEvent>,
            /// When to read the run itself if none of its events arrived by then
            /// (other runs' events do not count).
            poll_at: tokio::time::Instant,
            ended: Option<baton_core::workflow::RunStatus>,
            done: bool,
        }
        impl Tail {
            /// Catches up from the run itself: the events not seen yet, and its end.
            async fn catch_up(&mut self) {
                self.poll_at = tokio::time::Instant::now() + WATCH_POLL;
                let Ok(run) = self.engine.run_only(&self.run_id).await else {
                    return;
                };
                let now_seen = events_seen(&run);
                if now_seen > self.seen {
                    let new = (now_seen - self.seen).min(run.events.len() as u64) as usize;
                    self.pending
                        .extend(run.events[run.events.len() - new..].iter().cloned());
                    self.seen = now_seen;
                }
                if !run.status.is_active() {
                    self.ended = Some(run.status);
                }
            }
        }
        let tail = Tail {
            rx: live,
            engine: Arc::clone(self),
            run_id: run_id.to_string(),
            seen,
            pending: Default::default(),
            poll_at: tokio::time::Instant::now() + WATCH_POLL,
            ended: None,
            done: false,
        };
        let tail = futures::stream::unfold(tail, |mut t| async move {
            loop {
                if t.done {
                    return None;
                }
                if let Some(e) = t.pending.pop_front() {
                    return Some((Watched::Event(e), t));
                }
                if let Some(status) = t.ended.take() {
                    t.done = true;
                    return Some((Watched::End(status), t));
                }
                match tokio::time::timeout_at(t.poll_at, t.rx.recv()).await {
                    Ok(Ok(live)) if live.run_id == t.run_id => {
                        if live.seq < t.seen {
                            continue;
                        }
                        t.seen = live.seq + 1;
                        t.poll_at = tokio::time::Instant::now() + WATCH_POLL;
                        if live.last && !live.status.is_active() {
                            t.ended = Some(live.status);
                        }
                        return Some((Watched::Event(live.event), t));
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                        // What was missed may include the end: look at the run itself.
                        t.catch_up().await;
                        return Some((Watched::Lagged(n), t));
                    }
                    Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                    Err(_quiet) => t.catch_up().await,
                }
            }
        });
        Ok(head.chain(tail).boxed())
    }

    /// The run's slot if this replica holds it in memory.
    fn cached(&self, run_id: &str) -> Option<Arc<tokio::sync::Mutex<Slot>>> {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .map(|h| h.slot.clone())
    }

    /// The run as stored; not found if there is none.
    async fn stored_run(&self, run_id: &str) -> Result<Run, Error> {
        let record = self
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("run {run_id} not found")))?;
        Ok(load_run(&record)?.0)
    }

    /// A run without its outputs (from memory, else the store).
    async fn run_only(&self, run_id: &str) -> Result<Run, Error> {
        let cached = self.cached(run_id);
        if let Some(slot) = cached {
            let mut s = slot.lock().await;
            self.fresh_for_reading(&mut s).await?;
            return Ok(s.run.clone());
        }
        self.stored_run(run_id).await
    }

    pub async fn get(&self, run_id: &str) -> Result<(Run, HashMap<String, Value>), Error> {
        let cached = self.cached(run_id);
        if let Some(slot) = cached {
            let mut s = slot.lock().await;
            self.fresh_for_reading(&mut s).await?;
            if s.keeps_outputs {
                return Ok((s.run.clone(), s.outputs.clone()));
            }
            let run = s.run.clone();
            drop(s);
            let outputs = self.load_outputs(&run).await?;
            return Ok((run, outputs));
        }
        let run = self.stored_run(run_id).await?;
        let outputs = self.load_outputs(&run).await?;
        Ok((run, outputs))
    }

    pub async fn list(&self, filter: RunFilter) -> Result<RunPage, Error> {
        Ok(self.store.list_runs(filter).await?)
    }

    /// Pause, resume, cancel or retry.
    pub async fn command(&self, run_id: &str, cmd: RunCommand) -> Result<Run, Error> {
        for _ in 0..3 {
            let slot = match self.slot(run_id).await? {
                Some(s) => s,
                None => return Err(Error::not_found(format!("run {run_id} not found"))),
            };
            let mut s = slot.lock().await;
            self.fresh(&mut s).await?;
            if !s.run.status.is_active() && !matches!(cmd, RunCommand::Retry) {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!("the run is {}", s.run.status.as_str()),
                ));
            }
            let retrying = matches!(cmd, RunCommand::Retry);
            match self.apply_locked(&mut s, vec![cmd.clone()]).await {
                Ok(run) => {
                    if retrying && run.status.is_active() {
                        self.slots.lock().unwrap_or_else(|p| p.into_inner()).insert(
                            run_id.to_string(),
                            Held {
                                slot: slot.clone(),
                                keeps_outputs: s.keeps_outputs,
                            },
                        );
                    }
                    return Ok(run);
                }
                Err(e) if e.code == ErrorCode::Unavailable => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::unavailable("the run kept changing; try again"))
    }

    /// After a restart: load every active run, and catch up with tasks that finished
    /// while nobody listened. Also picks up waiting tasks with dependencies.
    pub async fn recover(self: &Arc<Self>) -> Result<(), Error> {
        let active = self.store.active_runs().await?;
        let n = active.len();
        for record in active {
            let run_id = record.run_id.clone();
            if let Err(e) = self.reconcile(&run_id, true).await {
                tracing::warn!(run_id = %run_id, error = %e, "could not resume run");
            }
        }
        if n > 0 {
            tracing::info!(runs = n, "resumed active workflow runs");
        }
        let mut cursor = None;
        loop {
            let page = self
                .store
                .list(ListFilter {
                    status: Some(Status::Waiting),
                    limit: 1000,
                    cursor,
                    ..Default::default()
                })
                .await?;
            for r in &page.tasks {
                self.watch_dependencies(r).await;
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        Ok(())
    }

    /// Feeds a run every task that finished without it hearing. Unless
    /// `always` (at recovery), only a run that is due is checked (see
    /// [`Slot::reconcile_at`]): one whose tasks keep finishing hears of them anyway.
    async fn reconcile(&self, run_id: &str, always: bool) -> Result<(), Error> {
        // A run that left memory since the round began has ended: it is not
        // read back only to find nothing open.
        let slot = if always {
            self.slot(run_id).await?
        } else {
            self.cached(run_id)
        };
        let Some(slot) = slot else {
            return Ok(());
        };
        let open = {
            let mut s = slot.lock().await;
            if !always && Instant::now() < s.reconcile_at {
                return Ok(());
            }
            self.fresh_for_reading(&mut s).await?;
            if !s.run.status.is_active() {
                // Another replica ended it: this copy is let go of.
                self.dispatcher.progress().end(run_id);
                self.let_go(run_id);
                return Ok(());
            }
            // Pushed back now; a delivery below resets it.
            s.reconciled_in_vain();
            s.run.open_tasks()
        };
        let mut done = Vec::new();
        for id in open {
            if let Some(r) = self.store.get(&TaskId::from_trusted(id)).await? {
                if r.state.status.is_terminal() {
                    done.push(Finished::of(&r));
                }
            }
        }
        if !done.is_empty() {
            // A conflict here waits for the run's next reconcile.
            self.deliver(HashMap::from([(run_id.to_string(), done)]))
                .await;
        }
        Ok(())
    }

    /// Periodically reconciles active runs (tasks that ended through lease expiry or
    /// recovery never pass through a result) until `stop`.
    pub async fn maintain(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                _ = stop.changed() => return,
            }
            let ids: Vec<String> = self
                .slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect();
            for id in ids {
                if let Err(e) = self.reconcile(&id, false).await {
                    tracing::debug!(run_id = %id, error = %e, "reconcile failed");
                }
            }
        }
    }

    /// Seed 001: a task stored as waiting is released or cancelled once its parents end.
    pub async fn watch_dependencies(&self, record: &TaskRecord) {
        if record.state.status != Status::Waiting {
            return;
        }
        {
            let mut deps = self.dependents.lock().unwrap_or_else(|p| p.into_inner());
            for p in &record.spec.dependencies {
                let list = deps.entry(p.clone()).or_default();
                if !list.contains(&record.spec.task_id) {
                    list.push(record.spec.task_id.clone());
                }
            }
        }
        self.decide_waiting(vec![record.spec.clone()]).await;
    }

    async fn parents_finished(&self, parents: Vec<TaskId>) {
        let children: Vec<TaskId> = {
            let mut deps = self.dependents.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = HashSet::new();
            parents
                .iter()
                .flat_map(|p| deps.remove(p).unwrap_or_default())
                .filter(|c| seen.insert(c.clone()))
                .collect()
        };
        let mut specs = Vec::new();
        for c in children {
            if let Ok(Some(r)) = self.store.get(&c).await {
                if r.state.status == Status::Waiting {
                    specs.push(r.spec);
                }
            }
        }
        self.decide_waiting(specs).await;
    }

    async fn decide_waiting(&self, specs: Vec<baton_core::TaskSpec>) {
        let mut updates = Vec::new();
        for spec in specs {
            let mut statuses = Vec::new();
            for p in &spec.dependencies {
                let st = self
                    .store
                    .get(p)
                    .await
                    .ok()
                    .flatten()
                    .map(|r| r.state.status);
                statuses.push((p.clone(), st));
            }
            let command = match deps::decide(&statuses) {
                Decision::Wait => continue,
                Decision::Release => Command::Release,
                Decision::Cancel(reason) => Command::Cancel {
                    reason: Some(reason),
                },
            };
            updates.push(Update {
                task_id: spec.task_id.clone(),
                command,
            });
        }
        if updates.is_empty() {
            return;
        }
        self.apply_updates(updates, "release waiting tasks").await;
    }
}

/// The task types of submitted tasks that may wait in a queue: all but those
/// created running (started at once) and flow runs' ids.
fn queued_types(outcomes: &[SubmitOutcome]) -> Vec<&str> {
    let mut types: Vec<&str> = Vec::new();
    for o in outcomes {
        let r = match o {
            SubmitOutcome::Created(r) if r.state.status == Status::Running => continue,
            SubmitOutcome::Created(r) | SubmitOutcome::Existing(r) | SubmitOutcome::Conflict(r) => {
                r
            }
            SubmitOutcome::FlowRun(_) => continue,
        };
        if !types.contains(&r.spec.task_type.as_str()) {
            types.push(&r.spec.task_type);
        }
    }
    types
}

/// Counts the tasks a run write newly stored as submitted.
fn count_submitted(dispatcher: &Dispatcher, outcomes: &[SubmitOutcome]) {
    let mut created: Vec<(&str, u64)> = Vec::new();
    for o in outcomes {
        if let SubmitOutcome::Created(r) = o {
            let t = r.spec.task_type.as_str();
            match created.iter_mut().find(|c| c.0 == t) {
                Some(c) => c.1 += 1,
                None => created.push((t, 1)),
            }
        }
    }
    dispatcher.metrics().tasks_submitted(created);
}

/// What the engine needs of a finished task, taken from its record where it
/// finished (instead of a copy of the whole record with its inputs and events).
struct Finished {
    task_id: TaskId,
    /// The run it is a step of, if any.
    run_id: Option<String>,
    output: Option<Value>,
    outcome: TaskOutcome,
}

impl Finished {
    fn of(r: &TaskRecord) -> Finished {
        Finished::with_output(r, true)
    }

    fn with_output(r: &TaskRecord, output: bool) -> Finished {
        Finished {
            task_id: r.spec.task_id.clone(),
            run_id: r.spec.run_id.clone(),
            output: r.state.output.as_ref().filter(|_| output).cloned(),
            outcome: outcome_of(r),
        }
    }
}

fn outcome_of(r: &TaskRecord) -> TaskOutcome {
    let duration_ms = r
        .state
        .events
        .iter()
        .rev()
        .find(|e| e.kind == baton_core::lifecycle::EventKind::Started)
        .and_then(|s| r.state.finished_at_ms.map(|f| f.saturating_sub(s.at_ms)));
    TaskOutcome {
        task_id: r.spec.task_id.as_str().to_string(),
        status: r.state.status,
        error: r
            .state
            .error
            .as_ref()
            .map(|e| format!("{}: {}", e.kind, e.message)),
        attempts: r.state.attempt,
        agent_id: r
            .state
            .events
            .iter()
            .rev()
            .find_map(|e| e.agent_id.as_ref().map(|a| a.as_str().to_string())),
        duration_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> Run {
        let def = FlowDef::parse(&json!({"steps": [
            {"id": "a", "task_type": "echo"},
            {"id": "b", "task_type": "echo", "dependencies": ["a"]}
        ]}))
        .unwrap();
        Run::new("r".into(), def, None, json!({"x": 1}), Priority::Normal, 5)
    }

    #[test]
    fn the_definition_is_written_once_and_read_back() {
        let run = chain();
        let first = record_of(&run, 1, true).unwrap();
        assert_eq!(first.body.to_value().get("definition"), None);
        let later = record_of(&run, 2, false).unwrap();
        assert_eq!(later.definition, None);
        let stored = RunRecord {
            definition: first.definition.clone(),
            ..later
        };
        let (back, def_stored) = load_run(&stored).unwrap();
        assert!(def_stored);
        assert_eq!(back.to_value(), run.to_value());
        assert_eq!(back.def.steps.len(), 2);
    }

    #[test]
    fn a_run_stored_with_its_definition_in_the_document_still_loads() {
        let run = chain();
        let mut legacy = record_of(&run, 3, false).unwrap();
        let mut body = legacy.body.to_value();
        body["definition"] = run.def.to_value();
        legacy.body = body.into();
        let (back, def_stored) = load_run(&legacy).unwrap();
        assert!(!def_stored, "the next write must store the definition");
        assert_eq!(back.to_value(), run.to_value());
        assert_eq!(back.def.steps[1].id, "b");
    }
}
