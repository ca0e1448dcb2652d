//! The dispatcher: connected agent sessions, their free slots, and the loop that
//! hands queued tasks to agents. It also keeps leases alive, enforces
//! `timeout_ms`, notices silent agents, and promotes retries whose wait is over.
//! All durable decisions go through the store; what lives here is only what this
//! process knows about its own connections.
//!
//! Two paths hand out work. The fast path lets each free agent claim a batch of
//! its task type in one store call, least-loaded agents first: no per-task
//! decision, which is what bulk throughput needs. Task types whose tasks ask for
//! more (a routing strategy, a concurrency or rate-limit key, a cost budget, a
//! deadline, a type policy from the config) take the scheduled path: a window of
//! queued tasks is read without claiming ([`Store::peek_queued`]), the scheduler
//! ([`crate::scheduler::Sched::decide`]) picks an agent for each, and those are
//! claimed by id (refused if another replica took them first). A task whose
//! only needs are a concurrency or rate-limit key stays on the fast path while
//! its keys have room: the room is checked and taken as it is claimed
//! ([`crate::scheduler::Sched::admit_keys`]), so keys that never bind cost no
//! per-task look. A task that needs a decision, or whose key is at its limit,
//! but was claimed in bulk is handed back (`HandBack`, the attempt not counted,
//! never sent) and its type switches path for a while, where keys take turns.

use crate::clock::now_ms;
use crate::metrics::{self, Metrics};
use crate::scheduler::{Need, Placement, Sched, Slot};
use baton_core::lifecycle::{Command, Effect, Failure, FailureKind};
use baton_core::sched::breaker::{Outcome, Phase};
use baton_core::sched::flow::{RunningTask, ShedPolicy};
use baton_core::{AgentId, Millis, Priority, Status, TaskId, TaskSpec};
use baton_proto::v1;
use baton_store::{
    ClaimRequest, Selected, SelectedOutcome, StartAt, Store, SubmitOutcome, TaskRecord, Update,
    UpdateOutcome,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

/// Most tasks handed to one agent in one claim.
const MAX_CLAIM: usize = 512;

/// Dispatch rounds (claims, looks) in flight at once. A round mostly waits for
/// its claim to commit; letting the next one plan, read and decide meanwhile
/// keeps the agents' freed slots from idling behind that commit, and the store
/// writer commits the claims that queue up together.
const MAX_ROUNDS: usize = 4;

/// How long dispatching pauses after a round the store failed.
const STORE_BACKOFF_MS: u64 = 200;

pub type Outbound = mpsc::UnboundedSender<Result<v1::ServerMessage, tonic::Status>>;

#[derive(Debug, Clone)]
pub struct Options {
    pub max_workers: usize,
    pub lease_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub agent_timeout_ms: u64,
    /// This replica's name in the leadership election (unique per process).
    pub replica_id: String,
    /// How long the singleton duties' role lasts without renewal.
    pub leader_lease_ms: u64,
    /// Routing, breakers and flow control.
    pub policies: crate::scheduler::Policies,
}

struct InFlight {
    attempt: u32,
    task_type: Arc<str>,
    /// The workflow run this task is a step of: its events go to the run too.
    run_id: Option<Arc<str>>,
    /// The attempt's trace span, when tracing is on; ends when this is dropped.
    span: Option<crate::telemetry::AttemptSpan>,
    assigned_at: Millis,
    timeout_at: Millis,
    priority: Priority,
    concurrency_key: Option<String>,
}

struct Session {
    agent_id: AgentId,
    task_types: Vec<String>,
    version: String,
    labels: BTreeMap<String, String>,
    max_concurrent: usize,
    in_flight: HashMap<TaskId, InFlight>,
    reserved: usize,
    /// Where the next claim starts looking among `task_types` (round-robin).
    next_type: usize,
    draining: bool,
    tx: Outbound,
    connected_at: Millis,
    last_heartbeat: Millis,
    completed: u64,
    failed: u64,
}

impl Session {
    fn free(&self) -> usize {
        if self.draining {
            return 0;
        }
        self.max_concurrent
            .saturating_sub(self.in_flight.len() + self.reserved)
    }
    fn load(&self) -> f64 {
        (self.in_flight.len() + self.reserved) as f64 / self.max_concurrent.max(1) as f64
    }
}

struct State {
    sessions: HashMap<String, Session>,
    /// Sessions serving each task type.
    by_type: HashMap<String, Vec<String>>,
    sched: Sched,
    /// Per scheduled task type: the work generation and slot releases seen when
    /// nothing could be placed, and until when not to look again unless either
    /// changes.
    sched_idle: HashMap<String, (u64, u64, Millis)>,
    /// Slots or keys freed so far (a change that may let held work go).
    releases: u64,
    /// Per scheduled type: tasks the last look read but did not place.
    sched_left: HashMap<String, usize>,
    /// When each fast-path type last had its queue head checked for preemption.
    preempt_checked: HashMap<String, Millis>,
    /// Tasks held (queued, retrying, waiting, running), from the store's counts
    /// plus what this replica accepted since.
    held: u64,
    /// Which session holds each in-flight task.
    holders: HashMap<TaskId, String>,
    /// Task types that may have queued tasks, with a generation bumped on every new
    /// arrival so that an empty claim does not hide work that arrived meanwhile.
    has_work: HashMap<String, u64>,
    /// In flight plus reserved, across sessions.
    running: usize,
    next_wake: Option<Millis>,
    /// When the scheduled path wants another look (a rate limit refills).
    sched_wake: Option<Millis>,
    /// Scheduled types with a look reading or deciding: one at a time per type,
    /// so two looks never decide over the same window.
    looking: HashSet<String>,
    /// Per scheduled type: the tasks placed by a look whose claim has not
    /// returned yet. The next look leaves them out of its window (they still
    /// read as queued) instead of placing them twice.
    claiming: HashMap<String, HashSet<TaskId>>,
    /// No dispatching before this (the store failed a round).
    backoff_until: Millis,
}

impl State {
    fn new(sched: Sched) -> Self {
        Self {
            sessions: HashMap::new(),
            by_type: HashMap::new(),
            sched,
            sched_idle: HashMap::new(),
            releases: 0,
            sched_left: HashMap::new(),
            preempt_checked: HashMap::new(),
            held: 0,
            holders: HashMap::new(),
            has_work: HashMap::new(),
            running: 0,
            next_wake: None,
            sched_wake: None,
            looking: HashSet::new(),
            claiming: HashMap::new(),
            backoff_until: 0,
        }
    }

    /// An attempt stopped holding its slot (finished, failed, cancelled, stopped).
    fn released(&mut self, f: &InFlight) {
        if let Some(k) = &f.concurrency_key {
            self.sched.release_key(k);
        }
        self.releases += 1;
    }
}

/// Results taken from one frame, waiting to be made durable.
pub struct PendingResults {
    acks: Vec<v1::ResultAck>,
    /// Taken by the first try to record them.
    updates: Vec<Update>,
    /// The results the updates were made from, to make them again should the
    /// store fail (cheaper than a copy of every output kept just in case).
    results: Vec<v1::Result>,
    /// Where each update's ack sits in `acks`.
    positions: Vec<usize>,
    tx: Outbound,
}

impl PendingResults {
    fn remake_updates(&self) -> impl Iterator<Item = Update> + '_ {
        self.results.iter().map(|r| Update {
            task_id: TaskId::from_trusted(r.task_id.clone()),
            command: command_of(r),
        })
    }
}

/// The command an agent's result stands for.
fn command_of(r: &v1::Result) -> Command {
    match &r.outcome {
        Some(v1::result::Outcome::Success(ok)) => match parse_output(&ok.output_json) {
            Ok(output) => Command::Succeed {
                attempt: r.attempt,
                output,
            },
            Err(msg) => Command::Fail {
                attempt: r.attempt,
                failure: Failure::new(FailureKind::Permanent, msg),
            },
        },
        Some(v1::result::Outcome::Failure(f)) => {
            let kind = match v1::FailureKind::try_from(f.kind).unwrap_or(v1::FailureKind::Retryable)
            {
                v1::FailureKind::Permanent => FailureKind::Permanent,
                v1::FailureKind::Timeout => FailureKind::Timeout,
                v1::FailureKind::Retryable => FailureKind::Retryable,
            };
            let mut failure = Failure::new(
                kind,
                if f.message.is_empty() {
                    "the handler failed".to_string()
                } else {
                    f.message.clone()
                },
            );
            failure.retry_after_ms = (f.retry_after_ms > 0).then_some(f.retry_after_ms);
            Command::Fail {
                attempt: r.attempt,
                failure,
            }
        }
        None => Command::Fail {
            attempt: r.attempt,
            failure: Failure::new(
                FailureKind::Retryable,
                "the agent sent a result with no outcome",
            ),
        },
    }
}

/// What an agent is, as the API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AgentInfo {
    pub agent_id: String,
    pub session_id: String,
    pub task_types: Vec<String>,
    pub version: String,
    pub max_concurrent: usize,
    pub in_flight: usize,
    pub draining: bool,
    pub labels: BTreeMap<String, String>,
    pub connected_at: String,
    pub last_heartbeat: String,
    pub completed: u64,
    pub failed: u64,
    /// Seed 004's descriptor, as the agent declared it.
    pub agent_type: String,
    pub capabilities: Vec<String>,
    pub service_types: Vec<String>,
    pub endpoint: String,
    pub tags: Vec<String>,
    pub location: Option<String>,
    pub cost_factor: f64,
    pub weight: f64,
    /// 0..1 from heartbeat freshness, error rate and latency.
    pub health: f64,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    /// The load the agent last reported.
    pub cpu_usage: f64,
    pub error_rate: f64,
    pub response_time_ms: f64,
    #[serde(skip)]
    pub connected_at_ms: Millis,
    #[serde(skip)]
    pub last_heartbeat_ms: Millis,
}

/// Called with every task that reaches a terminal status.
pub type FinishHook = Box<dyn Fn(&TaskRecord) + Send + Sync>;

pub struct Dispatcher {
    store: Arc<dyn Store>,
    opts: Options,
    state: Mutex<State>,
    wake: Notify,
    waiters: Waiters,
    finish_hook: std::sync::OnceLock<FinishHook>,
    leader: crate::leader::Leader,
    metrics: Arc<Metrics>,
    progress: crate::progress::Hub,
    /// Outputs that claimed tasks' inputs refer to, read before assignment.
    outputs: crate::input_refs::Outputs,
    /// Orders a refresh of `held` from the store's counts against this
    /// replica's submits: a submit holds it shared from its admission to its
    /// `held_added`, a refresh exclusively. Without it, a refresh that read the
    /// counts after a submit's commit but before its `held_added` counted that
    /// submit twice (and one that read them before the commit but set them
    /// after `held_added` counted it not at all).
    held_gate: tokio::sync::RwLock<()>,
}

/// How often a fast-path type whose agents are all busy has its queue head
/// checked for a task urgent enough to preempt.
const PREEMPT_CHECK_MS: u64 = 200;

/// How many tasks of a look's window of `len` the next look must read besides
/// its free slots: those the decision held back (keys, limits, routing). When
/// the placements took every free slot, those are the tasks skipped before the
/// last one placed (the tasks after it were not reached); otherwise, every task
/// not placed was held.
fn held_ahead(len: usize, placements: &[Placement], free_slots: usize) -> usize {
    if placements.len() < free_slots {
        return len - placements.len();
    }
    // Indexes are distinct, so all placements but the last are before it.
    match placements.iter().map(|p| p.index).max() {
        Some(last) => last + 1 - placements.len(),
        None => 0,
    }
}

#[derive(Default)]
struct Plan {
    claims: Vec<PlannedClaim>,
    scheduled: Vec<Look>,
    preempt_checks: Vec<String>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.claims.is_empty() && self.scheduled.is_empty() && self.preempt_checks.is_empty()
    }
}

/// A scheduled-path type to look at: how many queued tasks to read, leaving
/// out those an earlier round is still claiming.
struct Look {
    task_type: String,
    window: usize,
    skip: Vec<TaskId>,
    generation: u64,
}

struct PlannedClaim {
    session_id: String,
    agent_id: AgentId,
    task_type: Arc<str>,
    n: usize,
    generation: u64,
}

impl Dispatcher {
    pub fn new(store: Arc<dyn Store>, opts: Options, metrics: Arc<Metrics>) -> Arc<Self> {
        let leader = crate::leader::Leader::new(
            store.clone(),
            opts.replica_id.clone(),
            opts.leader_lease_ms,
        );
        let registry_opts = baton_core::sched::registry::Options {
            heartbeat_interval_ms: opts.heartbeat_interval_ms,
            deregister_after_ms: opts.agent_timeout_ms.max(opts.heartbeat_interval_ms + 1),
            ..Default::default()
        };
        let sched = Sched::new(opts.policies.clone(), registry_opts, now_ms())
            .expect("policies and registry options are validated with the config");
        Arc::new(Self {
            leader,
            store,
            opts,
            state: Mutex::new(State::new(sched)),
            wake: Notify::new(),
            waiters: Mutex::new(HashMap::new()),
            finish_hook: std::sync::OnceLock::new(),
            metrics,
            progress: crate::progress::Hub::default(),
            outputs: crate::input_refs::Outputs::default(),
            held_gate: tokio::sync::RwLock::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// This replica's part in the election for the singleton duties.
    pub fn leader(&self) -> &crate::leader::Leader {
        &self.leader
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where the events agents emit during attempts are relayed to clients.
    pub fn progress(&self) -> &crate::progress::Hub {
        &self.progress
    }

    /// Marks task types as having queued work and wakes the dispatch loop.
    pub fn work_arrived<'a>(&self, task_types: impl IntoIterator<Item = &'a str>) {
        {
            let mut st = self.lock();
            for t in task_types {
                *st.has_work.entry(t.to_string()).or_insert(0) += 1;
            }
        }
        self.wake.notify_one();
    }

    /// Resolves with the task's record (as committed) when it finishes; dropped
    /// with the dispatcher. Dropped before that, it leaves the table of waiters.
    pub fn waiter(&self, task_id: &TaskId) -> Waiter<'_> {
        Waiter::new(&self.waiters, task_id)
    }

    /// A task ended, by a result or by an attempt failed in bulk (an agent
    /// lost, a lease expired): wakes the requests waiting for it, lets its
    /// event topic go, and tells the finish hook (runs and dependents).
    fn finished(&self, record: &TaskRecord) {
        let task_id = &record.spec.task_id;
        self.progress.end(task_id.as_str());
        wake_waiters(&self.waiters, record);
        if let Some(hook) = self.finish_hook.get() {
            hook(record);
        }
    }

    /// Calls `hook` with every task that reaches a terminal status (the workflow
    /// engine and dependency tracking listen here). Set once, at start.
    pub fn set_finish_hook(&self, hook: FinishHook) {
        let _ = self.finish_hook.set(hook);
    }

    /// Carries out the effects of applied commands.
    pub fn handle_effects(&self, record: &TaskRecord, effects: &[Effect]) {
        self.handle_effects_batch(std::slice::from_ref(&(record, effects)));
    }

    /// [`Dispatcher::handle_effects`] for many records, with the metrics of the
    /// batch recorded at once.
    fn handle_effects_batch(&self, applied: &[(&TaskRecord, &[Effect])]) {
        let mut finished = Vec::new();
        for (record, effects) in applied {
            for effect in effects.iter() {
                match effect {
                    Effect::Finished(status) => {
                        log_finished(record, *status);
                        trace_finished(record, *status);
                        finished.push(finished_of(record, *status))
                    }
                    Effect::WakeAt(ready_at) if record.state.status == Status::RetryWait => {
                        tracing::debug!(
                            task_id = %record.spec.task_id,
                            run_id = record.spec.run_id.as_deref(),
                            agent_id = record.state.agent_id.as_ref().map(|a| a.as_str()),
                            attempt = record.state.attempt,
                            ready_at_ms = ready_at,
                            "attempt failed; retry scheduled"
                        );
                        self.metrics.retries(&record.spec.task_type, 1)
                    }
                    _ => {}
                }
            }
        }
        // Counted before anyone waiting for these tasks is woken, so that a client
        // that saw a task end sees it in the metrics too.
        self.metrics.tasks_finished(now_ms(), &finished);
        for (record, effects) in applied {
            self.carry_out(record, effects);
        }
    }

    fn carry_out(&self, record: &TaskRecord, effects: &[Effect]) {
        let task_id = &record.spec.task_id;
        let task_type = record.spec.task_type.as_str();
        for effect in effects {
            match effect {
                Effect::Finished(_) => self.finished(record),
                Effect::WakeAt(at) => {
                    let mut st = self.lock();
                    st.next_wake = Some(st.next_wake.map_or(*at, |w| w.min(*at)));
                }
                Effect::Ready => self.work_arrived([task_type]),
                Effect::CancelOnAgent { attempt, .. } => self.cancel_on_agent(task_id, *attempt),
            }
        }
    }

    fn cancel_on_agent(&self, task_id: &TaskId, attempt: u32) {
        let mut st = self.lock();
        let Some(session_id) = st.holders.get(task_id).cloned() else {
            return;
        };
        let removed = st.sessions.get_mut(&session_id).and_then(|s| {
            if s.in_flight
                .get(task_id)
                .is_some_and(|f| f.attempt == attempt)
            {
                s.in_flight.remove(task_id).map(|f| (f, s.tx.clone()))
            } else {
                None
            }
        });
        if let Some((f, tx)) = removed {
            st.released(&f);
            st.holders.remove(task_id);
            st.running = st.running.saturating_sub(1);
            let _ = tx.send(Ok(cancels(vec![(task_id.clone(), attempt)])));
            drop(st);
            self.wake.notify_one();
        }
    }

    /// Adds a connected agent under its session id, with the descriptor it
    /// declared (into the registry, for discovery and routing).
    pub fn register(
        &self,
        session_id: String,
        reg: &v1::Register,
        descriptor: baton_core::sched::registry::Descriptor,
        tx: Outbound,
    ) -> Result<(), baton_core::Error> {
        let now = now_ms();
        let agent_id = descriptor.agent_id.clone();
        let session = Session {
            agent_id,
            task_types: reg.task_types.clone(),
            version: reg.version.clone(),
            labels: reg
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_concurrent: reg.max_concurrent as usize,
            in_flight: HashMap::new(),
            reserved: 0,
            next_type: 0,
            draining: false,
            tx,
            connected_at: now,
            last_heartbeat: now,
            completed: 0,
            failed: 0,
        };
        {
            let mut st = self.lock();
            st.sched.on_register(descriptor, now)?;
            for t in &session.task_types {
                st.by_type
                    .entry(t.clone())
                    .or_default()
                    .push(session_id.clone());
            }
            st.sessions.insert(session_id, session);
            st.releases += 1;
        }
        self.wake.notify_one();
        Ok(())
    }

    pub fn heartbeat(self: &Arc<Self>, session_id: &str, hb: &v1::Heartbeat) {
        let now = now_ms();
        let mut lost = Vec::new();
        {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(s) = st.sessions.get_mut(session_id) else {
                return;
            };
            s.last_heartbeat = now;
            let _ = st
                .sched
                .registry
                .heartbeat(&s.agent_id, crate::scheduler::load_of(hb), now);
            // An attempt assigned well before this heartbeat that the agent does not
            // report is lost (the agent restarted its process, or dropped it).
            let reported: std::collections::HashSet<(&str, u32)> = hb
                .in_flight
                .iter()
                .map(|a| (a.task_id.as_str(), a.attempt))
                .collect();
            let grace = 2 * self.opts.heartbeat_interval_ms;
            for (task_id, f) in &s.in_flight {
                if now.saturating_sub(f.assigned_at) > grace
                    && !reported.contains(&(task_id.as_str(), f.attempt))
                {
                    lost.push((task_id.clone(), f.attempt));
                }
            }
        }
        if !lost.is_empty() {
            let failure = Failure::new(
                FailureKind::AgentLost,
                "the agent no longer reports this attempt",
            );
            self.fail_attempts(session_id, lost, failure);
        }
    }

    pub fn drain(&self, session_id: &str) {
        if let Some(s) = self.lock().sessions.get_mut(session_id) {
            s.draining = true;
        }
    }

    /// Removes a session and fails its in-flight attempts (counted) so they run again.
    pub async fn disconnect(&self, session_id: &str, reason: &str) {
        let removed = {
            let mut st = self.lock();
            let st = &mut *st;
            let removed = st.sessions.remove(session_id);
            if let Some(s) = &removed {
                let n = s.in_flight.len() + s.reserved;
                for (task_id, f) in &s.in_flight {
                    st.holders.remove(task_id);
                    st.released(f);
                }
                st.running = st.running.saturating_sub(n);
                for t in &s.task_types {
                    if let Some(list) = st.by_type.get_mut(t) {
                        list.retain(|id| id != session_id);
                        if list.is_empty() {
                            st.by_type.remove(t);
                        }
                    }
                }
                // The agent leaves the registry with its last session here.
                if !st.sessions.values().any(|o| o.agent_id == s.agent_id) {
                    st.sched.on_deregister(&s.agent_id);
                }
            }
            removed
        };
        let Some(session) = removed else { return };
        tracing::info!(agent_id = %session.agent_id, session_id, in_flight = session.in_flight.len(), reason, "agent disconnected");
        let now = now_ms();
        let failure = Failure::new(
            FailureKind::AgentLost,
            format!("agent {} disconnected: {reason}", session.agent_id),
        );
        match self.store.release_owner(session_id, failure, now).await {
            Ok(ids) => self.after_release(ids).await,
            Err(e) => {
                tracing::warn!(session_id, error = %e, "could not release the attempts of a lost agent; their leases will expire")
            }
        }
        self.wake.notify_one();
    }

    /// After attempts were failed in bulk: wake retries and notify terminal ones.
    async fn after_release(&self, ids: Vec<TaskId>) {
        if ids.is_empty() {
            return;
        }
        self.refresh_wake().await;

        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(Some(rec)) = self.store.get(&id).await {
                records.push(rec);
            }
        }
        let mut finished = Vec::new();
        for rec in &records {
            match rec.state.status {
                s if s.is_terminal() => {
                    trace_finished(rec, s);
                    finished.push(finished_of(rec, s))
                }
                Status::RetryWait | Status::Queued => self.metrics.retries(&rec.spec.task_type, 1),
                _ => {}
            }
        }
        // Counted before the waiters wake, as in `handle_effects_batch`.
        self.metrics.tasks_finished(now_ms(), &finished);
        for rec in &records {
            if rec.state.status.is_terminal() {
                self.finished(rec);
            }
        }
    }

    /// Tasks held, from the store's counts (what load shedding compares with
    /// the capacity).
    async fn refresh_held(&self) {
        let _submits_settled = self.held_gate.write().await;
        if let Ok(counts) = self.store.counts().await {
            let held = ["queued", "running", "retry_wait", "waiting"]
                .iter()
                .filter_map(|s| counts.by_status.get(*s))
                .sum();
            self.lock().held = held;
        }
    }

    async fn refresh_wake(&self) {
        if let Ok(next) = self.store.next_wake().await {
            let mut st = self.lock();
            st.next_wake = match (st.next_wake, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }

    /// Fails specific attempts held by a session (timeouts, lost attempts).
    fn fail_attempts(
        self: &Arc<Self>,
        session_id: &str,
        attempts: Vec<(TaskId, u32)>,
        failure: Failure,
    ) {
        let mut to_fail = Vec::new();
        {
            let mut st = self.lock();
            let mut n = 0;
            let st = &mut *st;
            let now = now_ms();
            if let Some(s) = st.sessions.get_mut(session_id) {
                for (id, attempt) in attempts {
                    if s.in_flight.get(&id).is_some_and(|f| f.attempt == attempt) {
                        if let Some(f) = s.in_flight.remove(&id) {
                            if let Some(k) = &f.concurrency_key {
                                st.sched.release_key(k);
                            }
                            let outcome = Outcome::from_failure(failure.kind);
                            let phase = st.sched.on_outcome(
                                &s.agent_id,
                                outcome,
                                now.saturating_sub(f.assigned_at),
                                now,
                            );
                            self.breaker_changed(&s.agent_id, phase);
                        }
                        s.failed += 1;
                        to_fail.push((id, attempt));
                        n += 1;
                    }
                }
                if !to_fail.is_empty() {
                    let msg = cancels(to_fail.clone());
                    let _ = s.tx.send(Ok(msg));
                }
            }
            st.releases += 1;
            for (id, _) in &to_fail {
                st.holders.remove(id);
            }
            st.running = st.running.saturating_sub(n);
        }
        if to_fail.is_empty() {
            return;
        }
        self.wake.notify_one();
        let this = self.clone();
        tokio::spawn(async move { this.fail_in_store(to_fail, failure).await });
    }

    /// Fails attempts in the store (fenced by attempt) and carries out the effects.
    async fn fail_in_store(&self, attempts: Vec<(TaskId, u32)>, failure: Failure) {
        let updates: Vec<Update> = attempts
            .into_iter()
            .map(|(task_id, attempt)| Update {
                task_id,
                command: Command::Fail {
                    attempt,
                    failure: failure.clone(),
                },
            })
            .collect();
        self.apply_updates(
            updates,
            "could not record failed attempts; their leases will expire",
        )
        .await;
    }

    /// Applies attempt updates (failures, hand-backs) and carries out the
    /// effects of those that applied; a store failure is logged with `on_error`
    /// (the attempts' leases then expire and the leader re-queues them).
    async fn apply_updates(&self, updates: Vec<Update>, on_error: &str) {
        match self.store.update(updates, now_ms()).await {
            Ok(outcomes) => {
                let applied: Vec<(TaskRecord, Vec<Effect>)> = outcomes
                    .into_iter()
                    .filter_map(|o| match o {
                        UpdateOutcome::Applied { record, effects } => Some((record, effects)),
                        _ => None,
                    })
                    .collect();
                let refs: Vec<(&TaskRecord, &[Effect])> =
                    applied.iter().map(|(r, e)| (r, e.as_slice())).collect();
                self.handle_effects_batch(&refs);
            }
            Err(e) => tracing::warn!(error = %e, "{on_error}"),
        }
    }

    /// Takes results sent by an agent: frees their slots at once and prepares the
    /// store updates. A result is refused unless this session holds that attempt.
    /// [`Dispatcher::record_results`] makes them durable and acknowledges them.
    pub fn accept_results(
        &self,
        session_id: &str,
        results: Vec<v1::Result>,
    ) -> Option<PendingResults> {
        let mut acks = Vec::with_capacity(results.len());
        let mut updates = Vec::with_capacity(results.len());
        let mut kept = Vec::with_capacity(results.len());
        let mut positions = Vec::with_capacity(results.len());
        let (tx, spans, changed) = {
            let mut st = self.lock();
            let st = &mut *st;
            let s = st.sessions.get_mut(session_id)?;
            let mut freed = 0;
            let now = now_ms();
            let mut timer: Option<(Arc<str>, metrics::HistogramHandle)> = None;
            let mut spans = Vec::new();
            let mut changed = Vec::new();
            for mut r in results {
                let task_id = TaskId::from_trusted(r.task_id.clone());
                let held = s
                    .in_flight
                    .get(&task_id)
                    .is_some_and(|f| f.attempt == r.attempt);
                if !held {
                    acks.push(ack(&r.task_id, r.attempt, Some(("stale_attempt", "this agent does not hold that attempt (it timed out, was cancelled, or was re-assigned)"))));
                    continue;
                }
                let mut span = None;
                let mut attempt_started = None;
                if let Some(mut f) = s.in_flight.remove(&task_id) {
                    span = f.span.take();
                    attempt_started = Some(f.assigned_at);
                    if let Some(k) = &f.concurrency_key {
                        st.sched.release_key(k);
                    }
                    let handle = match &timer {
                        Some((t, h)) if *t == f.task_type => h,
                        _ => {
                            let h = self.metrics.execution_time(&f.task_type);
                            &timer.insert((f.task_type.clone(), h)).1
                        }
                    };
                    handle.observe(now.saturating_sub(f.assigned_at));
                }
                st.holders.remove(&task_id);
                freed += 1;
                match &r.outcome {
                    Some(v1::result::Outcome::Success(_)) => s.completed += 1,
                    Some(v1::result::Outcome::Failure(_)) => s.failed += 1,
                    None => {}
                }
                let command = command_of(&r);
                let outcome = match &command {
                    Command::Fail { failure, .. } => Outcome::from_failure(failure.kind),
                    _ => Outcome::Success,
                };
                let took = attempt_started.map_or(0, |at| now.saturating_sub(at));
                let phase = st.sched.on_outcome(&s.agent_id, outcome, took, now);
                if phase.is_some() {
                    changed.push((s.agent_id.clone(), phase));
                }
                if let Some(span) = span {
                    let error = match &command {
                        Command::Fail { failure, .. } => Some(failure.message.clone()),
                        _ => None,
                    };
                    spans.push((span, std::mem::take(&mut r.traceparent), error));
                }
                positions.push(acks.len());
                acks.push(ack(&r.task_id, r.attempt, None));
                updates.push(Update { task_id, command });
                kept.push(r);
            }
            st.running = st.running.saturating_sub(freed);
            st.releases += 1;
            (s.tx.clone(), spans, changed)
        };
        for (agent, phase) in changed {
            self.breaker_changed(&agent, phase);
        }
        // Ended outside the state lock: exporting is not the dispatcher's hot path.
        for (mut span, agent_traceparent, error) in spans {
            if !agent_traceparent.is_empty() {
                span.link_agent(&agent_traceparent);
            }
            span.end(error.as_deref());
        }
        self.wake.notify_one();
        Some(PendingResults {
            acks,
            updates,
            results: kept,
            positions,
            tx,
        })
    }

    /// Relays the events an agent emitted during its attempts to the clients
    /// watching those tasks (and their runs). Fenced like results: an event is
    /// dropped unless this session holds that attempt now, and so is one whose kind
    /// or data breaks the rules of [`baton_core::progress`]. Never acknowledged.
    pub fn accept_progress(&self, session_id: &str, events: Vec<v1::ProgressEvent>) {
        let mut held = Vec::with_capacity(events.len());
        {
            let st = self.lock();
            let Some(s) = st.sessions.get(session_id) else {
                return;
            };
            for e in events {
                let task_id = TaskId::from_trusted(e.task_id.clone());
                match s.in_flight.get(&task_id) {
                    Some(f) if f.attempt == e.attempt => held.push((e, f.run_id.clone())),
                    _ => tracing::debug!(
                        session_id,
                        task_id = %e.task_id,
                        attempt = e.attempt,
                        "event for an attempt this agent does not hold, dropped"
                    ),
                }
            }
        }
        for (e, run_id) in held {
            let data = match parse_event(&e) {
                Ok(data) => data,
                Err(reason) => {
                    tracing::debug!(session_id, task_id = %e.task_id, attempt = e.attempt, reason = %reason, "event dropped");
                    continue;
                }
            };
            self.progress
                .publish(&e.task_id, &e.task_id, e.attempt, &e.kind, &data);
            if let Some(run_id) = run_id.filter(|r| **r != *e.task_id) {
                self.progress
                    .publish(&run_id, &e.task_id, e.attempt, &e.kind, &data);
            }
        }
    }

    /// Records accepted results in one store call, however many frames they came
    /// in, and sends each frame's acknowledgements once they are durable.
    pub async fn record_results(&self, session_id: &str, mut batch: Vec<PendingResults>) {
        let mut updates: Vec<Update> = batch
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.updates))
            .collect();
        if !updates.is_empty() {
            // Results the store could not take are tried again while the agent is
            // connected (it would resend them only after a reconnect); a result
            // already recorded by an attempt whose answer was lost is refused as
            // stale the second time, which the agent treats as done.
            let mut delay = Duration::from_millis(100);
            let recorded = loop {
                match self
                    .store
                    .update(std::mem::take(&mut updates), now_ms())
                    .await
                {
                    Ok(outcomes) => break Ok(outcomes),
                    Err(e) if self.lock().sessions.contains_key(session_id) => {
                        tracing::warn!(session_id, error = %e, retry_in_ms = delay.as_millis() as u64, "could not record results; trying again");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                        updates = batch
                            .iter()
                            .flat_map(PendingResults::remake_updates)
                            .collect();
                    }
                    Err(e) => break Err(e),
                }
            };
            match recorded {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    let mut applied = Vec::new();
                    for pending in &mut batch {
                        for pos in pending.positions.iter().copied() {
                            let Some(o) = outcomes.next() else { break };
                            let acks = &mut pending.acks;
                            match o {
                                UpdateOutcome::Applied { record, effects } => {
                                    applied.push((record, effects))
                                }
                                UpdateOutcome::Refused(r) => {
                                    let e: baton_core::Error = r.into();
                                    acks[pos].accepted = false;
                                    acks[pos].error_code = e.code.as_str().into();
                                    acks[pos].message = e.message;
                                }
                                UpdateOutcome::NotFound => {
                                    acks[pos].accepted = false;
                                    acks[pos].error_code = "not_found".into();
                                    acks[pos].message = "no such task".into();
                                }
                            }
                        }
                    }
                    let refs: Vec<(&TaskRecord, &[Effect])> =
                        applied.iter().map(|(r, e)| (r, e.as_slice())).collect();
                    self.handle_effects_batch(&refs);
                }
                Err(e) => {
                    // Not durable and the agent is gone: it sends them again when it
                    // reconnects, here or to another replica.
                    tracing::warn!(session_id, error = %e, "could not record results");
                    return;
                }
            }
        }
        for pending in batch {
            let _ = pending.tx.send(Ok(v1::ServerMessage {
                msg: Some(v1::server_message::Msg::Acks(v1::ResultAcks {
                    acks: pending.acks,
                })),
            }));
        }
    }

    /// Logs a breaker that changed phase and updates its gauge.
    fn breaker_changed(&self, agent: &AgentId, phase: Option<Phase>) {
        let Some(phase) = phase else { return };
        let agent_type = self
            .lock()
            .sched
            .registry
            .get(agent)
            .map(|a| a.descriptor.agent_type.clone())
            .unwrap_or_default();
        match phase {
            Phase::Open => {
                tracing::warn!(agent_id = %agent, agent_type, "circuit breaker opened: the agent is out of routing")
            }
            _ => {
                tracing::info!(agent_id = %agent, agent_type, phase = phase.as_str(), "circuit breaker changed")
            }
        }
        let gauge = match phase {
            Phase::Closed => 0,
            Phase::HalfOpen => 1,
            Phase::Open => 2,
        };
        self.metrics.set_breaker_state(&agent_type, gauge);
    }

    /// Tasks held now, the capacity and the shedding policy; `None` when
    /// shedding is off (capacity 0).
    pub fn held_load(&self) -> Option<(u64, u64, ShedPolicy)> {
        let p = &self.opts.policies;
        (p.capacity > 0).then(|| (self.lock().held, p.capacity, p.shed))
    }

    /// Held by a submit from before its admission until after its
    /// [`Dispatcher::held_added`], so that a refresh of the held count sees the
    /// submit either wholly before or wholly after; `None` when shedding is off.
    pub async fn held_gate(&self) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        if self.opts.policies.capacity == 0 {
            return None;
        }
        Some(self.held_gate.read().await)
    }

    /// Newly stored tasks count as held until the next refresh from the store.
    pub fn held_added(&self, n: u64) {
        self.lock().held += n;
    }

    /// Submissions that need per-task decisions (more than room in their keys)
    /// switch their type to the scheduled path before their work is announced.
    pub fn note_submitted(&self, specs: &[TaskSpec]) {
        let decided: Vec<&str> = specs
            .iter()
            .filter(|spec| crate::scheduler::need_of(spec) == Need::Decision)
            .map(|spec| spec.task_type.as_str())
            .collect();
        if decided.is_empty() {
            return;
        }
        let mut st = self.lock();
        let now = now_ms();
        for task_type in decided {
            st.sched.mark_scheduled(task_type, now);
        }
    }

    /// For tasks about to be submitted: which start at once on a free slot
    /// ([`baton_store::StartAt`]), so that they skip the queue and a claim's
    /// commit. Only a task the fast path would claim as it is (no dependencies,
    /// no per-task decision, no input filled in at dispatch) of a type with
    /// nothing queued here, so that none overtakes queued work; within the
    /// batch, higher priorities get the free slots first. Each start reserves
    /// its slot until [`Dispatcher::started`] is told how the submit went.
    pub fn reserve_starts(&self, specs: &[&TaskSpec]) -> Vec<Option<StartAt>> {
        let now = now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        let mut budget = self.opts.max_workers.saturating_sub(st.running);
        if budget == 0 || now < st.backoff_until || st.sessions.is_empty() {
            return Vec::new();
        }
        let mut order: Vec<usize> = (0..specs.len())
            .filter(|&i| {
                let spec = &specs[i];
                spec.dependencies.is_empty()
                    && !st.has_work.contains_key(&spec.task_type)
                    && !st.sched.is_scheduled(&spec.task_type, now)
                    && !crate::scheduler::needs_decision(spec)
                    && !spec
                        .metadata
                        .contains_key(baton_core::workflow::refs::INPUT_REFS)
            })
            .collect();
        if order.is_empty() {
            return Vec::new();
        }
        order.sort_by_key(|&i| (std::cmp::Reverse(specs[i].priority.rank()), i));
        let lease_deadline_ms = now + self.opts.lease_ms;
        let mut starts: Vec<Option<StartAt>> = vec![None; specs.len()];
        // Per type: its sessions with a free slot whose breaker is closed (a
        // half-open breaker's probe is left to the claim path, which counts it).
        let mut candidates: HashMap<&str, Vec<String>> = HashMap::new();
        for i in order {
            if budget == 0 {
                break;
            }
            let task_type = specs[i].task_type.as_str();
            let ids = candidates.entry(task_type).or_insert_with(|| {
                st.by_type
                    .get(task_type)
                    .into_iter()
                    .flatten()
                    .filter(|id| {
                        st.sessions.get(*id).is_some_and(|s| {
                            s.free() > 0
                                && st
                                    .sched
                                    .admits_agent(&s.agent_id, now)
                                    .is_some_and(|cap| cap > 1)
                        })
                    })
                    .cloned()
                    .collect()
            });
            let Some((k, id)) = ids
                .iter()
                .enumerate()
                .filter_map(|(k, id)| st.sessions.get(id).map(|s| (k, id, s)))
                .filter(|(_, _, s)| s.free() > 0)
                .min_by(|a, b| a.2.load().total_cmp(&b.2.load()))
                .map(|(k, id, _)| (k, id.clone()))
            else {
                ids.clear();
                continue;
            };
            let Some(s) = st.sessions.get_mut(&id) else {
                ids.swap_remove(k);
                continue;
            };
            s.reserved += 1;
            st.running += 1;
            budget -= 1;
            starts[i] = Some(StartAt {
                agent_id: s.agent_id.clone(),
                lease_owner: id,
                lease_deadline_ms,
            });
        }
        if starts.iter().all(Option::is_none) {
            return Vec::new();
        }
        starts
    }

    /// Runs a store write that stores tasks already started
    /// ([`Dispatcher::reserve_starts`]) with a commit hook, and sends those
    /// tasks to their agents from that hook, while the write still waits for
    /// durability. `groups[k]` are the starts of the tasks of the write's `k`th
    /// outcome, and `tasks_of` gives each outcome's task outcomes (`None`: none
    /// created). A write that never commits gives the reservations back.
    pub async fn write_and_send_at_commit<O, R, W>(
        &self,
        groups: Vec<Vec<Option<StartAt>>>,
        tasks_of: for<'o> fn(&'o [O]) -> Vec<Option<&'o [SubmitOutcome]>>,
        write: impl FnOnce(baton_store::AtCommit<O>) -> W,
    ) -> R
    where
        O: 'static,
        W: std::future::Future<Output = R>,
    {
        let (committed_tx, committed) = oneshot::channel();
        let picks = groups.clone();
        let at_commit: baton_store::AtCommit<O> = Box::new(move |outcomes| {
            let tasks = tasks_of(outcomes);
            let records: Vec<Vec<Option<SubmitOutcome>>> = picks
                .iter()
                .enumerate()
                .map(|(k, starts)| match tasks.get(k).copied().flatten() {
                    Some(tasks) => started_records(starts, tasks),
                    None => Vec::new(),
                })
                .collect();
            let _ = committed_tx.send(records);
        });
        let send = async {
            // Never committed: the reservations are released all the same.
            let records = committed.await.ok();
            let pairs = groups.iter().enumerate().flat_map(|(k, starts)| {
                let kept = records.as_ref().and_then(|r| r.get(k)).map(Vec::as_slice);
                start_records(starts, kept)
            });
            self.started(pairs).await;
        };
        let (out, ()) = tokio::join!(write(at_commit), send);
        out
    }

    /// After a submit that asked for starts ([`Dispatcher::reserve_starts`]),
    /// given each start with its task's outcome (`None` when the submit
    /// failed): the reservations are given back, and each task that was
    /// created running is sent to its agent.
    pub async fn started<'a>(
        &self,
        starts: impl IntoIterator<Item = (&'a StartAt, Option<&'a SubmitOutcome>)>,
    ) {
        let now = now_ms();
        let mut by_session: BTreeMap<&str, Vec<baton_store::Claimed>> = BTreeMap::new();
        let mut orphans = Vec::new();
        {
            let mut st = self.lock();
            let st = &mut *st;
            for (start, outcome) in starts {
                st.running = st.running.saturating_sub(1);
                if let Some(s) = st.sessions.get_mut(&start.lease_owner) {
                    s.reserved = s.reserved.saturating_sub(1);
                }
                let Some(SubmitOutcome::Created(record)) = outcome else {
                    continue;
                };
                let state = &record.state;
                if state.status != Status::Running
                    || state.lease_owner.as_deref() != Some(start.lease_owner.as_str())
                {
                    continue;
                }
                let claimed = baton_store::Claimed {
                    spec: record.spec.clone(),
                    attempt: state.attempt,
                };
                if st.sessions.contains_key(&start.lease_owner) {
                    by_session
                        .entry(start.lease_owner.as_str())
                        .or_default()
                        .push(claimed);
                } else {
                    orphans.push((claimed.spec.task_id, claimed.attempt));
                }
            }
            for (session_id, claimed) in by_session {
                let Some(s) = st.sessions.get_mut(session_id) else {
                    orphans.extend(claimed.into_iter().map(|c| (c.spec.task_id, c.attempt)));
                    continue;
                };
                let mut assignments = Vec::with_capacity(claimed.len());
                // Tasks of one submit mostly share a type: one name and one
                // count per run of them.
                let mut task_type: Arc<str> = Arc::from("");
                let mut run = 0;
                for c in &claimed {
                    if *task_type != *c.spec.task_type {
                        if run > 0 {
                            self.metrics.tasks_scheduled(&task_type, run);
                        }
                        task_type = c.spec.task_type.as_str().into();
                        run = 0;
                    }
                    run += 1;
                    let traced = if crate::telemetry::enabled() {
                        crate::telemetry::start_attempt(
                            c.spec.task_id.as_str(),
                            &task_type,
                            c.attempt,
                            s.agent_id.as_str(),
                        )
                    } else {
                        None
                    };
                    assignments.push(fly(
                        s,
                        &mut st.holders,
                        Flown {
                            session_id,
                            task_type: &task_type,
                            concurrency_key: None,
                        },
                        c,
                        traced,
                        now,
                    ));
                }
                if run > 0 {
                    self.metrics.tasks_scheduled(&task_type, run);
                }
                st.running += assignments.len();
                send_assignments(s, assignments);
            }
        }
        self.give_back_orphans(orphans).await;
    }

    /// Attempts claimed for an agent that left before they were sent: back to
    /// the queue now (not counted), rather than when their leases expire.
    async fn give_back_orphans(&self, orphans: Vec<(TaskId, u32)>) {
        if orphans.is_empty() {
            return;
        }
        // Never sent: back to the queue, the attempt not counted.
        self.hand_back(
            orphans
                .into_iter()
                .map(|(task_id, attempt)| (task_id, attempt, BACK_AGENT_LEFT))
                .collect(),
        )
        .await;
    }

    /// The connected agents.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let now = now_ms();
        let st = self.lock();
        let mut out: Vec<AgentInfo> = st
            .sessions
            .iter()
            .map(|(id, s)| agent_info(&st.sched, id, s, now))
            .collect();
        out.sort_by(|a, b| {
            a.agent_id
                .cmp(&b.agent_id)
                .then(a.session_id.cmp(&b.session_id))
        });
        out
    }

    /// Seed 004's discovery: agents matching the query, best first (same
    /// location, then health, then load).
    pub fn discover(
        &self,
        query: &baton_core::sched::registry::Query,
    ) -> Vec<(baton_core::sched::registry::Candidate, AgentInfo)> {
        let now = now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        // The registry's load is refreshed from the sessions first.
        for s in st.sessions.values() {
            st.sched
                .registry
                .set_in_flight(&s.agent_id, s.in_flight.len() as u32);
        }
        let by_agent: HashMap<&AgentId, (&String, &Session)> = st
            .sessions
            .iter()
            .map(|(id, s)| (&s.agent_id, (id, s)))
            .collect();
        st.sched
            .registry
            .discover(query, now)
            .into_iter()
            .filter_map(|c| {
                let (id, s) = by_agent.get(&c.agent_id)?;
                let info = agent_info(&st.sched, id, s, now);
                Some((c, info))
            })
            .collect()
    }

    /// The scheduler's state on this replica: per agent, per queue, per key.
    pub fn scheduler_state(&self) -> serde_json::Value {
        let now = now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        let agents: Vec<serde_json::Value> = {
            let mut v: Vec<_> = st
                .sessions
                .iter()
                .map(|(id, s)| {
                    let a = agent_info(&st.sched, id, s, now);
                    serde_json::json!({
                        "agent_id": a.agent_id, "agent_type": a.agent_type,
                        "in_flight": a.in_flight, "max_concurrent": a.max_concurrent,
                        "load": s.load(), "health": a.health, "breaker": a.breaker,
                        "draining": a.draining,
                    })
                })
                .collect();
            v.sort_by(|a, b| a["agent_id"].as_str().cmp(&b["agent_id"].as_str()));
            v
        };
        let mut types: std::collections::BTreeSet<String> = st.by_type.keys().cloned().collect();
        types.extend(st.has_work.keys().cloned());
        types.extend(st.sched.policies.types.keys().cloned());
        let queues: Vec<serde_json::Value> = types
            .into_iter()
            .map(|t| {
                let policy = st.sched.policies.types.get(&t);
                let strategy = policy
                    .and_then(|p| p.strategy)
                    .unwrap_or(st.sched.policies.default_strategy);
                let rate = policy.and_then(|p| p.rate).map(|r| {
                    serde_json::json!({"rate_per_s": r.rate, "burst": r.burst,
                        "tokens": st.sched.type_tokens(&t, now)})
                });
                let running: usize = st
                    .by_type
                    .get(&t)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| st.sessions.get(id))
                    .map(|s| s.in_flight.values().filter(|f| *f.task_type == *t).count())
                    .sum();
                let held: Vec<serde_json::Value> = st
                    .sched
                    .held
                    .get(&t)
                    .into_iter()
                    .flatten()
                    .map(|(id, why)| serde_json::json!({"task_id": id, "reason": why}))
                    .collect();
                serde_json::json!({
                    "task_type": t,
                    "path": if st.sched.is_scheduled(&t, now) { "scheduled" } else { "fast" },
                    "strategy": strategy.as_str(),
                    "agents": st.by_type.get(&t).map_or(0, Vec::len),
                    "running": running,
                    "has_work": st.has_work.contains_key(&t),
                    "rate_limit": rate,
                    "held": held,
                })
            })
            .collect();
        let mut keys: Vec<(String, u32)> = st
            .sched
            .running_per_key
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        keys.sort();
        let concurrency: Vec<serde_json::Value> = keys
            .iter()
            .map(|(k, n)| {
                let limit = st.sched.policies.key_limit(k);
                serde_json::json!({"key": k, "running": n, "limit": limit})
            })
            .collect();
        let mut rate_keys: Vec<String> = st
            .sched
            .policies
            .key_rate_overrides
            .keys()
            .cloned()
            .collect();
        rate_keys.sort();
        let rates: Vec<serde_json::Value> = rate_keys
            .iter()
            .map(|k| serde_json::json!({"key": k, "tokens": st.sched.key_tokens(k, now)}))
            .collect();
        let mut budget_types: Vec<String> =
            st.sched.policies.hourly_budgets.keys().cloned().collect();
        budget_types.sort();
        let budgets: Vec<serde_json::Value> = budget_types
            .iter()
            .map(|t| {
                let (spent, limit) = st.sched.hourly_spent(t, now);
                serde_json::json!({"agent_type": t, "spent_last_hour": spent, "limit_per_hour": limit})
            })
            .collect();
        let p = &st.sched.policies;
        serde_json::json!({
            "agents": agents,
            "queues": queues,
            "keys": {"concurrency": concurrency, "rate_limited": rates,
                     "default_concurrency": p.key_concurrency,
                     "default_rate": {"rate_per_s": p.key_rate.rate, "burst": p.key_rate.burst}},
            "budgets": budgets,
            "shedding": {
                "held": st.held,
                "capacity": p.capacity,
                "utilization": if p.capacity > 0 { st.held as f64 / p.capacity as f64 } else { 0.0 },
            },
            "preemption": p.preempt.is_some(),
            "breaker": {"failure_threshold": p.breaker.failure_threshold, "open_ms": p.breaker.open_ms},
        })
    }

    /// Ends every agent stream (graceful shutdown): agents reconnect elsewhere or
    /// when this server is back, and the gRPC server need not wait for them.
    pub fn close_sessions(&self) {
        for s in self.lock().sessions.values() {
            let _ = s.tx.send(Err(tonic::Status::unavailable(
                "the orchestrator is shutting down",
            )));
        }
    }

    pub fn agent_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Per task type: the healthy agents serving it, their capacity and in-flight
    /// attempts (a session serving several types counts for each); then the
    /// connected sessions and the attempts in flight on this replica.
    pub fn load_by_type(&self) -> (BTreeMap<String, metrics::TypeLoad>, u64, u64) {
        let now = now_ms();
        let st = self.lock();
        let mut by_type: BTreeMap<String, metrics::TypeLoad> = BTreeMap::new();
        let mut in_flight = 0;
        for s in st.sessions.values() {
            in_flight += s.in_flight.len() as u64;
            let healthy =
                !s.draining && now.saturating_sub(s.last_heartbeat) <= self.opts.agent_timeout_ms;
            for t in &s.task_types {
                let load = by_type.entry(t.clone()).or_default();
                load.healthy_agents += u64::from(healthy);
                load.capacity += s.max_concurrent as u64;
                load.in_flight += s.in_flight.len() as u64;
            }
        }
        (by_type, st.sessions.len() as u64, in_flight)
    }

    /// Works out which sessions to claim for on the fast path: least-loaded
    /// first, within free slots and the global `max_workers`, reserving the
    /// slots until the claim returns. Agents whose breaker is open or whose
    /// health is too low claim nothing; a half-open one claims one probe.
    /// Also returns the scheduled-path types to look at, and the fast-path
    /// types whose agents are all busy (their queue head is checked for a
    /// task urgent enough to preempt).
    fn plan(&self) -> Plan {
        let now = now_ms();
        let mut st = self.lock();
        let st = &mut *st;
        let mut plan = Plan::default();
        let mut budget = self.opts.max_workers.saturating_sub(st.running);
        if st.has_work.is_empty() || now < st.backoff_until {
            return plan;
        }
        // Scheduled types: looked at unless nothing changed since the last look
        // that placed nothing.
        for (t, generation) in &st.has_work {
            if !st.sched.is_scheduled(t, now) || st.looking.contains(t) {
                continue;
            }
            let idle = st
                .sched_idle
                .get(t)
                .is_some_and(|(g, r, until)| g == generation && *r == st.releases && *until > now);
            if idle {
                continue;
            }
            let free: usize = st
                .by_type
                .get(t)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| st.sessions.get(id))
                        .map(Session::free)
                        .sum()
                })
                .unwrap_or(0);
            let can_preempt = self.opts.policies.preempt.is_some() && free == 0;
            if (free == 0 || budget == 0) && !can_preempt {
                continue;
            }
            // Those still being claimed read as queued: the store leaves them out.
            let skip: Vec<TaskId> = st
                .claiming
                .get(t)
                .map(|c| c.iter().cloned().collect())
                .unwrap_or_default();
            plan.scheduled.push(Look {
                task_type: t.clone(),
                // As many as the free slots, plus those the last look left
                // behind (held by keys or limits), so that tasks behind them
                // are reached without decoding a far larger window every time.
                window: if free == 0 {
                    1
                } else {
                    let left = st.sched_left.get(t).copied().unwrap_or(0);
                    (free + left + 8).min(1_000)
                },
                skip,
                generation: *generation,
            });
        }
        for look in &plan.scheduled {
            st.looking.insert(look.task_type.clone());
        }
        if budget == 0 {
            return plan;
        }
        let mut candidates: Vec<(&String, &Session, usize)> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.free() > 0)
            .filter_map(|(id, s)| {
                st.sched
                    .admits_agent(&s.agent_id, now)
                    .map(|cap| (id, s, cap))
            })
            .collect();
        candidates.sort_by(|a, b| {
            a.1.load()
                .total_cmp(&b.1.load())
                .then(b.1.free().cmp(&a.1.free()))
        });
        let mut picks = Vec::new();
        for (id, s, cap) in candidates {
            if budget == 0 {
                break;
            }
            // A session serving several types with work takes them in turns, so a
            // flood of one type does not starve the others.
            let k = s.task_types.len();
            let Some(offset) = (0..k).find(|i| {
                let t = &s.task_types[(s.next_type + i) % k];
                st.has_work.contains_key(t) && !st.sched.is_scheduled(t, now)
            }) else {
                continue;
            };
            let index = (s.next_type + offset) % k;
            let n = s.free().min(budget).min(MAX_CLAIM).min(cap);
            budget -= n;
            picks.push((
                id.clone(),
                s.agent_id.clone(),
                s.task_types[index].clone(),
                n,
                index,
                cap == 1,
            ));
        }
        for (session_id, agent_id, task_type, n, index, probe) in picks {
            if probe && !st.sched.on_dispatch(&agent_id, now) {
                continue;
            }
            if let Some(s) = st.sessions.get_mut(&session_id) {
                s.reserved += n;
                s.next_type = index + 1;
            }
            st.running += n;
            let generation = st.has_work.get(&task_type).copied().unwrap_or(0);
            plan.claims.push(PlannedClaim {
                session_id,
                agent_id,
                task_type: task_type.into(),
                n,
                generation,
            });
        }
        // Fast-path types with work and no free agent: is their head urgent?
        if self.opts.policies.preempt.is_some() {
            for t in st.has_work.keys() {
                if st.sched.is_scheduled(t, now) {
                    continue;
                }
                let Some(ids) = st.by_type.get(t) else {
                    continue;
                };
                let busy = ids
                    .iter()
                    .filter_map(|id| st.sessions.get(id))
                    .all(|s| s.free() == 0 && !s.draining);
                let due = st
                    .preempt_checked
                    .get(t)
                    .is_none_or(|at| now.saturating_sub(*at) >= PREEMPT_CHECK_MS);
                if busy && due && !ids.is_empty() {
                    st.preempt_checked.insert(t.clone(), now);
                    plan.preempt_checks.push(t.clone());
                }
            }
        }
        plan
    }

    /// The dispatch loop: claim for free slots whenever work or slots appear.
    /// Up to [`MAX_ROUNDS`] rounds run at once; each reserves its slots (and
    /// marks its tasks) before the next is planned, so rounds never share one.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut rounds = tokio::task::JoinSet::new();
        loop {
            while rounds.try_join_next().is_some() {}
            if rounds.len() >= MAX_ROUNDS {
                tokio::select! {
                    _ = rounds.join_next() => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
            let plan = self.plan();
            if plan.is_empty() {
                let now = now_ms();
                let nap = {
                    let mut st = self.lock();
                    let backoff = st.backoff_until.saturating_sub(now);
                    st.sched_wake
                        .take()
                        .map_or(250, |at| at.saturating_sub(now).clamp(1, 250))
                        .max(backoff)
                };
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(nap)) => {}
                    _ = rounds.join_next(), if !rounds.is_empty() => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
            let this = self.clone();
            rounds.spawn(async move { this.run_round(plan).await });
        }
        // Rounds that claimed hand their tasks out before the loop ends.
        while rounds.join_next().await.is_some() {}
    }

    async fn run_round(&self, plan: Plan) {
        let Plan {
            claims,
            scheduled,
            preempt_checks,
        } = plan;
        let mut store_failed = false;
        if !claims.is_empty() {
            store_failed |= self.run_claims(claims).await;
        }
        if !scheduled.is_empty() {
            store_failed |= self.run_scheduled(scheduled).await;
        }
        for t in preempt_checks {
            self.check_preempt(&t).await;
        }
        if store_failed {
            self.lock().backoff_until = now_ms() + STORE_BACKOFF_MS;
        }
    }

    /// The fast path: each planned session claims a batch of its type.
    /// Returns whether the store failed.
    async fn run_claims(&self, plan: Vec<PlannedClaim>) -> bool {
        {
            let now = now_ms();
            let lease_deadline_ms = now + self.opts.lease_ms;
            let claims = plan.iter().map(|p| {
                self.store.claim(ClaimRequest {
                    task_type: p.task_type.to_string(),
                    max: p.n,
                    agent_id: p.agent_id.clone(),
                    lease_owner: p.session_id.clone(),
                    lease_deadline_ms,
                    now,
                })
            });
            let mut results = futures::future::join_all(claims).await;
            let unfilled = self
                .fill_inputs(
                    results
                        .iter_mut()
                        .flat_map(|r| r.iter_mut().flatten())
                        .map(|c| (&mut c.spec, c.attempt)),
                )
                .await;
            // Trace spans are started before the state lock is taken, in claim order.
            let mut traced = std::collections::VecDeque::new();
            if crate::telemetry::enabled() {
                for (p, res) in plan.iter().zip(&results) {
                    for c in res.iter().flatten() {
                        traced.push_back(crate::telemetry::start_attempt(
                            c.spec.task_id.as_str(),
                            &p.task_type,
                            c.attempt,
                            p.agent_id.as_str(),
                        ));
                    }
                }
            }
            let mut orphans = Vec::new();
            let mut to_hand_back = Vec::new();
            let mut store_failed = false;
            {
                let mut st = self.lock();
                let st = &mut *st;
                for (p, res) in plan.iter().zip(results) {
                    st.running = st.running.saturating_sub(p.n);
                    let claimed = match res {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, task_type = %p.task_type, "claim failed");
                            store_failed = true;
                            if let Some(s) = st.sessions.get_mut(&p.session_id) {
                                s.reserved = s.reserved.saturating_sub(p.n);
                            }
                            continue;
                        }
                    };
                    if claimed.len() < p.n && st.has_work.get(&*p.task_type) == Some(&p.generation)
                    {
                        st.has_work.remove(&*p.task_type);
                    }
                    let Some(s) = st.sessions.get_mut(&p.session_id) else {
                        // Their spans end (dropped) as the attempts are given back.
                        traced.drain(..claimed.len().min(traced.len()));
                        orphans.extend(claimed.into_iter().map(|c| (c.spec.task_id, c.attempt)));
                        continue;
                    };
                    s.reserved = s.reserved.saturating_sub(p.n);
                    if claimed.is_empty() {
                        continue;
                    }
                    self.metrics
                        .tasks_scheduled(&p.task_type, claimed.len() as u64);
                    let mut assignments = Vec::with_capacity(claimed.len());
                    for c in claimed {
                        if unfilled.contains(&c.spec.task_id) {
                            traced.pop_front();
                            continue;
                        }
                        // A task whose only needs are its keys runs here while
                        // they have room. Claimed in bulk but asking for a
                        // per-task decision, or for a key at its limit: it goes
                        // back, and its type switches to the per-task path
                        // (where keys take turns) for a while.
                        let concurrency_key = match crate::scheduler::need_of(&c.spec) {
                            Need::Nothing => None,
                            Need::Keys(hints) if st.sched.admit_keys(&hints, now) => {
                                hints.concurrency_key
                            }
                            need => {
                                st.sched.mark_scheduled(&c.spec.task_type, now);
                                traced.pop_front();
                                let reason = if need == Need::Decision {
                                    BACK_FOR_DECISION
                                } else {
                                    BACK_FOR_KEYS
                                };
                                to_hand_back.push((c.spec.task_id, c.attempt, reason));
                                continue;
                            }
                        };
                        let traced = traced.pop_front().flatten();
                        assignments.push(fly(
                            s,
                            &mut st.holders,
                            Flown {
                                session_id: &p.session_id,
                                task_type: &p.task_type,
                                concurrency_key,
                            },
                            &c,
                            traced,
                            now,
                        ));
                    }
                    st.running += assignments.len();
                    send_assignments(s, assignments);
                }
            }
            self.give_back_orphans(orphans).await;
            self.hand_back(to_hand_back).await;
            store_failed
        }
    }

    /// The scheduled path: read a window of each type's queued tasks, decide
    /// which goes to which agent, claim those by id, and send them. Returns
    /// whether the store failed.
    async fn run_scheduled(&self, mut looks: Vec<Look>) -> bool {
        let peeks = looks.iter_mut().map(|l| {
            self.store
                .peek_queued(&l.task_type, l.window, std::mem::take(&mut l.skip))
        });
        let windows = futures::future::join_all(peeks).await;
        let now = now_ms();
        let lease_deadline_ms = now + self.opts.lease_ms;
        let mut store_failed = false;
        // Per look: the window and what was decided.
        let mut decided: Vec<(Vec<TaskSpec>, Vec<Placement>)> = Vec::new();
        let mut starving: Vec<(String, Priority)> = Vec::new();
        {
            let mut st = self.lock();
            let st = &mut *st;
            for (look, window) in looks.iter().zip(windows) {
                st.looking.remove(&look.task_type);
                let window = match window {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, task_type = %look.task_type, "could not read queued tasks");
                        store_failed = true;
                        continue;
                    }
                };
                if window.is_empty() {
                    if st
                        .claiming
                        .get(&look.task_type)
                        .is_some_and(|c| !c.is_empty())
                    {
                        // All being claimed by a round still in flight (or none
                        // left): look again once it returns (it counts as a
                        // release), in case its claim fails.
                        st.sched_idle.insert(
                            look.task_type.clone(),
                            (look.generation, st.releases, now + 1_000),
                        );
                    } else if st.has_work.get(&look.task_type) == Some(&look.generation) {
                        st.has_work.remove(&look.task_type);
                    }
                    continue;
                }
                let mut slots = Vec::new();
                let mut budget = self.opts.max_workers.saturating_sub(st.running);
                let mut free_slots = 0;
                for id in st.by_type.get(&look.task_type).into_iter().flatten() {
                    let Some(s) = st.sessions.get(id) else {
                        continue;
                    };
                    if s.draining {
                        continue;
                    }
                    // The global limit: offer no more slots than it leaves.
                    let free = s.free().min(budget);
                    budget -= free;
                    free_slots += free;
                    let used = s.max_concurrent - free;
                    slots.push(Slot {
                        view: st.sched.view(&s.agent_id, used, s.max_concurrent, now),
                        session_id: id.clone(),
                    });
                }
                if window
                    .iter()
                    .any(|spec| crate::scheduler::has_resources(&spec.metadata))
                {
                    // A task only some agents may take can wait here for long:
                    // keep its type off the fast path meanwhile.
                    st.sched.mark_scheduled(&look.task_type, now);
                }
                let decision = st.sched.decide(&look.task_type, &window, slots, now);
                let held = held_ahead(window.len(), &decision.placements, free_slots);
                if held > 0 {
                    // Keys or limits bind: the type stays on this path while
                    // they do (the fast path would claim and hand back).
                    st.sched.mark_scheduled(&look.task_type, now);
                }
                st.sched_left.insert(look.task_type.clone(), held);
                if let Some(at) = decision.wake_at {
                    st.sched_wake = Some(st.sched_wake.map_or(at, |w| w.min(at)));
                }
                if let Some(level) = decision.starved {
                    starving.push((look.task_type.clone(), level));
                }
                if decision.placements.is_empty() {
                    // Nothing to do until work arrives, a slot frees, or a limit refills.
                    let until = decision.wake_at.unwrap_or(now + 1_000);
                    st.sched_idle.insert(
                        look.task_type.clone(),
                        (look.generation, st.releases, until),
                    );
                    continue;
                }
                st.sched_idle.remove(&look.task_type);
                let claiming = st.claiming.entry(look.task_type.clone()).or_default();
                for p in &decision.placements {
                    claiming.insert(window[p.index].task_id.clone());
                }
                for p in &decision.placements {
                    if let Some(s) = st.sessions.get_mut(&p.session_id) {
                        s.reserved += 1;
                    }
                    st.running += 1;
                }
                decided.push((window, decision.placements));
            }
        }
        for (task_type, level) in starving {
            self.preempt_for(&task_type, level).await;
        }
        if decided.is_empty() {
            return store_failed;
        }
        let selected: Vec<Selected> = decided
            .iter()
            .flat_map(|(window, placements)| {
                placements.iter().map(|p| Selected {
                    task_id: window[p.index].task_id.clone(),
                    agent_id: p.agent_id.clone(),
                    lease_owner: p.session_id.clone(),
                })
            })
            .collect();
        let outcomes = match self
            .store
            .claim_selected(selected, lease_deadline_ms, now)
            .await
        {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "could not claim scheduled tasks");
                let mut st = self.lock();
                claimed_back(&mut st, &decided);
                for (_, placements) in &decided {
                    for p in placements {
                        unreserve(&mut st, p);
                        if let Some(k) = &p.concurrency_key {
                            st.sched.release_key(k);
                        }
                    }
                }
                return true;
            }
        };
        claimed_back(&mut self.lock(), &decided);
        // Per placement, in order: the spec (from the window: the claim does not
        // read it back) and attempt of each task claimed.
        let mut claimed: Vec<Option<(TaskSpec, u32)>> = Vec::with_capacity(outcomes.len());
        let mut finished = Vec::new();
        let mut outcomes = outcomes.into_iter();
        for (window, placements) in &mut decided {
            let mut specs: Vec<Option<TaskSpec>> =
                std::mem::take(window).into_iter().map(Some).collect();
            for p in placements.iter() {
                claimed.push(match outcomes.next() {
                    Some(SelectedOutcome::Claimed { attempt }) => {
                        specs[p.index].take().map(|spec| (spec, attempt))
                    }
                    Some(SelectedOutcome::Finished { record, effects }) => {
                        // Its deadline passed while queued: it failed.
                        finished.push((record, effects));
                        None
                    }
                    // Another replica took it meanwhile, or it was cancelled.
                    _ => None,
                });
            }
        }
        let unfilled = self
            .fill_inputs(
                claimed
                    .iter_mut()
                    .flatten()
                    .map(|(spec, attempt)| (spec, *attempt)),
            )
            .await;
        let mut orphans = Vec::new();
        {
            let mut st = self.lock();
            let st = &mut *st;
            let mut frames: HashMap<String, Vec<v1::Assignment>> = HashMap::new();
            let placements = decided.iter().flat_map(|(_, placements)| placements);
            for (p, claimed) in placements.zip(claimed) {
                unreserve(st, p);
                let claimed = match claimed {
                    // Failed or handed back by `fill_inputs`: not assigned.
                    Some((spec, _)) if unfilled.contains(&spec.task_id) => None,
                    other => other,
                };
                let Some((spec, attempt)) = claimed else {
                    // Not running here: the key the decision counted is free again.
                    if let Some(k) = &p.concurrency_key {
                        st.sched.release_key(k);
                    }
                    continue;
                };
                let Some(s) = st.sessions.get_mut(&p.session_id) else {
                    if let Some(k) = &p.concurrency_key {
                        st.sched.release_key(k);
                    }
                    orphans.push((spec.task_id, attempt));
                    continue;
                };
                s.in_flight.insert(
                    spec.task_id.clone(),
                    InFlight {
                        attempt,
                        task_type: Arc::from(spec.task_type.as_str()),
                        span: None,
                        assigned_at: now,
                        timeout_at: now + spec.timeout_ms,
                        priority: spec.priority,
                        concurrency_key: p.concurrency_key.clone(),
                        run_id: spec.run_id.as_deref().map(Arc::from),
                    },
                );
                st.holders
                    .insert(spec.task_id.clone(), p.session_id.clone());
                st.running += 1;
                self.metrics.tasks_scheduled(&spec.task_type, 1);
                let claimed = baton_store::Claimed { spec, attempt };
                frames
                    .entry(p.session_id.clone())
                    .or_default()
                    .push(assignment(&claimed));
            }
            for (session_id, assignments) in frames {
                if let Some(s) = st.sessions.get(&session_id) {
                    for frame in self::frames(assignments) {
                        let _ = s.tx.send(Ok(v1::ServerMessage {
                            msg: Some(v1::server_message::Msg::Assignments(v1::Assignments {
                                assignments: frame,
                            })),
                        }));
                    }
                }
            }
        }
        if !finished.is_empty() {
            let refs: Vec<(&TaskRecord, &[Effect])> =
                finished.iter().map(|(r, e)| (r, e.as_slice())).collect();
            self.handle_effects_batch(&refs);
        }
        self.give_back_orphans(orphans).await;
        store_failed
    }

    /// A fast-path type whose agents are all busy: if the head of its queue is
    /// urgent enough, make room.
    async fn check_preempt(&self, task_type: &str) {
        let Ok(head) = self.store.peek_queued(task_type, 1, Vec::new()).await else {
            return;
        };
        if let Some(spec) = head.first() {
            self.preempt_for(task_type, spec.priority).await;
        }
    }

    /// Stops the lowest-priority attempt running on an agent of `task_type`
    /// when a task of `level` waits for a slot and the policy allows it. The
    /// stopped task goes back to the queue without losing an attempt.
    async fn preempt_for(&self, task_type: &str, level: Priority) {
        let Some(policy) = self.opts.policies.preempt else {
            return;
        };
        if level < policy.min_priority {
            return;
        }
        let victim = {
            let st = self.lock();
            let mut running = Vec::new();
            let mut owner = HashMap::new();
            for id in st.by_type.get(task_type).into_iter().flatten() {
                let Some(s) = st.sessions.get(id) else {
                    continue;
                };
                if s.free() > 0 {
                    return; // a slot is free after all
                }
                for (task_id, f) in &s.in_flight {
                    if &*f.task_type != task_type {
                        continue;
                    }
                    running.push(RunningTask {
                        task_id: task_id.clone(),
                        priority: f.priority,
                        started_at_ms: f.assigned_at,
                    });
                    owner.insert(task_id.clone(), (id.clone(), f.attempt));
                }
            }
            policy.choose_victim(level, 0, &running).and_then(|v| {
                owner
                    .get(&v.task_id)
                    .map(|(s, a)| (v.task_id.clone(), s.clone(), *a))
            })
        };
        let Some((task_id, session_id, attempt)) = victim else {
            return;
        };
        tracing::info!(%task_id, attempt, task_type, incoming = level.as_str(), "preempting a lower-priority attempt");
        let removed = {
            let mut st = self.lock();
            let st = &mut *st;
            let removed = st.sessions.get_mut(&session_id).and_then(|s| {
                let f = s.in_flight.remove(&task_id)?;
                let _ = s.tx.send(Ok(cancels(vec![(task_id.clone(), attempt)])));
                Some(f)
            });
            if let Some(f) = &removed {
                st.holders.remove(&task_id);
                st.running = st.running.saturating_sub(1);
                st.released(f);
            }
            removed.is_some()
        };
        if removed {
            self.yield_attempts(
                vec![(task_id, attempt)],
                &format!("preempted by a {level} task"),
            )
            .await;
            self.wake.notify_one();
        }
    }

    /// Fills in the step outputs the claimed tasks' inputs refer to
    /// ([`crate::input_refs`]). A task whose reference cannot be satisfied fails
    /// (permanently, with the reason); one whose output could not be read is
    /// handed back. Returns both kinds, which must not be assigned.
    async fn fill_inputs<'a>(
        &self,
        claimed: impl Iterator<Item = (&'a mut TaskSpec, u32)>,
    ) -> std::collections::HashSet<TaskId> {
        let mut attempts = HashMap::new();
        let specs: Vec<&mut TaskSpec> = claimed
            .filter(|(spec, _)| {
                spec.metadata
                    .contains_key(baton_core::workflow::refs::INPUT_REFS)
            })
            .map(|(spec, attempt)| {
                attempts.insert(spec.task_id.clone(), attempt);
                spec
            })
            .collect();
        if specs.is_empty() {
            return Default::default();
        }
        let unfilled = self.outputs.fill(&*self.store, specs).await;
        let mut skip = std::collections::HashSet::new();
        let mut hand_back = Vec::new();
        for (task_id, why) in unfilled {
            let attempt = attempts.get(&task_id).copied().unwrap_or(0);
            skip.insert(task_id.clone());
            match why {
                crate::input_refs::Unfilled::Bad(message) => {
                    tracing::info!(task_id = %task_id, error = %message, "input reference cannot be filled");
                    self.fail_in_store(
                        vec![(task_id, attempt)],
                        Failure::new(FailureKind::Permanent, message),
                    )
                    .await;
                }
                crate::input_refs::Unfilled::Unreadable(e) => {
                    tracing::warn!(task_id = %task_id, error = %e, "could not read the outputs an input refers to");
                    hand_back.push((task_id, attempt, BACK_UNREADABLE));
                }
            }
        }
        self.hand_back(hand_back).await;
        skip
    }

    /// Stops running attempts and sends their tasks back to the queue without
    /// counting them (`Yield`: preemption).
    async fn yield_attempts(&self, attempts: Vec<(TaskId, u32)>, reason: &str) {
        let reason = reason.to_string();
        self.requeue(attempts.into_iter().map(|(task_id, attempt)| Update {
            task_id,
            command: Command::Yield {
                attempt,
                reason: reason.clone(),
            },
        }))
        .await;
    }

    /// Sends claimed attempts that were never sent to an agent back to the
    /// queue, not counted (`HandBack`), each with its reason, in one write.
    async fn hand_back(&self, attempts: Vec<(TaskId, u32, &'static str)>) {
        self.requeue(
            attempts
                .into_iter()
                .map(|(task_id, attempt, reason)| Update {
                    task_id,
                    command: Command::HandBack {
                        attempt,
                        reason: reason.to_string(),
                    },
                }),
        )
        .await;
    }

    async fn requeue(&self, updates: impl Iterator<Item = Update>) {
        let updates: Vec<Update> = updates.collect();
        if updates.is_empty() {
            return;
        }
        self.apply_updates(
            updates,
            "could not hand attempts back; their leases will expire",
        )
        .await;
    }

    /// Periodic duties: timeouts, silent agents, lease extension, lease expiry and
    /// retry promotion.
    pub async fn maintain(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let tick = Duration::from_millis(20);
        let mut last_extend = 0;
        let mut last_expire = 0;
        let mut last_wake_refresh = 0;
        let mut last_ask = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => {
                    self.leader.resign().await;
                    return;
                }
            }
            let now = now_ms();
            if now.saturating_sub(last_ask) >= self.leader.renew_every_ms() {
                last_ask = now;
                self.leader.ask(now).await;
            }
            let now = now_ms();
            // Timeouts and silent agents.
            let mut timed_out: Vec<(String, Vec<(TaskId, u32)>)> = Vec::new();
            let mut silent = Vec::new();
            {
                let st = self.lock();
                for (id, s) in &st.sessions {
                    if now.saturating_sub(s.last_heartbeat) > self.opts.agent_timeout_ms {
                        silent.push(id.clone());
                        continue;
                    }
                    let expired: Vec<(TaskId, u32)> = s
                        .in_flight
                        .iter()
                        .filter(|(_, f)| f.timeout_at <= now)
                        .map(|(t, f)| (t.clone(), f.attempt))
                        .collect();
                    if !expired.is_empty() {
                        timed_out.push((id.clone(), expired));
                    }
                }
            }
            for (session_id, attempts) in timed_out {
                for (task_id, attempt) in &attempts {
                    tracing::info!(%task_id, attempt, "attempt timed out");
                }
                let failure = Failure::new(FailureKind::Timeout, "the attempt ran past timeout_ms");
                self.fail_attempts(&session_id, attempts, failure);
            }
            for session_id in silent {
                let tx = self.lock().sessions.get(&session_id).map(|s| s.tx.clone());
                if let Some(tx) = tx {
                    let _ = tx.send(Err(tonic::Status::unavailable(
                        "no heartbeat within agent_timeout_ms",
                    )));
                }
                self.disconnect(&session_id, "no heartbeat").await;
            }
            // Keep the leases of live sessions ahead of expiry.
            if now.saturating_sub(last_extend) >= self.opts.lease_ms / 4 {
                last_extend = now;
                // Every session of this replica in one store call.
                let ids: Vec<String> = self.lock().sessions.keys().cloned().collect();
                if !ids.is_empty() {
                    let deadline = now + self.opts.lease_ms;
                    if let Err(e) = self.store.extend_leases(&ids, deadline).await {
                        tracing::warn!(error = %e, "could not extend leases");
                    }
                }
            }
            // Attempts whose holder vanished without a goodbye (e.g. a crashed
            // replica): the leader's duty.
            let fence = self.leader.fence(now);
            if let Some(fence) = fence
                .as_ref()
                .filter(|_| now.saturating_sub(last_expire) >= 1_000)
            {
                last_expire = now;
                match self.store.expire_leases(now, fence).await {
                    Ok(ids) if !ids.is_empty() => {
                        tracing::info!(count = ids.len(), "leases expired; attempts re-queued");
                        self.metrics.lease_expiries(ids.len() as u64);
                        self.after_release(ids).await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.leader.refused(&e);
                        tracing::warn!(error = %e, "could not expire leases");
                    }
                }
            }
            if now.saturating_sub(last_wake_refresh) >= 1_000 {
                last_wake_refresh = now;
                self.refresh_wake().await;
                if self.opts.policies.capacity > 0 {
                    self.refresh_held().await;
                }
            }
            // Due retries: the leader's duty too (its promotion wakes the others).
            let due = self.lock().next_wake.is_some_and(|w| w <= now);
            if let Some(fence) = fence.filter(|_| due) {
                self.lock().next_wake = None;
                match self.store.promote_due(now, &fence).await {
                    Ok(types) => {
                        if !types.is_empty() {
                            self.work_arrived(types.iter().map(String::as_str));
                        }
                    }
                    Err(e) => {
                        self.leader.refused(&e);
                        tracing::warn!(error = %e, "could not promote retries");
                    }
                }
                self.refresh_wake().await;
            }
        }
    }

    /// At start-up: find queued work and the next retry to wake.
    pub async fn recover(&self, exclusive_store: bool) -> Result<(), baton_store::Error> {
        if exclusive_store {
            // Attempts still running belong to the previous process, which is gone:
            // release them now rather than waiting for their leases to run out.
            let mut owners = std::collections::BTreeSet::new();
            let mut cursor = None;
            loop {
                let page = self
                    .store
                    .list(baton_store::ListFilter {
                        status: Some(Status::Running),
                        task_type: None,
                        limit: 1_000,
                        cursor,
                    })
                    .await?;
                owners.extend(
                    page.tasks
                        .iter()
                        .filter_map(|t| t.state.lease_owner.clone()),
                );
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let now = now_ms();
            let mut released = Vec::new();
            for owner in owners {
                let failure = Failure::new(
                    FailureKind::AgentLost,
                    "the orchestrator restarted while this attempt ran",
                );
                released.extend(self.store.release_owner(&owner, failure, now).await?);
            }
            if !released.is_empty() {
                tracing::info!(
                    count = released.len(),
                    "re-queued attempts left running by the previous process"
                );
            }
            self.after_release(released).await;
        }
        let types = self.store.queued_types().await?;
        // Queued work of unknown needs: decided task by task until seen to need none.
        {
            let mut st = self.lock();
            let now = now_ms();
            for t in &types {
                st.sched.mark_scheduled(t, now);
            }
        }
        self.work_arrived(types.iter().map(String::as_str));
        if self.opts.policies.capacity > 0 {
            self.refresh_held().await;
        }
        self.refresh_wake().await;
        Ok(())
    }
}

/// What the API shows of an agent session.
fn agent_info(sched: &Sched, session_id: &str, s: &Session, now: Millis) -> AgentInfo {
    let agent = sched.registry.get(&s.agent_id);
    let d = agent.map(|a| &a.descriptor);
    let load = agent.map(|a| a.load).unwrap_or_default();
    AgentInfo {
        agent_id: s.agent_id.to_string(),
        session_id: session_id.to_string(),
        task_types: s.task_types.clone(),
        version: s.version.clone(),
        max_concurrent: s.max_concurrent,
        in_flight: s.in_flight.len(),
        draining: s.draining,
        labels: s.labels.clone(),
        connected_at: crate::view::rfc3339(s.connected_at),
        last_heartbeat: crate::view::rfc3339(s.last_heartbeat),
        completed: s.completed,
        failed: s.failed,
        agent_type: d.map(|d| d.agent_type.clone()).unwrap_or_default(),
        capabilities: d
            .map(|d| d.capabilities.iter().cloned().collect())
            .unwrap_or_default(),
        service_types: d
            .map(|d| d.service_types.iter().cloned().collect())
            .unwrap_or_default(),
        endpoint: d.map(|d| d.endpoint.clone()).unwrap_or_default(),
        tags: d
            .map(|d| d.tags.iter().cloned().collect())
            .unwrap_or_default(),
        location: d.and_then(|d| d.location.clone()),
        cost_factor: d.map_or(1.0, |d| d.cost_factor),
        weight: d.map_or(1.0, |d| d.weight),
        health: agent.map_or(1.0, |a| a.health(sched.registry.options(), now)),
        breaker: sched.breakers.phase(&s.agent_id, now).as_str().to_string(),
        cpu_usage: load.cpu_usage,
        error_rate: load.error_rate,
        response_time_ms: load.response_time_ms,
        connected_at_ms: s.connected_at,
        last_heartbeat_ms: s.last_heartbeat,
    }
}

/// The claim of these placements returned: their tasks are no longer left out
/// of the next look's window, and a look that found only them looks again.
fn claimed_back(st: &mut State, decided: &[(Vec<TaskSpec>, Vec<Placement>)]) {
    for (window, placements) in decided {
        let Some(t) = window.first().map(|spec| spec.task_type.as_str()) else {
            continue;
        };
        if let Some(claiming) = st.claiming.get_mut(t) {
            for p in placements {
                claiming.remove(&window[p.index].task_id);
            }
        }
    }
    st.releases += 1;
}

/// Gives back a slot reserved for a scheduled placement.
fn unreserve(st: &mut State, p: &Placement) {
    if let Some(s) = st.sessions.get_mut(&p.session_id) {
        s.reserved = s.reserved.saturating_sub(1);
    }
    st.running = st.running.saturating_sub(1);
}

/// One line per task that ends: failures at info (dead-lettering at warn), the
/// rest at debug, each with the task, run and agent ids.
fn log_finished(record: &TaskRecord, status: Status) {
    let quiet = !matches!(status, Status::Failed | Status::DeadLettered);
    if quiet && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let task_id = record.spec.task_id.as_str();
    let run_id = record.spec.run_id.as_deref();
    // A task that ended no longer holds an agent: name the last one it ran on.
    let agent_id = record
        .state
        .agent_id
        .as_ref()
        .or_else(|| {
            record
                .state
                .events
                .iter()
                .rev()
                .find_map(|e| e.agent_id.as_ref())
        })
        .map(|a| a.as_str());
    let attempt = record.state.attempt;
    let task_type = record.spec.task_type.as_str();
    let error = record.state.error.as_ref().map(|e| e.message.as_str());
    match status {
        Status::DeadLettered => tracing::warn!(
            task_id,
            run_id,
            agent_id,
            attempt,
            task_type,
            error,
            "task dead-lettered"
        ),
        Status::Failed => {
            tracing::info!(
                task_id,
                run_id,
                agent_id,
                attempt,
                task_type,
                error,
                "task failed"
            )
        }
        _ => tracing::debug!(
            task_id,
            run_id,
            agent_id,
            attempt,
            task_type,
            status = status.as_str(),
            "task ended"
        ),
    }
}

/// The trace span of a task that ended (when tracing is on).
fn trace_finished(record: &TaskRecord, status: Status) {
    if crate::telemetry::enabled() {
        crate::telemetry::task_ended(
            record.spec.task_id.as_str(),
            &record.spec.task_type,
            record.spec.run_id.as_deref(),
            status.as_str(),
            record.state.created_at_ms,
        );
    }
}

/// A terminal task as the metrics take it: latency from submission to its end.
fn finished_of(record: &TaskRecord, status: Status) -> metrics::Finished<'_> {
    let end = record
        .state
        .finished_at_ms
        .unwrap_or(record.state.updated_at_ms);
    metrics::Finished {
        task_type: &record.spec.task_type,
        status,
        latency_ms: end.saturating_sub(record.state.created_at_ms),
    }
}

/// An event's data as compact JSON text, if the event is acceptable.
fn parse_event(e: &v1::ProgressEvent) -> Result<String, String> {
    baton_core::progress::validate_kind(&e.kind)?;
    if e.data_json.len() > baton_core::progress::MAX_DATA_BYTES {
        return Err(format!(
            "data is larger than {} bytes",
            baton_core::progress::MAX_DATA_BYTES
        ));
    }
    if e.data_json.trim().is_empty() {
        return Ok("null".into());
    }
    serde_json::from_str::<serde_json::Value>(&e.data_json)
        .map(|v| v.to_string())
        .map_err(|err| format!("data is not valid json: {err}"))
}

fn parse_output(raw: &str) -> Result<serde_json::Value, String> {
    if raw.trim().is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_str(raw).map_err(|e| format!("the agent's output is not valid json: {e}"))
}

fn ack(task_id: &str, attempt: u32, refused: Option<(&str, &str)>) -> v1::ResultAck {
    v1::ResultAck {
        task_id: task_id.to_string(),
        attempt,
        accepted: refused.is_none(),
        error_code: refused.map(|r| r.0.to_string()).unwrap_or_default(),
        message: refused.map(|r| r.1.to_string()).unwrap_or_default(),
    }
}

fn cancels(attempts: Vec<(TaskId, u32)>) -> v1::ServerMessage {
    v1::ServerMessage {
        msg: Some(v1::server_message::Msg::Cancels(v1::Cancels {
            attempts: attempts
                .into_iter()
                .map(|(t, a)| v1::AttemptRef {
                    task_id: t.into_string(),
                    attempt: a,
                })
                .collect(),
        })),
    }
}

/// Largest assignments frame we build; a single larger task still goes alone.
const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// The created records of the tasks `starts` asks to start, in the order of
/// the starts (what [`start_records`] pairs back with them); cloned on the
/// store's writer at commit, so only the few started ones are.
fn started_records(
    starts: &[Option<StartAt>],
    outcomes: &[SubmitOutcome],
) -> Vec<Option<SubmitOutcome>> {
    starts
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_some())
        .map(|(i, _)| match outcomes.get(i) {
            Some(o @ SubmitOutcome::Created(_)) => Some(o.clone()),
            _ => None,
        })
        .collect()
}

/// Each start asked for with what [`started_records`] kept for it, for
/// [`Dispatcher::started`]; `records` is `None` when the submit did not commit.
fn start_records<'a>(
    starts: &'a [Option<StartAt>],
    records: Option<&'a [Option<SubmitOutcome>]>,
) -> impl Iterator<Item = (&'a StartAt, Option<&'a SubmitOutcome>)> {
    starts.iter().flatten().enumerate().map(move |(k, start)| {
        (
            start,
            records.and_then(|r| r.get(k)).and_then(Option::as_ref),
        )
    })
}

// Why an attempt that was claimed but never sent goes back to the queue
// (`HandBack`, the event's reason).
const BACK_FOR_DECISION: &str = "handed back: it needs a per-task scheduling decision";
const BACK_FOR_KEYS: &str = "handed back: its concurrency or rate-limit key is at its limit";
const BACK_AGENT_LEFT: &str = "handed back: the agent left before the task reached it";
const BACK_UNREADABLE: &str = "handed back: the outputs its input refers to could not be read";

/// Where a claimed attempt flies: the session, its type, and the concurrency
/// key it counts against (released when it stops running).
struct Flown<'a> {
    session_id: &'a str,
    task_type: &'a Arc<str>,
    concurrency_key: Option<String>,
}

/// Puts a claimed attempt in its session's flight (the caller counts it in
/// `running`) and returns the assignment to send.
fn fly(
    s: &mut Session,
    holders: &mut HashMap<TaskId, String>,
    to: Flown<'_>,
    c: &baton_store::Claimed,
    traced: Option<(crate::telemetry::AttemptSpan, String)>,
    now: Millis,
) -> v1::Assignment {
    let mut assignment = assignment(c);
    let span = traced.map(|(span, traceparent)| {
        assignment.traceparent = traceparent;
        span
    });
    s.in_flight.insert(
        c.spec.task_id.clone(),
        InFlight {
            attempt: c.attempt,
            task_type: to.task_type.clone(),
            run_id: c.spec.run_id.as_deref().map(Arc::from),
            span,
            assigned_at: now,
            timeout_at: now + c.spec.timeout_ms,
            priority: c.spec.priority,
            concurrency_key: to.concurrency_key,
        },
    );
    holders.insert(c.spec.task_id.clone(), to.session_id.to_string());
    tracing::debug!(
        task_id = %c.spec.task_id,
        run_id = c.spec.run_id.as_deref(),
        agent_id = %s.agent_id,
        attempt = c.attempt,
        "attempt assigned"
    );
    assignment
}

/// Sends assignments to a session's agent, in frames under the size limit.
fn send_assignments(s: &Session, assignments: Vec<v1::Assignment>) {
    for frame in frames(assignments) {
        let msg = v1::ServerMessage {
            msg: Some(v1::server_message::Msg::Assignments(v1::Assignments {
                assignments: frame,
            })),
        };
        let _ = s.tx.send(Ok(msg));
    }
}

/// Splits assignments into frames that stay under [`MAX_FRAME_BYTES`].
fn frames(assignments: Vec<v1::Assignment>) -> Vec<Vec<v1::Assignment>> {
    let mut out = vec![Vec::new()];
    let mut size = 0;
    for a in assignments {
        let n = prost::Message::encoded_len(&a);
        if size + n > MAX_FRAME_BYTES && !out.last().is_some_and(|f: &Vec<_>| f.is_empty()) {
            out.push(Vec::new());
            size = 0;
        }
        size += n;
        out.last_mut().expect("at least one frame").push(a);
    }
    out
}

fn assignment(c: &baton_store::Claimed) -> v1::Assignment {
    let spec = &c.spec;
    v1::Assignment {
        task_id: spec.task_id.to_string(),
        attempt: c.attempt,
        task_type: spec.task_type.clone(),
        inputs: spec
            .inputs
            .iter()
            .map(crate::view::input_to_proto)
            .collect(),
        metadata_json: if spec.metadata.is_empty() {
            String::new()
        } else {
            // Serialised in place: a copy of the map only to print it would cost
            // an allocation per entry.
            serde_json::to_string(&spec.metadata).unwrap_or_default()
        },
        priority: spec.priority.to_string(),
        timeout_ms: spec.timeout_ms,
        deadline_ms: spec.deadline_ms.unwrap_or(0),
        execution_mode: spec
            .execution_mode
            .map(|m| format!("{m:?}").to_ascii_lowercase())
            .unwrap_or_default(),
        traceparent: String::new(),
    }
}

type Waiters = Mutex<HashMap<TaskId, Vec<oneshot::Sender<TaskRecord>>>>;

/// One request's wait for a task to finish ([`Dispatcher::waiter`]): resolves
/// with the record of the write that finished it. Dropped unresolved (a
/// timeout, a client gone, a task that does not exist), it takes its entry out
/// of the dispatcher's table, so waits on tasks that never finish cost nothing
/// once they end.
pub struct Waiter<'a> {
    rx: oneshot::Receiver<TaskRecord>,
    waiters: &'a Waiters,
    task_id: TaskId,
}

impl<'a> Waiter<'a> {
    fn new(waiters: &'a Waiters, task_id: &TaskId) -> Waiter<'a> {
        let (tx, rx) = oneshot::channel();
        // Waits given up leave the table themselves (`Drop`).
        waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(task_id.clone())
            .or_default()
            .push(tx);
        Waiter {
            rx,
            waiters,
            task_id: task_id.clone(),
        }
    }
}

/// Resolves every wait on the task `record` is of.
fn wake_waiters(waiters: &Waiters, record: &TaskRecord) {
    let list = waiters
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&record.spec.task_id);
    for tx in list.into_iter().flatten() {
        let _ = tx.send(record.clone());
    }
}

impl std::future::Future for Waiter<'_> {
    type Output = Result<TaskRecord, oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.rx.close();
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = w.get_mut(&self.task_id) {
            list.retain(|s| !s.is_closed());
            if list.is_empty() {
                w.remove(&self.task_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sized(n: usize) -> v1::Assignment {
        v1::Assignment {
            task_id: "t".into(),
            inputs: vec![v1::InputPart {
                data: vec![0; n],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn placed(indexes: &[usize]) -> Vec<Placement> {
        indexes
            .iter()
            .map(|&index| Placement {
                index,
                session_id: "s".into(),
                agent_id: AgentId::from_trusted("a"),
                concurrency_key: None,
            })
            .collect()
    }

    #[test]
    fn the_next_window_rereads_only_what_was_held_ahead() {
        // Every free slot taken by the first tasks: nothing to read again, so
        // windows do not grow by their margin on every look.
        assert_eq!(held_ahead(12, &placed(&[0, 1, 2, 3]), 4), 0);
        // Slots taken, with tasks skipped (held by a key) before the last placed.
        assert_eq!(held_ahead(12, &placed(&[0, 2, 5, 6]), 4), 3);
        // Fewer placed than slots were free: everything else was held.
        assert_eq!(held_ahead(12, &placed(&[1, 4]), 4), 10);
        assert_eq!(held_ahead(5, &placed(&[]), 3), 5);
        // No slot free and nothing placed: nothing was looked at.
        assert_eq!(held_ahead(1, &placed(&[]), 0), 0);
    }

    fn record(id: &str) -> TaskRecord {
        let spec = TaskSpec {
            task_id: TaskId::parse(id).unwrap(),
            task_type: "echo".into(),
            inputs: Vec::new(),
            priority: Priority::default(),
            timeout_ms: 1_000,
            metadata: Default::default(),
            retry: Default::default(),
            deadline_ms: None,
            execution_mode: None,
            dependencies: Vec::new(),
            run_id: None,
        };
        TaskRecord {
            state: baton_store::initial_state(&spec, None, 0),
            spec,
        }
    }

    #[tokio::test]
    async fn a_wait_is_answered_with_the_finishing_record_and_leaves_the_table() {
        let table: Waiters = Mutex::new(HashMap::new());
        let id = TaskId::parse("t-1").unwrap();
        let first = Waiter::new(&table, &id);
        let second = Waiter::new(&table, &id);
        wake_waiters(&table, &record("t-1"));
        assert_eq!(first.await.unwrap().spec.task_id, id);
        assert_eq!(second.await.unwrap().spec.task_id, id);
        assert!(table.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_refresh_of_the_held_count_waits_for_a_submit_in_progress() {
        let store: Arc<dyn Store> = Arc::new(baton_store_sqlite::SqliteStore::open_temp().unwrap());
        let d = Dispatcher::new(
            store.clone(),
            Options {
                max_workers: 4,
                lease_ms: 30_000,
                heartbeat_interval_ms: 5_000,
                agent_timeout_ms: 15_000,
                replica_id: "r".into(),
                leader_lease_ms: 10_000,
                policies: crate::scheduler::Policies {
                    capacity: 10,
                    ..Default::default()
                },
            },
            Metrics::new(300_000, 0),
        );
        // A submit: admitted, committed, and not yet counted by `held_added`.
        let gate = d.held_gate().await.expect("shedding is on");
        store.submit(vec![record("t-1").spec], 1).await.unwrap();
        let refresh = tokio::spawn({
            let d = d.clone();
            async move { d.refresh_held().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(d.held_load().unwrap().0, 0, "the refresh read mid-submit");
        d.held_added(1);
        drop(gate);
        refresh.await.unwrap();
        assert_eq!(d.held_load().unwrap().0, 1, "the task is counted once");
    }

    #[test]
    fn a_wait_given_up_leaves_no_entry_behind() {
        // A wait on a task that does not exist, or that times out, must not
        // stay in the table for ever.
        let table: Waiters = Mutex::new(HashMap::new());
        let id = TaskId::parse("missing").unwrap();
        let kept = Waiter::new(&table, &id);
        drop(Waiter::new(&table, &id));
        assert_eq!(
            table.lock().unwrap()[&id].len(),
            1,
            "only the live wait stays"
        );
        drop(kept);
        assert!(table.lock().unwrap().is_empty());
    }

    #[test]
    fn frames_stay_under_the_limit_and_keep_order() {
        let small: Vec<_> = (0..10).map(|_| sized(10)).collect();
        assert_eq!(frames(small).len(), 1);
        let big = vec![sized(3 << 20), sized(3 << 20), sized(10), sized(5 << 20)];
        let f = frames(big);
        let sizes: Vec<usize> = f.iter().map(|fr| fr.len()).collect();
        assert_eq!(sizes, [1, 2, 1]);
        assert_eq!(f[1][1].inputs[0].data.len(), 10);
    }
}
