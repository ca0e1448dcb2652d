//! The operations both APIs offer (submit, get, list, cancel, agents, dead-letter
//! queue, health). REST and gRPC are thin translations over this.

use crate::clock::now_ms;
use crate::dispatcher::{AgentInfo, Dispatcher};
use baton_core::lifecycle::Command;
use baton_core::task::Limits;
use baton_core::{Error, ErrorCode, Status, TaskId, TaskSpec};
use baton_store::{
    ListFilter, Page, Store, SubmitOutcome, SyncMode, TaskRecord, Update, UpdateOutcome,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const MAX_LIST_LIMIT: usize = 1_000;
pub const DEFAULT_LIST_LIMIT: usize = 50;
/// Longest a client may wait for a task to finish in one request.
pub const MAX_WAIT_MS: u64 = 60_000;
/// How often a wait reads the task again, for finishes it is not told of
/// (another replica's).
const WAITER_POLL: Duration = Duration::from_millis(500);

/// When a wait of `wait_ms` (at most [`MAX_WAIT_MS`]) started now ends.
fn wait_deadline(wait_ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS))
}

pub struct App {
    pub store: Arc<dyn Store>,
    pub dispatcher: Arc<Dispatcher>,
    pub limits: Limits,
    pub max_batch_tasks: usize,
    pub started: Instant,
    pub engine: Arc<crate::workflows::Engine>,
    pub sla_targets: crate::sla::Targets,
    /// The last store ping and when it answered, so that probes do not hammer the store.
    pub readiness: std::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// How long a readiness answer is reused.
const READINESS_CACHE: Duration = Duration::from_secs(1);
/// Longest a readiness ping may take before the store counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A submission's outcome as the APIs report it.
pub struct Submitted {
    pub record: TaskRecord,
    pub created: bool,
}

impl App {
    /// Parses and validates one submission from JSON.
    pub fn parse(&self, value: &serde_json::Value, prefix: &str) -> Result<TaskSpec, Error> {
        let spec = TaskSpec::from_json(value, &self.limits, now_ms(), prefix)?;
        crate::scheduler::validate_hints(&spec.metadata)?;
        if spec
            .metadata
            .contains_key(baton_core::workflow::refs::INPUT_REFS)
        {
            // It would let a client read any task's output into its own.
            return Err(Error::invalid(
                "metadata.input_refs is reserved: workflow steps pass outputs by reference",
            )
            .with_field("metadata.input_refs"));
        }
        Ok(spec)
    }

    /// Load shedding (seed 001): past 90 % of the configured capacity the lowest
    /// priorities are refused with `resource_exhausted` and a retry hint, while
    /// higher ones still get in. Refused tasks are not stored.
    fn shed(&self, specs: Vec<TaskSpec>) -> (Vec<TaskSpec>, Vec<(usize, Error)>) {
        let Some((load, capacity, policy)) = self.dispatcher.held_load() else {
            return (specs, Vec::new());
        };
        let mut admitted = Vec::with_capacity(specs.len());
        let mut refused = Vec::new();
        let mut load = load;
        for (i, spec) in specs.into_iter().enumerate() {
            match policy.admit(spec.priority, load, capacity) {
                Ok(()) => {
                    load += 1;
                    admitted.push(spec);
                }
                Err(r) => refused.push((i, r.to_error())),
            }
        }
        if !refused.is_empty() {
            self.dispatcher
                .metrics()
                .submission_shed("overloaded", refused.len() as u64);
        }
        (admitted, refused)
    }

    /// Stores tasks durably. Every spec must already be valid. A conflicting id is
    /// reported per task; nothing else is affected by it.
    pub async fn submit(
        &self,
        specs: Vec<TaskSpec>,
    ) -> Result<Vec<Result<Submitted, Error>>, Error> {
        self.submit_with(specs, SyncMode::Now).await
    }

    /// [`App::submit`]; `SyncMode::Deferred` for a submitter that waits on for
    /// the tasks' ends.
    async fn submit_with(
        &self,
        specs: Vec<TaskSpec>,
        sync: SyncMode,
    ) -> Result<Vec<Result<Submitted, Error>>, Error> {
        if specs.len() > self.max_batch_tasks {
            return Err(Error::new(
                ErrorCode::PayloadTooLarge,
                format!("a batch may hold at most {} tasks", self.max_batch_tasks),
            ));
        }
        let held_gate = self.dispatcher.held_gate().await;
        let (specs, refused) = self.shed(specs);
        self.dispatcher.note_submitted(&specs);
        let outcomes = if specs.is_empty() {
            Vec::new()
        } else {
            // Tasks an idle agent can take start at once, in the same commit,
            // and are sent to it as soon as that commit is made: the agent's
            // work overlaps the sync the answer waits for.
            let starts = self
                .dispatcher
                .reserve_starts(&specs.iter().collect::<Vec<_>>());
            let submitted = self
                .dispatcher
                .write_and_send_at_commit(
                    vec![starts.clone()],
                    |outcomes| vec![Some(outcomes)],
                    |at_commit| {
                        self.store
                            .submit_starting_then(specs, starts, now_ms(), at_commit, sync)
                    },
                )
                .await;
            submitted?
        };
        self.dispatcher.held_added(
            outcomes
                .iter()
                .filter(|o| matches!(o, SubmitOutcome::Created(_)))
                .count() as u64,
        );
        drop(held_gate);
        let mut types: Vec<&str> = Vec::new();
        let mut out = outcomes
            .into_iter()
            .map(|o| match o {
                SubmitOutcome::Created(record) => Ok(Submitted {
                    record,
                    created: true,
                }),
                SubmitOutcome::Existing(record) => Ok(Submitted {
                    record,
                    created: false,
                }),
                SubmitOutcome::Conflict(record) => Err(id_taken(
                    record.spec.task_id.as_str(),
                    "with different content",
                )),
                // Task ids are one space with flow tasks' (a flow task's id is its run's).
                SubmitOutcome::FlowRun(task_id) => Err(id_taken(
                    task_id.as_str(),
                    &format!("as a run started from a flow (GET /api/v1/runs/{task_id})"),
                )),
            })
            .collect::<Vec<_>>();
        // Shed tasks take their place in the answer, in submission order.
        for (i, e) in refused {
            out.insert(i.min(out.len()), Err(e));
        }
        let mut created: Vec<(&str, u64)> = Vec::new();
        for o in out.iter().flatten().filter(|o| o.created) {
            let t = o.record.spec.task_type.as_str();
            match created.iter_mut().find(|c| c.0 == t) {
                Some(c) => c.1 += 1,
                None => created.push((t, 1)),
            }
        }
        self.dispatcher.metrics().tasks_submitted(created);
        for o in out.iter().flatten() {
            if o.created && o.record.state.status == Status::Waiting {
                self.engine.watch_dependencies(&o.record).await;
            } else if o.created
                && o.record.state.status == Status::Queued
                && !types.contains(&o.record.spec.task_type.as_str())
            {
                types.push(&o.record.spec.task_type);
            }
        }
        self.dispatcher.work_arrived(types);
        Ok(out)
    }

    /// Submits one task and then waits up to `wait_ms` for it to finish, in one
    /// call: the answer is the task as it stands when it finished or the wait ran
    /// out. The wait is taken before the submit, so an agent that finishes the
    /// task before the submit's own answer is not missed, and no second read is
    /// made when it finishes here. A task that ends quickly is made durable
    /// by one sync with its result instead of one sync each.
    pub async fn submit_wait(&self, spec: TaskSpec, wait_ms: u64) -> Result<Submitted, Error> {
        let id = spec.task_id.clone();
        let deadline = wait_deadline(wait_ms);
        let waiter = (wait_ms > 0).then(|| self.dispatcher.waiter(&id));
        let Submitted { record, created } = self
            .submit_with(
                vec![spec],
                if waiter.is_some() {
                    SyncMode::Deferred
                } else {
                    SyncMode::Now
                },
            )
            .await?
            .pop()
            .expect("one outcome per task")?;
        let record = match waiter {
            Some(waiter) => self.wait_for(&id, deadline, Some((waiter, record))).await?,
            None => record,
        };
        Ok(Submitted { record, created })
    }

    pub async fn get(&self, task_id: &str) -> Result<TaskRecord, Error> {
        let id = TaskId::parse(task_id)?;
        self.store
            .get(&id)
            .await?
            .ok_or_else(|| Error::not_found(format!("task {task_id} not found")))
    }

    /// Gets a task, first waiting up to `wait_ms` for it to reach a terminal status.
    pub async fn get_wait(&self, task_id: &str, wait_ms: u64) -> Result<TaskRecord, Error> {
        if wait_ms == 0 {
            return self.get(task_id).await;
        }
        let id = TaskId::parse(task_id)?;
        self.wait_for(&id, wait_deadline(wait_ms), None).await
    }

    /// Waits until `deadline` for task `id` to reach a terminal status; `known`
    /// is a wait already taken with the task as it stood after it (a submit's
    /// answer), otherwise the task is read after subscribing.
    async fn wait_for(
        &self,
        id: &TaskId,
        deadline: tokio::time::Instant,
        mut known: Option<(crate::dispatcher::Waiter<'_>, TaskRecord)>,
    ) -> Result<TaskRecord, Error> {
        loop {
            let (waiter, record) = match known.take() {
                Some(known) => known,
                None => {
                    // Subscribe before reading, so a finish in between is not missed.
                    let waiter = self.dispatcher.waiter(id);
                    (waiter, self.get(id.as_str()).await?)
                }
            };
            if record.state.status.is_terminal() {
                return Ok(record);
            }
            tokio::select! {
                // The finishing write's own record: no second read.
                finished = waiter => {
                    if let Ok(record) = finished {
                        return Ok(record);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return self.get(id.as_str()).await,
                // Terminal transitions made elsewhere (another replica) are seen by polling.
                _ = tokio::time::sleep(WAITER_POLL) => {}
            }
        }
    }

    pub async fn list(
        &self,
        status: Option<&str>,
        task_type: Option<&str>,
        limit: Option<usize>,
        cursor: Option<String>,
    ) -> Result<Page, Error> {
        let status = status
            .filter(|s| !s.is_empty())
            .map(Status::parse)
            .transpose()?;
        let task_type = task_type.filter(|s| !s.is_empty()).map(String::from);
        let limit = limit.unwrap_or(DEFAULT_LIST_LIMIT);
        if limit == 0 || limit > MAX_LIST_LIMIT {
            return Err(
                Error::invalid(format!("limit must be between 1 and {MAX_LIST_LIMIT}"))
                    .with_field("limit"),
            );
        }
        Ok(self
            .store
            .list(ListFilter {
                status,
                task_type,
                limit,
                cursor: cursor.filter(|c| !c.is_empty()),
            })
            .await?)
    }

    async fn command(&self, task_id: &str, command: Command) -> Result<TaskRecord, Error> {
        let id = TaskId::parse(task_id)?;
        let now = now_ms();
        let outcome = self
            .store
            .update(
                vec![Update {
                    task_id: id.clone(),
                    command,
                }],
                now,
            )
            .await?;
        match outcome.into_iter().next() {
            Some(UpdateOutcome::Applied { record, effects }) => {
                self.dispatcher.handle_effects(&record, &effects);
                Ok(record)
            }
            Some(UpdateOutcome::Refused(r)) => Err(r.into()),
            Some(UpdateOutcome::NotFound) | None => {
                Err(Error::not_found(format!("task {task_id} not found")))
            }
        }
    }

    pub async fn cancel(&self, task_id: &str, reason: Option<String>) -> Result<TaskRecord, Error> {
        self.command(
            task_id,
            Command::Cancel {
                reason: reason.or_else(|| Some("cancelled by request".into())),
            },
        )
        .await
    }

    pub async fn reprocess(&self, task_id: &str) -> Result<TaskRecord, Error> {
        self.command(task_id, Command::Reprocess)
            .await
            .map_err(|e| {
                if e.code == ErrorCode::FailedPrecondition {
                    Error::new(
                        ErrorCode::FailedPrecondition,
                        format!(
                            "task {task_id} is not in the dead-letter queue: {}",
                            e.message
                        ),
                    )
                } else {
                    e
                }
            })
    }

    pub fn agents(&self) -> Vec<AgentInfo> {
        self.dispatcher.agents()
    }

    /// Readiness: the store answers a ping (cached for [`READINESS_CACHE`]).
    /// `Err` says why not.
    pub async fn ready(&self) -> Result<(), String> {
        if let Some((at, result)) = &*self.readiness.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < READINESS_CACHE {
                return result.clone();
            }
        }
        let result = match tokio::time::timeout(PING_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "store did not answer a ping within {} ms",
                PING_TIMEOUT.as_millis()
            )),
        };
        *self.readiness.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), result.clone()));
        result
    }

    /// The Prometheus exposition, with the gauges read now.
    pub async fn metrics_text(&self, openmetrics: bool) -> String {
        let (counts, by_priority) =
            tokio::join!(self.store.counts(), self.store.queued_by_priority());
        let store_up = counts.is_ok() && by_priority.is_ok();
        let (by_type, agents_connected, in_flight) = self.dispatcher.load_by_type();
        let snapshot = crate::metrics::Snapshot {
            counts: counts.ok(),
            queued_by_priority: by_priority.ok(),
            store_up,
            by_type,
            agents_connected,
            in_flight,
            active_runs: self.engine.active_count() as u64,
        };
        self.dispatcher
            .metrics()
            .render(snapshot, now_ms(), openmetrics)
            .await
    }

    /// The SLA view: the window's statistics and each target's verdict.
    pub fn sla(&self) -> serde_json::Value {
        let stats = self.dispatcher.metrics().sla_stats(now_ms());
        let checks = crate::sla::evaluate(&stats, &self.sla_targets);
        let compliant = checks
            .iter()
            .all(|c| c.status != crate::sla::Verdict::Breach);
        serde_json::json!({
            "window_seconds": stats.window_seconds,
            "compliant": compliant,
            "values": stats,
            "targets": self.sla_targets,
            "checks": checks,
        })
    }

    /// Seed 000's health document. `healthy` is false when the store does not answer.
    pub async fn health(&self) -> serde_json::Value {
        let uptime = self.started.elapsed().as_secs();
        let store_ok = self.store.ping().await;
        let counts = self.store.counts().await;
        let healthy = store_ok.is_ok() && counts.is_ok();
        let mut stats = serde_json::Map::new();
        if let Ok(c) = &counts {
            let mut tasks = serde_json::Map::new();
            for s in Status::ALL {
                tasks.insert(
                    s.as_str().into(),
                    c.by_status.get(s.as_str()).copied().unwrap_or(0).into(),
                );
            }
            stats.insert("tasks".into(), tasks.into());
            stats.insert(
                "queued_by_type".into(),
                serde_json::to_value(&c.queued_by_type).unwrap_or_default(),
            );
        }
        stats.insert(
            "agents".into(),
            serde_json::json!({ "connected": self.dispatcher.agent_count() }),
        );
        stats.insert(
            "store".into(),
            match &store_ok {
                Ok(()) => serde_json::json!({"reachable": true}),
                Err(e) => serde_json::json!({"reachable": false, "error": e.to_string()}),
            },
        );
        stats.insert(
            "replica".into(),
            serde_json::to_value(self.dispatcher.leader().status(now_ms())).unwrap_or_default(),
        );
        serde_json::json!({
            "healthy": healthy,
            "version": VERSION,
            "uptime_seconds": uptime,
            "stats": stats,
        })
    }

    /// Starts the flow a task names when its type is a registered flow (seed 000's
    /// `report_generation`, `real_time_monitoring`): the task id becomes the run id.
    /// `None` when the type is a plain task type. Both APIs submit through here.
    pub async fn start_flow_task(&self, spec: &TaskSpec) -> Result<Option<(String, bool)>, Error> {
        if !self.engine.is_flow(&spec.task_type).await {
            return Ok(None);
        }
        if let Some(existing) = self.store.get(&spec.task_id).await? {
            // The id is a plain task's: a flow task may not shadow it.
            return Err(id_taken(
                spec.task_id.as_str(),
                &format!("as a task of type {}", existing.spec.task_type),
            ));
        }
        let (run, created) = self
            .engine
            .start(crate::workflows::StartRequest {
                run_id: Some(spec.task_id.to_string()),
                flow: Some((spec.task_type.clone(), None)),
                definition: None,
                input: crate::flow_tasks::run_input(spec),
                priority: spec.priority,
                on_failure: None,
                execution_mode: spec.execution_mode,
            })
            .await?;
        Ok(Some((run.run_id, created)))
    }

    /// A flow task in the gRPC task shape, if `task_id` is a run started from a flow.
    pub async fn flow_task_proto(
        &self,
        task_id: &str,
    ) -> Result<Option<baton_proto::v1::Task>, Error> {
        let (run, outputs) = match self.engine.get(task_id).await {
            Ok(found) => found,
            Err(e) if e.code == ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if run.flow.is_none() {
            return Ok(None);
        }
        let view = crate::view::run_view(&run, &outputs, &self.dispatcher.agents(), false);
        let view = crate::flow_tasks::task_view(&run, &outputs, view);
        Ok(Some(crate::flow_tasks::task_proto(&run, &view)))
    }

    /// A run started as a task (seed 000's flows of agents), in the task's shape.
    pub async fn flow_task_view(&self, run_id: &str) -> Result<serde_json::Value, Error> {
        let (run, outputs) = self.engine.get(run_id).await?;
        let view = crate::view::run_view(&run, &outputs, &self.dispatcher.agents(), false);
        Ok(crate::flow_tasks::task_view(&run, &outputs, view))
    }

    /// The task view of the run `task_id` if there is one with a flow, waiting up to
    /// `wait_ms` for it to finish.
    pub async fn flow_task_wait(
        &self,
        task_id: &str,
        wait_ms: u64,
    ) -> Result<Option<serde_json::Value>, Error> {
        let until = Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
        loop {
            let (run, _) = match self.engine.get(task_id).await {
                Ok(found) => found,
                Err(e) if e.code == ErrorCode::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if run.flow.is_none() {
                return Ok(None);
            }
            if !run.status.is_active() || Instant::now() >= until {
                return self.flow_task_view(task_id).await.map(Some);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The 409 for a submitted id that is taken: `how` says by what.
fn id_taken(task_id: &str, how: &str) -> Error {
    Error::conflict(format!("task {task_id} already exists {how}"))
        .with_details(serde_json::json!({"task_id": task_id}))
}
