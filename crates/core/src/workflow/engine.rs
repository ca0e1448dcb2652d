//! A workflow run as a pure state machine: `apply(run, command, env) -> Actions`.
//!
//! Steps become ordinary tasks (same queues, priorities, leases, retries and
//! dead-letter queue). The engine names the tasks to submit and to cancel; the server
//! writes the run and submits those tasks in one store transaction, and feeds every
//! finished task back as [`RunCommand::TaskFinished`]. Task ids are derived from the
//! run, step, generation and item (`<run>:<step>[~g<n>][:m<i>|:i<k>|:r<r>]`, `:undo`
//! for a compensation), so submitting again after a crash is idempotent.
//!
//! Outputs are not copied into the run: a step's output lives in its task (or, for
//! map, loop and scatter steps, is derived from its tasks' outputs), and the caller
//! supplies them through [`Outputs`]. A large one is not copied into the children's
//! tasks either: [`super::refs`] leaves a reference that the dispatcher fills in.

use super::def::{Aggregate, Compensation, FlowDef, OnFailure};
use super::expr::{self, EvalError, Scope};
use super::refs;
use crate::lifecycle::Status;
use crate::{InputPart, Millis, Priority, RetryPolicy, TaskId, TaskSpec};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Most events kept on a run; older step events are dropped first (saga events stay).
pub const MAX_EVENTS: usize = 2_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Paused,
    Compensating,
    Completed,
    Failed,
    Cancelled,
    Compensated,
    CompensationFailed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Paused => "paused",
            RunStatus::Compensating => "compensating",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Compensated => "compensated",
            RunStatus::CompensationFailed => "compensation_failed",
        }
    }
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RunStatus::Running | RunStatus::Paused | RunStatus::Compensating
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    fn is_done(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }
    /// Lets dependents start.
    fn satisfies(self) -> bool {
        matches!(self, StepStatus::Completed | StepStatus::Skipped)
    }
}

/// One task of a step (a map item, a loop iteration, a scatter replica, or the one task).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubTask {
    pub task_id: String,
    /// Last status seen; `None` until the task reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompStatus {
    Pending,
    Running,
    Completed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompRun {
    pub task_id: String,
    pub status: CompStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    pub id: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<SubTask>,
    /// Map: items in all; loop: iterations started.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub total: u32,
    /// Scatter `first`: the replica whose output is the step's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEvent {
    pub at_ms: Millis,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRef {
    pub name: String,
    pub version: u32,
}

/// The run document the server stores (with the definition beside it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowRef>,
    pub status: RunStatus,
    pub input: Value,
    pub on_failure: OnFailure,
    pub priority: Priority,
    /// Bumped by each retry from failure; part of the new tasks' ids.
    pub generation: u32,
    pub steps: Vec<StepRun>,
    /// Indexes of completed steps in completion order (saga compensation order).
    #[serde(default)]
    pub completed_order: Vec<usize>,
    #[serde(default)]
    pub pivot_passed: bool,
    #[serde(default)]
    pub critical_path: Vec<String>,
    #[serde(default)]
    pub events: Vec<RunEvent>,
    #[serde(default)]
    pub events_dropped: u64,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The definition; stored beside the run by the caller, not inside it. Shared,
    /// so that a copy of the run (the caller's snapshot before a write) is cheap.
    #[serde(skip)]
    pub def: Arc<FlowDef>,
    /// task id -> (step index, sub-task index; `usize::MAX` for the compensation).
    #[serde(skip)]
    index: HashMap<String, (usize, usize)>,
}

impl Default for FlowDef {
    fn default() -> Self {
        FlowDef {
            name: None,
            description: None,
            execution_mode: crate::ExecutionMode::Hybrid,
            on_failure: OnFailure::FailFast,
            saga: None,
            steps: Vec::new(),
            parameters: Map::new(),
            parents: Vec::new(),
            children: Vec::new(),
            index: HashMap::new(),
        }
    }
}

/// What a run is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    /// Schedule the first steps.
    Start,
    /// A task of this run reached a terminal status (its output is in [`Outputs`]).
    TaskFinished(TaskOutcome),
    /// Start no new steps; running ones finish.
    Pause,
    Resume,
    Cancel {
        reason: Option<String>,
    },
    /// Run the failed (and cancelled) steps again; completed ones are kept.
    Retry,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutcome {
    pub task_id: String,
    pub status: Status,
    pub error: Option<String>,
    pub attempts: u32,
    pub agent_id: Option<String>,
    pub duration_ms: Option<u64>,
}

/// Outputs of finished tasks, by task id.
pub trait Outputs: Sync {
    fn output(&self, task_id: &str) -> Option<Value>;
}

impl Outputs for HashMap<String, Value> {
    fn output(&self, task_id: &str) -> Option<Value> {
        self.get(task_id).cloned()
    }
}

/// Defaults for the tasks steps become.
#[derive(Clone)]
pub struct Env<'a> {
    pub now: Millis,
    pub outputs: &'a dyn Outputs,
    pub default_timeout_ms: u64,
    pub default_retry: &'a RetryPolicy,
}

/// What the caller must do after `apply`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Actions {
    pub submit: Vec<TaskSpec>,
    pub cancel: Vec<TaskId>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct RunRefusal(pub String);

impl From<RunRefusal> for crate::Error {
    fn from(r: RunRefusal) -> Self {
        crate::Error::new(crate::ErrorCode::FailedPrecondition, r.0)
    }
}

const COMP: usize = usize::MAX;

impl Run {
    /// A new run of `def`, not started yet (apply [`RunCommand::Start`]).
    pub fn new(
        run_id: String,
        def: FlowDef,
        flow: Option<FlowRef>,
        input: Value,
        priority: Priority,
        now: Millis,
    ) -> Run {
        let steps = def
            .steps
            .iter()
            .map(|s| StepRun {
                id: s.id.clone(),
                status: StepStatus::Pending,
                tasks: Vec::new(),
                total: 0,
                winner: None,
                started_at_ms: None,
                finished_at_ms: None,
                error: None,
                compensation: None,
            })
            .collect();
        let (critical_path, _) = def.critical_path(&[]);
        let mut run = Run {
            run_id,
            flow,
            status: RunStatus::Running,
            input,
            on_failure: def.on_failure,
            priority,
            generation: 0,
            steps,
            completed_order: Vec::new(),
            pivot_passed: false,
            critical_path,
            events: Vec::new(),
            events_dropped: 0,
            created_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
            error: None,
            def: Arc::new(def),
            index: HashMap::new(),
        };
        run.event(now, "run_created", None, None);
        run
    }

    /// Reads a stored run back with its definition.
    pub fn load(body: &Value, def: FlowDef) -> Result<Run, crate::Error> {
        let run: Run = serde_json::from_value(body.clone())
            .map_err(|e| crate::Error::internal(format!("stored run unreadable: {e}")))?;
        Run::attach(run, def)
    }

    /// A run decoded by the caller (straight from its stored text), joined to its
    /// definition.
    pub fn attach(mut run: Run, def: FlowDef) -> Result<Run, crate::Error> {
        if run.steps.len() != def.steps.len() {
            return Err(crate::Error::internal(
                "stored run does not match its definition",
            ));
        }
        run.def = Arc::new(def);
        run.rebuild_index();
        Ok(run)
    }

    fn rebuild_index(&mut self) {
        self.index.clear();
        for (i, s) in self.steps.iter().enumerate() {
            for (j, t) in s.tasks.iter().enumerate() {
                self.index.insert(t.task_id.clone(), (i, j));
            }
            if let Some(c) = &s.compensation {
                self.index.insert(c.task_id.clone(), (i, COMP));
            }
        }
    }

    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a run serialises")
    }

    /// Whether a task id belongs to this run's current tasks.
    pub fn owns(&self, task_id: &str) -> bool {
        self.index.contains_key(task_id)
    }

    /// Every task the run is waiting for (not finished as far as it knows).
    pub fn open_tasks(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.steps {
            for t in &s.tasks {
                if t.status.is_none_or(|st| !st.is_terminal()) {
                    out.push(t.task_id.clone());
                }
            }
            if let Some(c) = &s.compensation {
                if c.status == CompStatus::Running {
                    out.push(c.task_id.clone());
                }
            }
        }
        out
    }

    /// Tasks whose outputs later steps may read (completed ones).
    pub fn completed_tasks(&self) -> Vec<String> {
        self.steps
            .iter()
            .flat_map(|s| s.tasks.iter())
            .filter(|t| t.status == Some(Status::Completed))
            .map(|t| t.task_id.clone())
            .collect()
    }

    /// Completed and total steps, for progress.
    pub fn progress(&self) -> (usize, usize) {
        let done = self.steps.iter().filter(|s| s.status.is_done()).count();
        (done, self.steps.len())
    }

    fn event(&mut self, at: Millis, kind: &str, step: Option<&str>, message: Option<String>) {
        if self.events.len() >= MAX_EVENTS {
            // Drop the oldest step event; saga and run events are kept.
            if let Some(pos) = self.events.iter().position(|e| e.kind.starts_with("step_")) {
                self.events.remove(pos);
                self.events_dropped += 1;
            }
        }
        self.events.push(RunEvent {
            at_ms: at,
            kind: kind.into(),
            step: step.map(str::to_string),
            message,
        });
    }

    /// The output of step `i` as later steps see it (`None` if it has none).
    pub fn step_output(&self, i: usize, outputs: &dyn Outputs) -> Option<Value> {
        let s = &self.steps[i];
        if s.status != StepStatus::Completed {
            return None;
        }
        let def = &self.def.steps[i];
        if def.map.is_some() {
            return Some(Value::Array(
                s.tasks
                    .iter()
                    .map(|t| outputs.output(&t.task_id).unwrap_or(Value::Null))
                    .collect(),
            ));
        }
        if let Some(sc) = &def.scatter {
            let ok: Vec<Value> = s
                .tasks
                .iter()
                .filter(|t| t.status == Some(Status::Completed))
                .map(|t| outputs.output(&t.task_id).unwrap_or(Value::Null))
                .collect();
            return match sc.aggregate {
                Aggregate::All => Some(Value::Array(ok)),
                Aggregate::First => s
                    .winner
                    .and_then(|w| s.tasks.get(w))
                    .and_then(|t| outputs.output(&t.task_id)),
                Aggregate::Average | Aggregate::Majority => {
                    aggregate(sc.aggregate, sc.field.as_deref(), &ok, s.tasks.len()).ok()
                }
            };
        }
        s.tasks.last().and_then(|t| outputs.output(&t.task_id))
    }
}

/// Average or majority over the responses' `field`.
fn aggregate(
    kind: Aggregate,
    field: Option<&str>,
    responses: &[Value],
    asked: usize,
) -> Result<Value, EvalError> {
    let pick = |v: &Value| -> Result<Value, EvalError> {
        match field {
            None => Ok(v.clone()),
            Some(f) => {
                let path = expr::parse_path(&format!("output.{f}"))
                    .map_err(|e| EvalError(format!("scatter field {f:?}: {e}")))?;
                expr::resolve(&path, &OneOutput(v))
            }
        }
    };
    let values = responses.iter().map(pick).collect::<Result<Vec<_>, _>>()?;
    match kind {
        Aggregate::Average => {
            let nums = values
                .iter()
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        EvalError(format!(
                            "average needs numbers, but a response gave a {}",
                            expr::type_name(v)
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mean = nums.iter().sum::<f64>() / nums.len().max(1) as f64;
            Ok(json!({"value": mean, "responses": nums.len(), "asked": asked}))
        }
        _ => {
            let mut tally: Vec<(Value, usize)> = Vec::new();
            for v in values {
                match tally.iter_mut().find(|(k, _)| *k == v) {
                    Some((_, n)) => *n += 1,
                    None => tally.push((v, 1)),
                }
            }
            let best = tally.iter().map(|(_, n)| *n).max().unwrap_or(0);
            let winner = tally
                .iter()
                .find(|(_, n)| *n == best)
                .map(|(v, _)| v.clone())
                .unwrap_or(Value::Null);
            let total: usize = tally.iter().map(|(_, n)| n).sum();
            Ok(json!({"value": winner, "votes": best, "responses": total, "asked": asked}))
        }
    }
}

struct OneOutput<'a>(&'a Value);
impl Scope for OneOutput<'_> {
    fn root(&self, name: &str) -> Option<Value> {
        (name == "output").then(|| self.0.clone())
    }
    fn step_output(&self, _: &str) -> Option<Value> {
        None
    }
}

/// What a step's templates and conditions see.
struct StepScope<'a> {
    run: &'a Run,
    env: &'a Env<'a>,
    extra: Map<String, Value>,
}

impl Scope for StepScope<'_> {
    fn root(&self, name: &str) -> Option<Value> {
        if name == "input" {
            let mut base = self.run.def.parameters.clone();
            return Some(match &self.run.input {
                Value::Object(m) => {
                    base.extend(m.clone());
                    Value::Object(base)
                }
                Value::Null => Value::Object(base),
                other => other.clone(),
            });
        }
        self.extra.get(name).cloned()
    }
    fn step_output(&self, step: &str) -> Option<Value> {
        let &i = self.run.def.index.get(step)?;
        self.run.step_output(i, self.env.outputs)
    }
}

/// Applies a command. Refuses commands that make no sense in the run's status.
pub fn apply(run: &mut Run, command: RunCommand, env: &Env<'_>) -> Result<Actions, RunRefusal> {
    let mut acts = Actions::default();
    let now = env.now;
    match command {
        RunCommand::Start => {
            if run.status != RunStatus::Running
                || run.steps.iter().any(|s| s.status != StepStatus::Pending)
            {
                return Err(RunRefusal("the run has already started".into()));
            }
            run.event(now, "run_started", None, None);
            schedule(run, env, &mut acts, (0..run.steps.len()).collect());
        }
        RunCommand::TaskFinished(outcome) => task_finished(run, outcome, env, &mut acts),
        RunCommand::Pause => {
            if run.status != RunStatus::Running {
                return Err(RunRefusal(format!(
                    "cannot pause a run that is {}",
                    run.status.as_str()
                )));
            }
            run.status = RunStatus::Paused;
            run.event(now, "run_paused", None, None);
        }
        RunCommand::Resume => {
            if run.status != RunStatus::Paused {
                return Err(RunRefusal(format!(
                    "cannot resume a run that is {}",
                    run.status.as_str()
                )));
            }
            run.status = RunStatus::Running;
            run.event(now, "run_resumed", None, None);
            schedule(run, env, &mut acts, (0..run.steps.len()).collect());
        }
        RunCommand::Cancel { reason } => {
            if !run.status.is_active() {
                return Err(RunRefusal(format!(
                    "cannot cancel a run that is {}",
                    run.status.as_str()
                )));
            }
            acts.cancel
                .extend(run.open_tasks().into_iter().map(TaskId::from_trusted));
            for s in &mut run.steps {
                if !s.status.is_done() {
                    s.status = StepStatus::Cancelled;
                    s.finished_at_ms = Some(now);
                }
                if let Some(c) = &mut s.compensation {
                    if matches!(c.status, CompStatus::Pending | CompStatus::Running) {
                        c.status = CompStatus::Failed;
                        c.error = Some("run cancelled".into());
                    }
                }
            }
            run.status = RunStatus::Cancelled;
            run.finished_at_ms = Some(now);
            run.error = reason.clone().or(Some("cancelled".into()));
            run.event(now, "run_cancelled", None, reason);
        }
        RunCommand::Retry => {
            if !matches!(
                run.status,
                RunStatus::Failed
                    | RunStatus::Cancelled
                    | RunStatus::Compensated
                    | RunStatus::CompensationFailed
            ) {
                return Err(RunRefusal(format!(
                    "only a failed or cancelled run can be retried; this one is {}",
                    run.status.as_str()
                )));
            }
            run.generation += 1;
            let compensated: Vec<usize> = (0..run.steps.len())
                .filter(|&i| {
                    run.steps[i]
                        .compensation
                        .as_ref()
                        .is_some_and(|c| c.status == CompStatus::Completed)
                })
                .collect();
            for (i, s) in run.steps.iter_mut().enumerate() {
                // Compensated steps were undone: they run again too.
                let undone = compensated.contains(&i);
                if matches!(s.status, StepStatus::Failed | StepStatus::Cancelled) || undone {
                    s.status = StepStatus::Pending;
                    s.tasks.clear();
                    s.total = 0;
                    s.winner = None;
                    s.started_at_ms = None;
                    s.finished_at_ms = None;
                    s.error = None;
                }
                s.compensation = None;
            }
            run.completed_order
                .retain(|i| run.steps[*i].status == StepStatus::Completed);
            run.rebuild_index();
            run.status = RunStatus::Running;
            run.finished_at_ms = None;
            run.error = None;
            run.event(
                now,
                "run_retried",
                None,
                Some(format!("generation {}", run.generation)),
            );
            schedule(run, env, &mut acts, (0..run.steps.len()).collect());
        }
    }
    run.updated_at_ms = now;
    Ok(acts)
}

fn base_task_id(run: &Run, i: usize) -> String {
    let mut id = format!("{}:{}", run.run_id, run.steps[i].id);
    if run.generation > 0 {
        id.push_str(&format!("~g{}", run.generation));
    }
    id
}

fn make_task(
    run: &Run,
    i: usize,
    task_id: String,
    input: Value,
    extra: &[(&str, Value)],
    env: &Env<'_>,
) -> TaskSpec {
    let def = &run.def.steps[i];
    let mut metadata = def.metadata.clone();
    metadata.insert("run_id".into(), Value::String(run.run_id.clone()));
    metadata.insert("step_id".into(), Value::String(def.id.clone()));
    if let Some(f) = &run.flow {
        metadata.insert("flow".into(), Value::String(f.name.clone()));
    }
    if !def.resources.is_empty() {
        metadata.insert(
            "resources".into(),
            serde_json::to_value(&def.resources).unwrap_or(Value::Null),
        );
    }
    for (k, v) in extra {
        metadata.insert((*k).into(), v.clone());
    }
    TaskSpec {
        task_id: TaskId::from_trusted(task_id),
        task_type: def.task_type.clone(),
        inputs: vec![InputPart {
            name: Some("input".into()),
            ..InputPart::json(input)
        }],
        priority: def.priority.unwrap_or(run.priority),
        timeout_ms: def.timeout_ms.unwrap_or(env.default_timeout_ms),
        metadata,
        retry: def
            .retry
            .clone()
            .unwrap_or_else(|| env.default_retry.clone()),
        deadline_ms: None,
        execution_mode: None,
        dependencies: Vec::new(),
        run_id: Some(run.run_id.clone()),
    }
}

/// Metadata entries a step's task gets besides the step's own.
type Extra = Vec<(&'static str, Value)>;

/// Renders a step's input for its task. A large value that is exactly one
/// reference to the output of a step whose output is one task's (not a map or
/// scatter step) stays a reference, filled in at dispatch: the metadata entry
/// returned names the task and the path (see [`super::refs`]).
fn render_input(scope: &StepScope<'_>, template: &Value) -> Result<(Value, Extra), EvalError> {
    let run = scope.run;
    let task_of = |step: &str| {
        let &k = run.def.index.get(step)?;
        let d = &run.def.steps[k];
        if d.map.is_some() || d.scatter.is_some() {
            return None;
        }
        run.steps[k].tasks.last().map(|t| t.task_id.clone())
    };
    let (input, refs) = refs::render(template, scope, &task_of, refs::BY_REFERENCE_BYTES)?;
    if refs.is_empty() {
        return Ok((input, Vec::new()));
    }
    let refs = serde_json::to_value(refs).unwrap_or(Value::Null);
    Ok((input, vec![(refs::INPUT_REFS, refs)]))
}

/// Cached steps share one task per (task type, input): a later identical step, in this
/// run or another, finds it completed and reuses its output.
fn cache_task_id(task_type: &str, input: &Value) -> String {
    let text = format!("{task_type}\u{0}{input}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("cache:{task_type}:{h:016x}")
}

fn add_task(run: &mut Run, i: usize, spec: TaskSpec, acts: &mut Actions) {
    let id = spec.task_id.as_str().to_string();
    let j = run.steps[i].tasks.len();
    run.steps[i].tasks.push(SubTask {
        task_id: id.clone(),
        status: None,
        attempts: 0,
        agent_id: None,
        error: None,
        duration_ms: None,
    });
    run.index.insert(id, (i, j));
    acts.submit.push(spec);
}

/// Starts every pending step in `candidates` (and, transitively, their dependents
/// that become decidable) whose parents are all done.
fn schedule(run: &mut Run, env: &Env<'_>, acts: &mut Actions, candidates: Vec<usize>) {
    if run.status != RunStatus::Running {
        return;
    }
    let critical: BTreeSet<usize> = run
        .critical_path
        .iter()
        .filter_map(|id| run.def.index.get(id).copied())
        .collect();
    let mut queue: Vec<usize> = candidates;
    // Critical steps first among the ones that start together (FIFO within a priority).
    queue.sort_by_key(|i| (!critical.contains(i), *i));
    queue.reverse();
    let mut seen = BTreeSet::new();
    while let Some(i) = queue.pop() {
        if run.steps[i].status != StepStatus::Pending || !seen.insert(i) {
            continue;
        }
        let parents = run.def.parents[i].clone();
        if let Some(&bad) = parents.iter().find(|&&k| {
            matches!(
                run.steps[k].status,
                StepStatus::Failed | StepStatus::Cancelled
            )
        }) {
            let why = format!("dependency {} did not complete", run.steps[bad].id);
            finish_step(run, i, StepStatus::Cancelled, Some(why), env.now);
            push_children(run, i, &mut queue, &mut seen);
            continue;
        }
        if !parents.iter().all(|&k| run.steps[k].status.satisfies()) {
            continue;
        }
        start_step(run, i, env, acts);
        if run.steps[i].status.is_done() {
            push_children(run, i, &mut queue, &mut seen);
            if run.steps[i].status == StepStatus::Failed && run.on_failure == OnFailure::FailFast {
                fail_run(run, i, env, acts);
                return;
            }
        }
    }
    check_done(run, env, acts);
}

fn push_children(run: &Run, i: usize, queue: &mut Vec<usize>, seen: &mut BTreeSet<usize>) {
    for &c in &run.def.children[i] {
        seen.remove(&c);
        queue.push(c);
    }
}

fn finish_step(run: &mut Run, i: usize, status: StepStatus, error: Option<String>, now: Millis) {
    let s = &mut run.steps[i];
    s.status = status;
    s.finished_at_ms = Some(now);
    s.error = error.clone();
    let id = s.id.clone();
    let kind = match status {
        StepStatus::Completed => "step_completed",
        StepStatus::Failed => "step_failed",
        StepStatus::Skipped => "step_skipped",
        StepStatus::Cancelled => "step_cancelled",
        _ => "step_changed",
    };
    if status == StepStatus::Completed {
        run.completed_order.push(i);
        if run.def.steps[i].pivot {
            run.pivot_passed = true;
            run.event(
                now,
                "saga_pivot_passed",
                Some(&id),
                Some("no rollback from here on".into()),
            );
        }
    }
    run.event(now, kind, Some(&id), error);
}

fn start_step(run: &mut Run, i: usize, env: &Env<'_>, acts: &mut Actions) {
    let now = env.now;
    let def = run.def.steps[i].clone();
    run.steps[i].started_at_ms = Some(now);
    let scope = StepScope {
        run,
        env,
        extra: Map::new(),
    };
    if let Some(cond) = &def.when_expr {
        match expr::eval_condition(cond, &scope) {
            Ok(true) => {}
            Ok(false) => {
                finish_step(
                    run,
                    i,
                    StepStatus::Skipped,
                    Some(format!(
                        "condition {:?} is false",
                        def.when.unwrap_or_default()
                    )),
                    now,
                );
                return;
            }
            Err(e) => {
                finish_step(
                    run,
                    i,
                    StepStatus::Failed,
                    Some(format!("condition: {e}")),
                    now,
                );
                return;
            }
        }
    }
    let base = base_task_id(run, i);
    run.steps[i].status = StepStatus::Running;
    run.event(now, "step_started", Some(&def.id), None);
    if let Some(m) = &def.map {
        let items = match m.path.as_ref().map(|p| {
            expr::resolve(
                p,
                &StepScope {
                    run,
                    env,
                    extra: Map::new(),
                },
            )
        }) {
            Some(Ok(Value::Array(items))) => items,
            Some(Ok(other)) => {
                let msg = format!(
                    "map.over {} gave a {}, not an array",
                    m.over,
                    expr::type_name(&other)
                );
                finish_step(run, i, StepStatus::Failed, Some(msg), now);
                return;
            }
            Some(Err(e)) => {
                finish_step(
                    run,
                    i,
                    StepStatus::Failed,
                    Some(format!("map.over: {e}")),
                    now,
                );
                return;
            }
            None => Vec::new(),
        };
        run.steps[i].total = items.len() as u32;
        if items.is_empty() {
            finish_step(run, i, StepStatus::Completed, None, now);
            return;
        }
        let limit = if m.max_parallel == 0 {
            items.len()
        } else {
            m.max_parallel as usize
        };
        for (k, item) in items.into_iter().enumerate().take(limit) {
            if !start_map_item(run, i, k, item, &base, env, acts) {
                return;
            }
        }
        return;
    }
    if def.loop_.is_some() {
        run.steps[i].total = 1;
        start_iteration(run, i, 0, &base, env, acts);
        return;
    }
    // A cached step's id is a hash of its whole input: no references there.
    let cached = def
        .cache_strategy
        .is_some_and(|c| c != super::def::CacheStrategy::None);
    let scope = StepScope {
        run,
        env,
        extra: Map::new(),
    };
    let rendered = if cached {
        expr::render(&def.input, &scope).map(|v| (v, Vec::new()))
    } else {
        render_input(&scope, &def.input)
    };
    let (input, by_ref) = match rendered {
        Ok(v) => v,
        Err(e) => {
            finish_step(run, i, StepStatus::Failed, Some(format!("input: {e}")), now);
            return;
        }
    };
    if let Some(sc) = &def.scatter {
        run.steps[i].total = sc.count;
        for r in 0..sc.count {
            let mut extra = by_ref.clone();
            extra.push(("replica", json!(r)));
            let spec = make_task(run, i, format!("{base}:r{r}"), input.clone(), &extra, env);
            add_task(run, i, spec, acts);
        }
        return;
    }
    let id = if cached {
        cache_task_id(&def.task_type, &input)
    } else {
        base
    };
    let spec = make_task(run, i, id, input, &by_ref, env);
    add_task(run, i, spec, acts);
}

/// Renders and submits map item `k`; fails the step (returning false) on a bad input.
fn start_map_item(
    run: &mut Run,
    i: usize,
    k: usize,
    item: Value,
    base: &str,
    env: &Env<'_>,
    acts: &mut Actions,
) -> bool {
    let extra: Map<String, Value> = [("item".to_string(), item), ("index".to_string(), json!(k))]
        .into_iter()
        .collect();
    let template = run.def.steps[i].input.clone();
    let (input, mut by_ref) = if template.is_null() {
        (extra["item"].clone(), Vec::new())
    } else {
        match render_input(&StepScope { run, env, extra }, &template) {
            Ok(v) => v,
            Err(e) => {
                finish_step(
                    run,
                    i,
                    StepStatus::Failed,
                    Some(format!("input of item {k}: {e}")),
                    env.now,
                );
                cancel_open(run, i, acts);
                return false;
            }
        }
    };
    by_ref.push(("item_index", json!(k)));
    let spec = make_task(run, i, format!("{base}:m{k}"), input, &by_ref, env);
    add_task(run, i, spec, acts);
    true
}

fn start_iteration(run: &mut Run, i: usize, k: u32, base: &str, env: &Env<'_>, acts: &mut Actions) {
    let previous = run.steps[i]
        .tasks
        .last()
        .and_then(|t| env.outputs.output(&t.task_id))
        .unwrap_or(Value::Null);
    let extra: Map<String, Value> = [
        ("iteration".to_string(), json!(k)),
        ("previous".to_string(), previous),
    ]
    .into_iter()
    .collect();
    let template = run.def.steps[i].input.clone();
    match render_input(&StepScope { run, env, extra }, &template) {
        Ok((input, mut by_ref)) => {
            by_ref.push(("iteration", json!(k)));
            let spec = make_task(run, i, format!("{base}:i{k}"), input, &by_ref, env);
            add_task(run, i, spec, acts);
        }
        Err(e) => finish_step(
            run,
            i,
            StepStatus::Failed,
            Some(format!("input of iteration {k}: {e}")),
            env.now,
        ),
    }
}

fn cancel_open(run: &Run, i: usize, acts: &mut Actions) {
    for t in &run.steps[i].tasks {
        if t.status.is_none_or(|s| !s.is_terminal()) {
            acts.cancel.push(TaskId::from_trusted(t.task_id.clone()));
        }
    }
}

fn task_finished(run: &mut Run, o: TaskOutcome, env: &Env<'_>, acts: &mut Actions) {
    let now = env.now;
    let Some(&(i, j)) = run.index.get(&o.task_id) else {
        return; // not (or no longer) one of ours: a task of an earlier generation
    };
    if j == COMP {
        compensation_finished(run, i, o, env, acts);
        return;
    }
    {
        let t = &mut run.steps[i].tasks[j];
        if t.status.is_some_and(|s| s.is_terminal()) {
            return; // already seen
        }
        t.status = Some(o.status);
        t.attempts = o.attempts;
        t.agent_id = o.agent_id.clone();
        t.error = o.error.clone();
        t.duration_ms = o.duration_ms;
    }
    if run.steps[i].status != StepStatus::Running {
        check_done(run, env, acts);
        return;
    }
    let def = run.def.steps[i].clone();
    let ok = o.status == Status::Completed;
    let failure = || {
        format!(
            "task {} ended {}{}",
            o.task_id,
            o.status,
            o.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )
    };
    let base = base_task_id(run, i);
    let mut outcome: Option<(StepStatus, Option<String>)> = None;
    if let Some(m) = &def.map {
        if !ok {
            cancel_open(run, i, acts);
            outcome = Some((StepStatus::Failed, Some(format!("item {j}: {}", failure()))));
        } else {
            let started = run.steps[i].tasks.len();
            let total = run.steps[i].total as usize;
            if started < total {
                // A slot freed under max_parallel: start the next item.
                let items = m.path.as_ref().map(|p| {
                    expr::resolve(
                        p,
                        &StepScope {
                            run,
                            env,
                            extra: Map::new(),
                        },
                    )
                });
                match items {
                    Some(Ok(Value::Array(items))) if items.len() == total => {
                        let item = items[started].clone();
                        start_map_item(run, i, started, item, &base, env, acts);
                    }
                    _ => {
                        cancel_open(run, i, acts);
                        outcome = Some((
                            StepStatus::Failed,
                            Some("map.over changed while the step ran".into()),
                        ));
                    }
                }
            } else if run.steps[i]
                .tasks
                .iter()
                .all(|t| t.status == Some(Status::Completed))
            {
                outcome = Some((StepStatus::Completed, None));
            }
        }
    } else if let Some(l) = &def.loop_ {
        if !ok {
            outcome = Some((
                StepStatus::Failed,
                Some(format!("iteration {j}: {}", failure())),
            ));
        } else {
            let output = env.outputs.output(&o.task_id).unwrap_or(Value::Null);
            let extra: Map<String, Value> = [
                ("output".to_string(), output),
                ("iteration".to_string(), json!(j)),
            ]
            .into_iter()
            .collect();
            let done = match &l.until_expr {
                None => Ok(false),
                Some(e) => expr::eval_condition(e, &StepScope { run, env, extra }),
            };
            match done {
                Ok(true) => outcome = Some((StepStatus::Completed, None)),
                Ok(false) if (j as u32) + 1 < l.max_iterations => {
                    run.steps[i].total = j as u32 + 2;
                    start_iteration(run, i, j as u32 + 1, &base, env, acts);
                }
                Ok(false) if l.until_expr.is_none() => outcome = Some((StepStatus::Completed, None)),
                Ok(false) => {
                    outcome = Some((
                        StepStatus::Failed,
                        Some(format!("loop ran {} iterations (max_iterations) and its until condition never held", l.max_iterations)),
                    ))
                }
                Err(e) => outcome = Some((StepStatus::Failed, Some(format!("loop.until: {e}")))),
            }
        }
    } else if let Some(sc) = &def.scatter {
        let s = &run.steps[i];
        let good = s
            .tasks
            .iter()
            .filter(|t| t.status == Some(Status::Completed))
            .count() as u32;
        let finished = s
            .tasks
            .iter()
            .filter(|t| t.status.is_some_and(|st| st.is_terminal()))
            .count() as u32;
        let open = sc.count - finished;
        if sc.aggregate == Aggregate::First && ok && s.winner.is_none() {
            run.steps[i].winner = Some(j);
            cancel_open(run, i, acts);
            outcome = Some((StepStatus::Completed, None));
        } else if good + open < sc.min_responses {
            cancel_open(run, i, acts);
            outcome = Some((
                StepStatus::Failed,
                Some(format!(
                    "scatter-gather got {good} of {} responses; min_responses is {}",
                    sc.count, sc.min_responses
                )),
            ));
        } else if open == 0 {
            if matches!(sc.aggregate, Aggregate::Average | Aggregate::Majority) {
                let responses: Vec<Value> = s
                    .tasks
                    .iter()
                    .filter(|t| t.status == Some(Status::Completed))
                    .map(|t| env.outputs.output(&t.task_id).unwrap_or(Value::Null))
                    .collect();
                outcome = Some(
                    match aggregate(
                        sc.aggregate,
                        sc.field.as_deref(),
                        &responses,
                        sc.count as usize,
                    ) {
                        Ok(_) => (StepStatus::Completed, None),
                        Err(e) => (StepStatus::Failed, Some(format!("aggregate: {e}"))),
                    },
                );
            } else {
                outcome = Some((StepStatus::Completed, None));
            }
        }
    } else {
        outcome = Some(if ok {
            (StepStatus::Completed, None)
        } else {
            (StepStatus::Failed, Some(failure()))
        });
    }
    let Some((status, error)) = outcome else {
        return;
    };
    finish_step(run, i, status, error, now);
    if status == StepStatus::Failed && run.on_failure == OnFailure::FailFast {
        fail_run(run, i, env, acts);
        return;
    }
    let children = run.def.children[i].clone();
    schedule(run, env, acts, children);
}

/// Fail-fast: stop everything, then compensate (saga before its pivot) or fail.
fn fail_run(run: &mut Run, failed: usize, env: &Env<'_>, acts: &mut Actions) {
    let now = env.now;
    for k in 0..run.steps.len() {
        match run.steps[k].status {
            StepStatus::Running => {
                cancel_open(run, k, acts);
                finish_step(
                    run,
                    k,
                    StepStatus::Cancelled,
                    Some("the run failed".into()),
                    now,
                );
            }
            StepStatus::Pending => {
                run.steps[k].status = StepStatus::Cancelled;
                run.steps[k].error = Some("the run failed".into());
            }
            _ => {}
        }
    }
    run.error = Some(format!(
        "step {} failed: {}",
        run.steps[failed].id,
        run.steps[failed].error.clone().unwrap_or_default()
    ));
    end_failed(run, env, acts);
}

/// The run has failed steps and nothing left to run.
fn end_failed(run: &mut Run, env: &Env<'_>, acts: &mut Actions) {
    let now = env.now;
    if let Some(strategy) = run.def.saga {
        if run.pivot_passed {
            run.event(
                now,
                "saga_no_compensation",
                None,
                Some("a pivot step completed: no rollback".into()),
            );
        } else {
            start_compensation(run, strategy, env, acts);
            return;
        }
    }
    run.status = RunStatus::Failed;
    run.finished_at_ms = Some(now);
    run.event(now, "run_failed", None, run.error.clone());
}

fn check_done(run: &mut Run, env: &Env<'_>, acts: &mut Actions) {
    if run.status != RunStatus::Running || run.steps.iter().any(|s| !s.status.is_done()) {
        return;
    }
    if let Some(i) = run
        .steps
        .iter()
        .position(|s| s.status == StepStatus::Failed)
    {
        if run.error.is_none() {
            run.error = Some(format!(
                "step {} failed: {}",
                run.steps[i].id,
                run.steps[i].error.clone().unwrap_or_default()
            ));
        }
        end_failed(run, env, acts);
        return;
    }
    run.status = RunStatus::Completed;
    run.finished_at_ms = Some(env.now);
    run.event(env.now, "run_completed", None, None);
}

fn start_compensation(run: &mut Run, strategy: Compensation, env: &Env<'_>, acts: &mut Actions) {
    let now = env.now;
    let targets: Vec<usize> = match strategy {
        Compensation::Selective => (0..run.steps.len())
            .filter(|&i| {
                run.steps[i].status == StepStatus::Failed && !run.steps[i].tasks.is_empty()
            })
            .collect(),
        _ => run.completed_order.clone(),
    };
    let targets: Vec<usize> = targets
        .into_iter()
        .filter(|&i| run.def.steps[i].compensation.is_some())
        .collect();
    run.status = RunStatus::Compensating;
    run.event(
        now,
        "saga_compensation_started",
        None,
        Some(
            format!(
                "strategy {strategy:?}, {} steps to compensate",
                targets.len()
            )
            .to_lowercase(),
        ),
    );
    for &i in &targets {
        let id = format!("{}:undo", base_task_id(run, i));
        run.steps[i].compensation = Some(CompRun {
            task_id: id.clone(),
            status: CompStatus::Pending,
            error: None,
        });
        run.index.insert(id, (i, COMP));
    }
    advance_compensation(run, env, acts);
}

/// Starts the compensations the strategy allows now; ends the saga when all are done.
fn advance_compensation(run: &mut Run, env: &Env<'_>, acts: &mut Actions) {
    let now = env.now;
    let strategy = run.def.saga.unwrap_or_default();
    let pending: Vec<usize> = (0..run.steps.len())
        .filter(|&i| {
            run.steps[i]
                .compensation
                .as_ref()
                .is_some_and(|c| c.status == CompStatus::Pending)
        })
        .collect();
    let running = run
        .steps
        .iter()
        .filter(|s| {
            s.compensation
                .as_ref()
                .is_some_and(|c| c.status == CompStatus::Running)
        })
        .count();
    let order_of = |i: usize| {
        run.completed_order
            .iter()
            .position(|&k| k == i)
            .unwrap_or(usize::MAX)
    };
    let start: Vec<usize> = match strategy {
        Compensation::Backward | Compensation::Forward => {
            if running > 0 {
                Vec::new()
            } else {
                let pick = if strategy == Compensation::Backward {
                    pending.iter().copied().max_by_key(|&i| order_of(i))
                } else {
                    pending.iter().copied().min_by_key(|&i| order_of(i))
                };
                pick.into_iter().collect()
            }
        }
        Compensation::Parallel | Compensation::Selective => pending.clone(),
        Compensation::Cascade => {
            let descendants_done = |i: usize| -> bool {
                let mut stack = run.def.children[i].clone();
                let mut seen = BTreeSet::new();
                while let Some(c) = stack.pop() {
                    if !seen.insert(c) {
                        continue;
                    }
                    if run.steps[c].compensation.as_ref().is_some_and(|cp| {
                        matches!(cp.status, CompStatus::Pending | CompStatus::Running)
                    }) {
                        return false;
                    }
                    stack.extend(run.def.children[c].iter().copied());
                }
                true
            };
            pending
                .iter()
                .copied()
                .filter(|&i| descendants_done(i))
                .collect()
        }
    };
    for i in start {
        let comp = run.def.steps[i]
            .compensation
            .clone()
            .expect("targets have compensations");
        let output = run.step_output(i, env.outputs).unwrap_or(Value::Null);
        let input = if comp.input.is_null() {
            Ok(json!({"step": run.steps[i].id, "run_id": run.run_id, "output": output}))
        } else {
            let extra: Map<String, Value> = [("output".to_string(), output)].into_iter().collect();
            expr::render(&comp.input, &StepScope { run, env, extra })
        };
        let id = run.steps[i]
            .compensation
            .as_ref()
            .map(|c| c.task_id.clone())
            .unwrap_or_default();
        let step_id = run.steps[i].id.clone();
        match input {
            Ok(input) => {
                let mut spec = make_task(run, i, id, input, &[("compensation", json!(true))], env);
                spec.task_type = comp.task_type.clone();
                acts.submit.push(spec);
                if let Some(c) = &mut run.steps[i].compensation {
                    c.status = CompStatus::Running;
                }
                run.event(
                    now,
                    "saga_compensating",
                    Some(&step_id),
                    Some(comp.task_type),
                );
            }
            Err(e) => {
                if let Some(c) = &mut run.steps[i].compensation {
                    c.status = CompStatus::Failed;
                    c.error = Some(format!("input: {e}"));
                }
                run.event(
                    now,
                    "saga_compensation_failed",
                    Some(&step_id),
                    Some(format!("input: {e}")),
                );
            }
        }
    }
    let open = run.steps.iter().any(|s| {
        s.compensation
            .as_ref()
            .is_some_and(|c| matches!(c.status, CompStatus::Pending | CompStatus::Running))
    });
    if open {
        return;
    }
    let failed = run.steps.iter().any(|s| {
        s.compensation
            .as_ref()
            .is_some_and(|c| c.status == CompStatus::Failed)
    });
    run.status = if failed {
        RunStatus::CompensationFailed
    } else {
        RunStatus::Compensated
    };
    run.finished_at_ms = Some(now);
    run.event(
        now,
        if failed {
            "saga_aborted"
        } else {
            "saga_compensated"
        },
        None,
        run.error.clone(),
    );
}

fn compensation_finished(
    run: &mut Run,
    i: usize,
    o: TaskOutcome,
    env: &Env<'_>,
    acts: &mut Actions,
) {
    let step_id = run.steps[i].id.clone();
    let Some(c) = &mut run.steps[i].compensation else {
        return;
    };
    if c.status != CompStatus::Running {
        return;
    }
    if o.status == Status::Completed {
        c.status = CompStatus::Completed;
        run.event(env.now, "saga_compensated_step", Some(&step_id), None);
    } else {
        c.status = CompStatus::Failed;
        c.error = Some(format!(
            "ended {}{}",
            o.status,
            o.error.map(|e| format!(": {e}")).unwrap_or_default()
        ));
        let msg = c.error.clone();
        run.event(env.now, "saga_compensation_failed", Some(&step_id), msg);
    }
    if run.status == RunStatus::Compensating {
        advance_compensation(run, env, acts);
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
