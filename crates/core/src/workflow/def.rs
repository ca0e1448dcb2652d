//! Flow definitions (format 1): parsing from JSON (YAML is converted to the same JSON
//! at the edge) and validation that reports every problem at once, each with its
//! location (`steps[2].dependencies[0]`).
//!
//! One format covers every form the seeds describe: seed 000's agent chains with
//! `execution_mode`, seed 002's workflow document (`workflow_id`, `tasks`,
//! `parameters`, `cache_strategy`, `resources`), seed 003's registry of named flows,
//! and seed 004's pipelines (conditions, map-reduce, bounded loops), scatter-gather
//! and sagas (compensations, pivot, five strategies). See `docs/workflows.md`.

use super::expr::{self, Expr, Path};
use crate::task::{validate_task_type, ExecutionMode};
use crate::{Error, Priority, RetryPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The only definition format this build reads.
pub const FORMAT: u32 = 1;
pub const MAX_STEPS: usize = 20_000;
pub const MAX_LOOP_ITERATIONS: u32 = 10_000;
pub const MAX_SCATTER: u32 = 1_000;
pub const MAX_STEP_ID_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The first failed step fails the run: nothing new starts, running steps are cancelled.
    #[default]
    FailFast,
    /// Steps that do not depend on the failed one go on; its dependents are cancelled.
    Continue,
}

/// Seed 004's compensation strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Compensation {
    /// Completed steps are compensated one at a time, last completed first.
    #[default]
    Backward,
    /// One at a time, first completed first.
    Forward,
    /// All at once.
    Parallel,
    /// Only the step that failed (it may have half-applied its change).
    Selective,
    /// A step is compensated once every completed step depending on it has been.
    Cascade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// Every successful response, as an array.
    All,
    /// The first successful response; the others are cancelled.
    First,
    /// The mean of a numeric field of the responses.
    Average,
    /// The most frequent value of a field of the responses.
    Majority,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStrategy {
    None,
    Memory,
    Redis,
    Disk,
    Hybrid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none()
            && self.memory_mb.is_none()
            && self.gpu.is_none()
            && self.labels.is_empty()
    }

    /// Whether an agent declaring `labels` can serve this step. Capacities are read
    /// from the well-known labels `cpu`, `memory_mb` and `gpu`.
    pub fn satisfied_by(&self, labels: &BTreeMap<String, String>) -> bool {
        let num = |k: &str| {
            labels
                .get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        self.cpu.is_none_or(|c| num("cpu") >= c)
            && self.memory_mb.is_none_or(|m| num("memory_mb") >= m as f64)
            && self.gpu.is_none_or(|g| g == 0 || num("gpu") >= g as f64)
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// A task's requirement from its metadata key `resources` (the step's format:
    /// `cpu`, `memory_mb` or `memory`, `gpu`, `labels`). `None` when the key is
    /// absent, null or asks for nothing; every malformed field is reported at once
    /// (`details.problems[].field` = `metadata.resources.<field>`).
    pub fn from_metadata(metadata: &Map<String, Value>) -> Result<Option<Resources>, Error> {
        let Some(v) = metadata
            .get(crate::sched::keys::RESOURCES)
            .filter(|v| !v.is_null())
        else {
            return Ok(None);
        };
        let mut p = Problems::default();
        let r = parse_resources(&mut p, "metadata.resources", v);
        if p.0.is_empty() {
            return Ok(Some(r).filter(|r| !r.is_empty()));
        }
        // The shape of the other metadata keys' errors (`sched::Hints`).
        Err(Error::from_problems(p.0))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapSpec {
    /// A `${path}` (or bare path) that must yield an array when the step starts.
    pub over: String,
    /// At most this many items run at once (0: no limit).
    #[serde(default)]
    pub max_parallel: u32,
    #[serde(skip)]
    pub path: Option<Path>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopSpec {
    pub max_iterations: u32,
    /// Evaluated after each iteration with `output` bound to its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(skip)]
    pub until_expr: Option<Expr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScatterSpec {
    pub count: u32,
    pub aggregate: Aggregate,
    pub min_responses: u32,
    /// Path inside each response that `average` and `majority` read (whole response if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompensationStep {
    pub task_type: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
}

/// One step, normalised: aliases resolved, defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDef {
    pub id: String,
    pub task_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_strategy: Option<CacheStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationStep>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pivot: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "loop")]
    pub loop_: Option<LoopSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scatter: Option<ScatterSpec>,
    #[serde(skip)]
    pub when_expr: Option<Expr>,
}

/// A validated flow definition, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub execution_mode: ExecutionMode,
    pub on_failure: OnFailure,
    /// Present when the flow is a saga.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saga: Option<Compensation>,
    pub steps: Vec<StepDef>,
    /// Seed 002's `global_parameters`/`parameters` at the top: available as `input` defaults.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    /// Effective dependencies of each step (explicit ones, plus the previous step in
    /// sequential mode), by index. Derived, rebuilt on load.
    #[serde(skip)]
    pub parents: Vec<Vec<usize>>,
    #[serde(skip)]
    pub children: Vec<Vec<usize>>,
    #[serde(skip)]
    pub index: HashMap<String, usize>,
}

const FLOW_FIELDS: &[&str] = &[
    "format",
    "name",
    "description",
    "execution_mode",
    "on_failure",
    "saga",
    "steps",
    "tasks",
    "workflow_id",
    "parameters",
    "global_parameters",
    "version",
    "metadata",
];
const STEP_FIELDS: &[&str] = &[
    "id",
    "task_id",
    "name",
    "task_type",
    "handler",
    "dependencies",
    "depends_on",
    "input",
    "parameters",
    "when",
    "condition",
    "priority",
    "timeout_ms",
    "retry",
    "metadata",
    "resources",
    "cache_strategy",
    "estimated_duration_ms",
    "compensation",
    "pivot",
    "is_pivot",
    "map",
    "loop",
    "scatter",
];

/// Problems as (location, message).
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn push(&mut self, at: impl Into<String>, msg: impl Into<String>) {
        self.0.push((at.into(), msg.into()));
    }
}

fn to_error(problems: Vec<(String, String)>) -> Error {
    let first = format!("{}: {}", problems[0].0, problems[0].1);
    let message = crate::error::summarize_problems(
        &format!("invalid flow definition: {first}"),
        problems.len(),
    );
    let list: Vec<Value> = problems
        .iter()
        .map(|(f, m)| serde_json::json!({"field": f, "message": m}))
        .collect();
    Error::invalid(message).with_details(serde_json::json!({ "problems": list }))
}

fn first<'a>(obj: &'a Map<String, Value>, names: &[&str]) -> Option<(&'a str, &'a Value)> {
    names
        .iter()
        .find_map(|n| obj.get_key_value(*n).filter(|(_, v)| !v.is_null()))
        .map(|(k, v)| (k.as_str(), v))
}

fn validate_step_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_STEP_ID_LEN {
        return Err(format!("is longer than {MAX_STEP_ID_LEN} bytes"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("may only contain letters, digits, '_' and '-'".into());
    }
    Ok(())
}

impl FlowDef {
    /// Parses and validates a definition, reporting every problem with its location.
    pub fn parse(value: &Value) -> Result<FlowDef, Error> {
        let mut p = Problems::default();
        let Some(obj) = value.as_object() else {
            return Err(to_error(vec![(
                "definition".into(),
                "must be a JSON (or YAML) object".into(),
            )]));
        };
        for key in obj.keys() {
            if !FLOW_FIELDS.contains(&key.as_str()) {
                p.push(
                    key.clone(),
                    format!("is not a known field (known: {})", FLOW_FIELDS.join(", ")),
                );
            }
        }
        match obj.get("format") {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64() == Some(FORMAT as u64) => {}
            Some(v) => p.push(
                "format",
                format!("{v} is not supported: this server reads format {FORMAT}"),
            ),
        }
        let string = |p: &mut Problems, key: &str| match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                p.push(key, "must be a string");
                None
            }
        };
        let name = string(&mut p, "name");
        let description = string(&mut p, "description");
        let execution_mode = match obj.get("execution_mode") {
            None | Some(Value::Null) => ExecutionMode::Hybrid,
            Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|_| {
                p.push(
                    "execution_mode",
                    "must be one of sequential, parallel, hybrid",
                );
                ExecutionMode::Hybrid
            }),
        };
        let on_failure = match obj.get("on_failure") {
            None | Some(Value::Null) => OnFailure::FailFast,
            Some(v) => serde_json::from_value(v.clone()).unwrap_or_else(|_| {
                p.push("on_failure", "must be fail_fast or continue");
                OnFailure::FailFast
            }),
        };
        let saga = match obj.get("saga") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(Compensation::Backward),
            Some(Value::String(s)) => parse_strategy(&mut p, "saga", s),
            Some(Value::Object(m)) => match m.get("compensation").or_else(|| m.get("strategy")) {
                None | Some(Value::Null) => Some(Compensation::Backward),
                Some(Value::String(s)) => parse_strategy(&mut p, "saga.compensation", s),
                Some(_) => {
                    p.push("saga.compensation", "must be a string");
                    None
                }
            },
            Some(_) => {
                p.push(
                    "saga",
                    "must be true, a strategy name, or {\"compensation\": strategy}",
                );
                None
            }
        };
        let mut parameters = Map::new();
        for key in ["global_parameters", "parameters"] {
            match obj.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => parameters.extend(m.clone()),
                Some(_) => p.push(key, "must be an object"),
            }
        }
        let (steps_key, raw_steps) = match first(obj, &["steps", "tasks"]) {
            Some((k, Value::Array(items))) => (k, items.as_slice()),
            Some((k, _)) => {
                p.push(k, "must be an array of steps");
                ("steps", &[][..])
            }
            None => {
                p.push(
                    "steps",
                    "is required (an array of steps; seed 002 calls it tasks)",
                );
                ("steps", &[][..])
            }
        };
        if raw_steps.is_empty() && first(obj, &["steps", "tasks"]).is_some() {
            p.push(steps_key, "must list at least one step");
        }
        if raw_steps.len() > MAX_STEPS {
            p.push(steps_key, format!("lists more than {MAX_STEPS} steps"));
        }
        let mut steps = Vec::with_capacity(raw_steps.len());
        for (i, raw) in raw_steps.iter().enumerate() {
            let at = format!("{steps_key}[{i}]");
            steps.push(parse_step(&mut p, &at, raw, i));
        }

        // Ids: unique; dependencies: known, not self, not repeated.
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            if s.id.is_empty() {
                continue;
            }
            if let Some(prev) = index.get(&s.id) {
                p.push(
                    format!("{steps_key}[{i}].id"),
                    format!("duplicate id {:?} (also {steps_key}[{prev}])", s.id),
                );
            } else {
                index.insert(s.id.clone(), i);
            }
        }
        let mut parents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
        for (i, s) in steps.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for (j, d) in s.dependencies.iter().enumerate() {
                let at = format!("{steps_key}[{i}].dependencies[{j}]");
                match index.get(d) {
                    None => p.push(at, format!("unknown step {d:?}")),
                    Some(&k) if k == i => p.push(at, "a step cannot depend on itself"),
                    Some(&k) => {
                        if !seen.insert(k) {
                            p.push(at, format!("{d:?} is listed twice"));
                        } else {
                            parents[i].push(k);
                        }
                    }
                }
            }
            if execution_mode == ExecutionMode::Sequential && s.dependencies.is_empty() && i > 0 {
                parents[i].push(i - 1);
            }
        }
        let cycles = find_cycles(&parents);
        for cycle in &cycles {
            let names: Vec<&str> = cycle.iter().map(|&i| steps[i].id.as_str()).collect();
            p.push(
                format!("{steps_key}[{}].dependencies", cycle[0]),
                format!("cycle: {} -> {}", names.join(" -> "), names[0]),
            );
        }
        let mut children = vec![Vec::new(); steps.len()];
        for (i, ps) in parents.iter().enumerate() {
            for &k in ps {
                children[k].push(i);
            }
        }

        // References must name ancestors (only checkable without cycles).
        if cycles.is_empty() {
            let ancestors = ancestor_sets(&parents);
            for (i, s) in steps.iter().enumerate() {
                let at = format!("{steps_key}[{i}]");
                let check = |path: &Path, extra_roots: &[&str]| -> Option<String> {
                    match path.root.as_str() {
                        "input" => None,
                        "steps" => {
                            let step = path.step().unwrap_or_default();
                            match index.get(step) {
                                None => Some(format!("{path} references an unknown step {step:?}")),
                                Some(k) if !ancestors[i].contains(k) => Some(format!(
                                    "{path} references step {step:?}, which is not an ancestor of {:?} (add it to dependencies)",
                                    s.id
                                )),
                                Some(_) => None,
                            }
                        }
                        root if extra_roots.contains(&root) => None,
                        root => Some(format!("{path}: {root:?} is not available here")),
                    }
                };
                let check_at = |p: &mut Problems, where_: String, path: &Path, roots: &[&str]| {
                    if let Some(m) = check(path, roots) {
                        p.push(where_, m);
                    }
                };
                let mut input_roots: Vec<&str> = Vec::new();
                if s.map.is_some() {
                    input_roots.extend(["item", "index"]);
                }
                if s.loop_.is_some() {
                    input_roots.extend(["iteration", "previous"]);
                }
                for (loc, parsed) in expr::template_paths(&s.input) {
                    match parsed {
                        Ok(path) => {
                            check_at(&mut p, format!("{at}.input{loc}"), &path, &input_roots)
                        }
                        Err(e) => p.push(
                            format!("{at}.input{loc}"),
                            format!("malformed reference {e}"),
                        ),
                    }
                }
                if let Some(e) = &s.when_expr {
                    for path in e.paths() {
                        check_at(&mut p, format!("{at}.when"), path, &[]);
                    }
                }
                if let Some(m) = &s.map {
                    if let Some(path) = &m.path {
                        check_at(&mut p, format!("{at}.map.over"), path, &[]);
                    }
                }
                if let Some(e) = s.loop_.as_ref().and_then(|l| l.until_expr.as_ref()) {
                    for path in e.paths() {
                        check_at(
                            &mut p,
                            format!("{at}.loop.until"),
                            path,
                            &["output", "iteration"],
                        );
                    }
                }
                if let Some(c) = &s.compensation {
                    for (loc, parsed) in expr::template_paths(&c.input) {
                        match parsed {
                            Ok(path) => check_at(
                                &mut p,
                                format!("{at}.compensation.input{loc}"),
                                &path,
                                &["output"],
                            ),
                            Err(e) => p.push(
                                format!("{at}.compensation.input{loc}"),
                                format!("malformed reference {e}"),
                            ),
                        }
                    }
                }
            }
        }
        if saga.is_none() {
            for (i, s) in steps.iter().enumerate() {
                if s.compensation.is_some() || s.pivot {
                    p.push(
                        format!("{steps_key}[{i}]"),
                        "compensation and pivot need a saga: set \"saga\": {\"compensation\": \"backward\"} on the flow",
                    );
                    break;
                }
            }
        }
        if !p.0.is_empty() {
            return Err(to_error(p.0));
        }
        Ok(FlowDef {
            name,
            description,
            execution_mode,
            on_failure,
            saga,
            steps,
            parameters,
            parents,
            children,
            index,
        })
    }

    /// Whether running this flow ever reads a task's output: a template or
    /// reference in a step's input, a condition, a compensation (its input is
    /// its step's output), a saga, or a map, loop or scatter step (they
    /// aggregate or chain their tasks' outputs). A run of a flow that never
    /// does need not hold its outputs while it runs.
    pub fn reads_outputs(&self) -> bool {
        fn templated(v: &Value) -> bool {
            match v {
                Value::String(s) => s.contains("${"),
                Value::Array(items) => items.iter().any(templated),
                Value::Object(m) => m.values().any(templated),
                _ => false,
            }
        }
        self.saga.is_some()
            || self.steps.iter().any(|s| {
                s.when.is_some()
                    || s.compensation.is_some()
                    || s.map.is_some()
                    || s.loop_.is_some()
                    || s.scatter.is_some()
                    || templated(&s.input)
            })
    }

    /// Rebuilds what is derived (parsed expressions, graph) after deserialising a
    /// definition this module wrote.
    pub fn reload(value: &Value) -> Result<FlowDef, Error> {
        let mut def: FlowDef = serde_json::from_value(value.clone())
            .map_err(|e| Error::internal(format!("stored flow definition unreadable: {e}")))?;
        def.rebuild()?;
        Ok(def)
    }

    fn rebuild(&mut self) -> Result<(), Error> {
        let bad = |m: String| Error::internal(format!("stored flow definition: {m}"));
        self.index = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        self.parents = vec![Vec::new(); self.steps.len()];
        self.children = vec![Vec::new(); self.steps.len()];
        for (i, s) in self.steps.iter_mut().enumerate() {
            for d in &s.dependencies {
                let k = *self
                    .index
                    .get(d)
                    .ok_or_else(|| bad(format!("unknown step {d}")))?;
                self.parents[i].push(k);
            }
            if self.execution_mode == ExecutionMode::Sequential
                && s.dependencies.is_empty()
                && i > 0
            {
                self.parents[i].push(i - 1);
            }
            if let Some(w) = &s.when {
                s.when_expr = Some(expr::parse_condition(w).map_err(|e| bad(e.to_string()))?);
            }
            if let Some(m) = &mut s.map {
                m.path = Some(parse_ref(&m.over).map_err(|e| bad(e.to_string()))?);
            }
            if let Some(l) = &mut s.loop_ {
                if let Some(u) = &l.until {
                    l.until_expr = Some(expr::parse_condition(u).map_err(|e| bad(e.to_string()))?);
                }
            }
        }
        for (i, ps) in self.parents.iter().enumerate() {
            for &k in ps {
                self.children[k].push(i);
            }
        }
        Ok(())
    }

    /// Serialised form (what `reload` reads).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a flow definition serialises")
    }

    /// The longest chain of estimated durations through the DAG, as step ids from a
    /// root to a leaf. `durations[i]` overrides the estimate of step `i` (observed).
    pub fn critical_path(&self, durations: &[Option<u64>]) -> (Vec<String>, u64) {
        let n = self.steps.len();
        let order = topo_order(&self.parents);
        let mut best: Vec<(u64, Option<usize>)> = vec![(0, None); n];
        for &i in &order {
            let own = durations
                .get(i)
                .copied()
                .flatten()
                .or(self.steps[i].estimated_duration_ms)
                .unwrap_or(1);
            let (base, from) = self.parents[i]
                .iter()
                .map(|&k| (best[k].0, Some(k)))
                .max_by_key(|(d, _)| *d)
                .unwrap_or((0, None));
            best[i] = (base + own, from);
        }
        let Some(mut at) = (0..n).max_by_key(|&i| best[i].0) else {
            return (Vec::new(), 0);
        };
        let total = best[at].0;
        let mut path = vec![self.steps[at].id.clone()];
        while let Some(prev) = best[at].1 {
            path.push(self.steps[prev].id.clone());
            at = prev;
        }
        path.reverse();
        (path, total)
    }
}

fn parse_strategy(p: &mut Problems, at: &str, s: &str) -> Option<Compensation> {
    match serde_json::from_value(Value::String(s.to_string())) {
        Ok(c) => Some(c),
        Err(_) => {
            p.push(at, format!("{s:?} is not a compensation strategy: use backward, forward, parallel, selective or cascade"));
            None
        }
    }
}

/// A reference written as `${path}` or as a bare path.
fn parse_ref(raw: &str) -> Result<Path, expr::ParseError> {
    let t = raw.trim();
    let inner = t
        .strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .unwrap_or(t);
    expr::parse_path(inner.trim())
}

fn parse_step(p: &mut Problems, at: &str, raw: &Value, i: usize) -> StepDef {
    let mut step = StepDef {
        id: String::new(),
        task_type: String::new(),
        dependencies: Vec::new(),
        input: Value::Null,
        when: None,
        priority: None,
        timeout_ms: None,
        retry: None,
        metadata: Map::new(),
        resources: Resources::default(),
        cache_strategy: None,
        estimated_duration_ms: None,
        compensation: None,
        pivot: false,
        map: None,
        loop_: None,
        scatter: None,
        when_expr: None,
    };
    let Some(obj) = raw.as_object() else {
        p.push(at, "must be an object");
        return step;
    };
    let f = |k: &str| format!("{at}.{k}");
    for key in obj.keys() {
        if !STEP_FIELDS.contains(&key.as_str()) {
            p.push(
                f(key),
                format!(
                    "is not a known step field (known: {})",
                    STEP_FIELDS.join(", ")
                ),
            );
        }
    }
    match first(obj, &["id", "task_id", "name"]) {
        Some((k, Value::String(s))) => match validate_step_id(s) {
            Ok(()) => step.id = s.clone(),
            Err(m) => p.push(f(k), m),
        },
        Some((k, _)) => p.push(f(k), "must be a string"),
        None => p.push(f("id"), format!("is required (e.g. \"step{i}\")")),
    }
    match first(obj, &["task_type", "handler"]) {
        Some((k, Value::String(s))) => match validate_task_type(s) {
            Ok(()) => step.task_type = s.clone(),
            Err(m) => p.push(f(k), m),
        },
        Some((k, _)) => p.push(f(k), "must be a string"),
        None => p.push(f("task_type"), "is required"),
    }
    match first(obj, &["dependencies", "depends_on"]) {
        None => {}
        Some((k, Value::Array(items))) => {
            for (j, d) in items.iter().enumerate() {
                match d.as_str() {
                    Some(s) => step.dependencies.push(s.to_string()),
                    None => p.push(format!("{at}.{k}[{j}]"), "must be a step id (a string)"),
                }
            }
        }
        Some((_, Value::String(s))) => step.dependencies.push(s.clone()),
        Some((k, _)) => p.push(f(k), "must be an array of step ids"),
    }
    if let Some((_, v)) = first(obj, &["input", "parameters"]) {
        step.input = v.clone();
    }
    match first(obj, &["when", "condition"]) {
        None => {}
        Some((k, Value::String(s))) => match expr::parse_condition(s) {
            Ok(e) => {
                step.when = Some(s.clone());
                step.when_expr = Some(e);
            }
            Err(e) => p.push(f(k), format!("malformed condition {e}")),
        },
        Some((k, _)) => p.push(f(k), "must be a condition (a string)"),
    }
    if let Some(v) = obj.get("priority").filter(|v| !v.is_null()) {
        match Priority::from_json(v) {
            Ok(pr) => step.priority = Some(pr),
            Err(e) => p.push(f("priority"), e.message),
        }
    }
    if let Some(v) = obj.get("timeout_ms").filter(|v| !v.is_null()) {
        match v.as_u64() {
            Some(t) if t > 0 => step.timeout_ms = Some(t),
            _ => p.push(
                f("timeout_ms"),
                "must be a whole number of milliseconds greater than zero",
            ),
        }
    }
    if let Some(v) = obj.get("retry").filter(|v| !v.is_null()) {
        let mut merged = serde_json::to_value(RetryPolicy::default()).expect("policy serialises");
        match (v, &mut merged) {
            (Value::Object(m), Value::Object(base)) => {
                base.extend(m.clone());
                match serde_json::from_value::<RetryPolicy>(merged) {
                    Ok(r) => {
                        for (field, msg) in r.problems() {
                            p.push(
                                format!("{at}.retry.{}", field.trim_start_matches("retry.")),
                                msg,
                            );
                        }
                        step.retry = Some(r);
                    }
                    Err(e) => p.push(f("retry"), format!("is not a valid retry policy: {e}")),
                }
            }
            _ => p.push(f("retry"), "must be an object"),
        }
    }
    match obj.get("metadata") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => step.metadata = m.clone(),
        Some(_) => p.push(f("metadata"), "must be an object"),
    }
    if let Some(v) = obj.get("resources").filter(|v| !v.is_null()) {
        step.resources = parse_resources(p, &f("resources"), v);
    }
    if let Some(v) = obj.get("cache_strategy").filter(|v| !v.is_null()) {
        let lowered = v.as_str().map(|s| Value::String(s.to_ascii_lowercase()));
        match lowered.and_then(|l| serde_json::from_value(l).ok()) {
            Some(c) => step.cache_strategy = Some(c),
            None => p.push(
                f("cache_strategy"),
                "must be one of none, memory, redis, disk, hybrid",
            ),
        }
    }
    if let Some(v) = obj.get("estimated_duration_ms").filter(|v| !v.is_null()) {
        match v.as_u64() {
            Some(d) => step.estimated_duration_ms = Some(d),
            None => p.push(
                f("estimated_duration_ms"),
                "must be a whole number of milliseconds",
            ),
        }
    }
    match first(obj, &["pivot", "is_pivot"]) {
        None => {}
        Some((_, Value::Bool(b))) => step.pivot = *b,
        Some((k, _)) => p.push(f(k), "must be true or false"),
    }
    match obj.get("compensation") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) => match validate_task_type(t) {
            Ok(()) => {
                step.compensation = Some(CompensationStep {
                    task_type: t.clone(),
                    input: Value::Null,
                })
            }
            Err(m) => p.push(f("compensation"), m),
        },
        Some(Value::Object(m)) => match m.get("task_type").and_then(Value::as_str) {
            Some(t) => match validate_task_type(t) {
                Ok(()) => {
                    step.compensation = Some(CompensationStep {
                        task_type: t.to_string(),
                        input: m.get("input").cloned().unwrap_or(Value::Null),
                    })
                }
                Err(msg) => p.push(f("compensation.task_type"), msg),
            },
            None => p.push(f("compensation.task_type"), "is required"),
        },
        Some(_) => p.push(
            f("compensation"),
            "must be a task type or {task_type, input}",
        ),
    }
    if step.pivot && step.compensation.is_some() {
        p.push(
            f("compensation"),
            "a pivot step cannot have a compensation: no rollback happens once it completed",
        );
    }
    if let Some(v) = obj.get("map").filter(|v| !v.is_null()) {
        match serde_json::from_value::<MapSpec>(v.clone()) {
            Ok(mut m) => match parse_ref(&m.over) {
                Ok(path) => {
                    m.path = Some(path);
                    step.map = Some(m);
                }
                Err(e) => p.push(f("map.over"), format!("malformed reference {e}")),
            },
            Err(e) => p.push(
                f("map"),
                format!("must be {{\"over\": \"${{path}}\", \"max_parallel\": n}}: {e}"),
            ),
        }
    }
    if let Some(v) = obj.get("loop").filter(|v| !v.is_null()) {
        match v.as_object() {
            Some(m) => {
                let max = match m.get("max_iterations") {
                    None | Some(Value::Null) => {
                        p.push(
                            f("loop.max_iterations"),
                            "is required: a loop must be bounded",
                        );
                        0
                    }
                    Some(v) => match v.as_u64() {
                        Some(n) if n >= 1 && n <= MAX_LOOP_ITERATIONS as u64 => n as u32,
                        _ => {
                            p.push(
                                f("loop.max_iterations"),
                                format!("must be between 1 and {MAX_LOOP_ITERATIONS}"),
                            );
                            0
                        }
                    },
                };
                let until = match m.get("until") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => match expr::parse_condition(s) {
                        Ok(e) => Some((s.clone(), e)),
                        Err(e) => {
                            p.push(f("loop.until"), format!("malformed condition {e}"));
                            None
                        }
                    },
                    Some(_) => {
                        p.push(f("loop.until"), "must be a condition (a string)");
                        None
                    }
                };
                for key in m.keys() {
                    if !["max_iterations", "until"].contains(&key.as_str()) {
                        p.push(
                            f(&format!("loop.{key}")),
                            "is not a known field (known: max_iterations, until)",
                        );
                    }
                }
                let (until, until_expr) = until.map_or((None, None), |(s, e)| (Some(s), Some(e)));
                step.loop_ = Some(LoopSpec {
                    max_iterations: max,
                    until,
                    until_expr,
                });
            }
            None => p.push(
                f("loop"),
                "must be {\"max_iterations\": n, \"until\": condition}",
            ),
        }
    }
    if let Some(v) = obj.get("scatter").filter(|v| !v.is_null()) {
        step.scatter = parse_scatter(p, &f("scatter"), v);
    }
    let kinds = [
        step.map.is_some(),
        step.loop_.is_some(),
        step.scatter.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        p.push(at, "a step can be at most one of map, loop and scatter");
    }
    step
}

fn parse_resources(p: &mut Problems, at: &str, v: &Value) -> Resources {
    let mut r = Resources::default();
    let Some(m) = v.as_object() else {
        p.push(
            at,
            "must be an object (cpu, memory_mb or memory, gpu, labels)",
        );
        return r;
    };
    for (k, val) in m {
        let here = format!("{at}.{k}");
        match k.as_str() {
            "cpu" => match val.as_f64() {
                Some(c) if c >= 0.0 => r.cpu = Some(c),
                _ => p.push(here, "must be a number of cores, at least 0"),
            },
            "gpu" => match val.as_u64() {
                Some(g) => r.gpu = Some(g as u32),
                None => p.push(here, "must be a whole number of GPUs"),
            },
            "memory_mb" => match val.as_u64() {
                Some(mb) => r.memory_mb = Some(mb),
                None => p.push(here, "must be a whole number of MiB"),
            },
            "memory" => match parse_memory(val) {
                Some(mb) => r.memory_mb = Some(mb),
                None => p.push(
                    here,
                    "must be MiB as a number, or text such as \"512Mi\", \"4Gi\", \"2GB\"",
                ),
            },
            "labels" => match val.as_object() {
                Some(labels) => {
                    for (lk, lv) in labels {
                        match lv.as_str() {
                            Some(s) => {
                                r.labels.insert(lk.clone(), s.to_string());
                            }
                            None => p.push(format!("{here}.{lk}"), "must be a string"),
                        }
                    }
                }
                None => p.push(here, "must be an object of strings"),
            },
            _ => p.push(
                here,
                "is not a known resource (known: cpu, memory_mb, memory, gpu, labels)",
            ),
        }
    }
    r
}

fn parse_memory(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mb = match unit.trim() {
        "Ki" | "KiB" | "K" | "KB" => n / 1024.0,
        "Mi" | "MiB" | "M" | "MB" => n,
        "Gi" | "GiB" | "G" | "GB" => n * 1024.0,
        "Ti" | "TiB" | "T" | "TB" => n * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(mb.ceil() as u64)
}

fn parse_scatter(p: &mut Problems, at: &str, v: &Value) -> Option<ScatterSpec> {
    let Some(m) = v.as_object() else {
        p.push(at, "must be {\"count\": n, \"aggregate\": all|first|average|majority, \"min_responses\": m}");
        return None;
    };
    let count = match m.get("count").and_then(Value::as_u64) {
        Some(c) if c >= 1 && c <= MAX_SCATTER as u64 => c as u32,
        _ => {
            p.push(
                format!("{at}.count"),
                format!("is required: between 1 and {MAX_SCATTER}"),
            );
            return None;
        }
    };
    let aggregate = match m.get("aggregate").or_else(|| m.get("aggregation")) {
        None | Some(Value::Null) => Aggregate::All,
        Some(v) => match v
            .as_str()
            .map(|s| Value::String(s.to_ascii_lowercase()))
            .and_then(|s| serde_json::from_value(s).ok())
        {
            Some(a) => a,
            None => {
                p.push(
                    format!("{at}.aggregate"),
                    "must be one of all, first, average, majority",
                );
                return None;
            }
        },
    };
    let default_min = match aggregate {
        Aggregate::All => count,
        _ => 1,
    };
    let min_responses = match m.get("min_responses") {
        None | Some(Value::Null) => default_min,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= count as u64 => n as u32,
            _ => {
                p.push(
                    format!("{at}.min_responses"),
                    format!("must be between 1 and count ({count})"),
                );
                return None;
            }
        },
    };
    let field = match m.get("field") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            p.push(
                format!("{at}.field"),
                "must be a path inside the response, such as \"score\" or \"result.label\"",
            );
            return None;
        }
    };
    for key in m.keys() {
        if ![
            "count",
            "aggregate",
            "aggregation",
            "min_responses",
            "field",
        ]
        .contains(&key.as_str())
        {
            p.push(
                format!("{at}.{key}"),
                "is not a known field (known: count, aggregate, min_responses, field)",
            );
        }
    }
    Some(ScatterSpec {
        count,
        aggregate,
        min_responses,
        field,
    })
}

/// Kahn's order; nodes on cycles are left out.
pub(crate) fn topo_order(parents: &[Vec<usize>]) -> Vec<usize> {
    let n = parents.len();
    let mut indegree: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut children = vec![Vec::new(); n];
    for (i, ps) in parents.iter().enumerate() {
        for &k in ps {
            children[k].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    ready.reverse();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &c in &children[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(c);
            }
        }
    }
    order
}

/// Each cycle once, as the steps along it (iterative DFS, no recursion limits).
fn find_cycles(parents: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = parents.len();
    let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut cycles = Vec::new();
    for start in 0..n {
        if state[start] != 0 {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = parents[node].get(*next) {
                *next += 1;
                match state[dep] {
                    0 => {
                        state[dep] = 1;
                        stack.push((dep, 0));
                    }
                    1 => {
                        let pos = stack.iter().position(|(s, _)| *s == dep).unwrap_or(0);
                        // The stack runs along dependencies (child -> parent); close
                        // the loop and reverse it to show the order steps run in.
                        let mut cycle: Vec<usize> = stack[pos..].iter().map(|(s, _)| *s).collect();
                        cycle.push(dep);
                        cycle.reverse();
                        cycle.pop();
                        cycles.push(cycle);
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                stack.pop();
            }
        }
    }
    cycles
}

fn ancestor_sets(parents: &[Vec<usize>]) -> Vec<BTreeSet<usize>> {
    let order = topo_order(parents);
    let mut sets: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); parents.len()];
    for &i in &order {
        let mut set = BTreeSet::new();
        for &k in &parents[i] {
            set.insert(k);
            set.extend(sets[k].iter().copied());
        }
        sets[i] = set;
    }
    sets
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<(String, String)> {
        let e = FlowDef::parse(&v).expect_err("should be refused");
        e.details["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["field"].as_str().unwrap().to_string(),
                    p["message"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn has(ps: &[(String, String)], field: &str, needle: &str) -> bool {
        ps.iter().any(|(f, m)| f == field && m.contains(needle))
    }

    #[test]
    fn only_flows_that_never_read_an_output_are_told_they_need_none() {
        let reads = |steps: Value| {
            FlowDef::parse(&json!({"steps": steps}))
                .unwrap()
                .reads_outputs()
        };
        let plain = json!({"id": "a", "task_type": "t", "input": {"x": [1, "two"]}});
        assert!(!reads(
            json!([plain, {"id": "b", "task_type": "t", "dependencies": ["a"]}])
        ));
        for step in [
            json!({"id": "b", "task_type": "t", "dependencies": ["a"], "input": {"x": ["${steps.a.output.v}"]}}),
            json!({"id": "b", "task_type": "t", "input": "${input.v}"}),
            json!({"id": "b", "task_type": "t", "when": "input.x > 1"}),
            json!({"id": "b", "task_type": "t", "loop": {"max_iterations": 3, "until": "output.done == true"}}),
            json!({"id": "b", "task_type": "t", "map": {"over": "${input.items}"}}),
            json!({"id": "b", "task_type": "t", "scatter": {"count": 3, "aggregate": "all"}}),
        ] {
            assert!(reads(json!([plain, step])), "{step}");
        }
        let saga = json!({"saga": {"compensation": "backward"}, "steps": [
            plain, {"id": "b", "task_type": "t", "compensation": "undo"}]});
        assert!(FlowDef::parse(&saga).unwrap().reads_outputs());
    }

    #[test]
    fn seed_002_workflow_parses_as_written() {
        let d = FlowDef::parse(&json!({
            "workflow_id": "fraud_detection_training",
            "name": "Fraud Detection Model Training",
            "tasks": [
                {"task_id": "preprocess_data", "task_type": "data_preprocessing", "dependencies": [],
                 "parameters": {"dataset_path": "/data/transactions.csv"}, "cache_strategy": "redis"},
                {"task_id": "train_model", "task_type": "model_training", "dependencies": ["preprocess_data"],
                 "parameters": {"algorithm": "xgboost", "n_estimators": 100},
                 "resources": {"cpu": 4, "memory": "8Gi", "gpu": 1}}
            ]
        }))
        .unwrap();
        assert_eq!(d.steps.len(), 2);
        assert_eq!(d.parents, vec![vec![], vec![0]]);
        assert_eq!(d.steps[0].cache_strategy, Some(CacheStrategy::Redis));
        assert_eq!(d.steps[1].resources.memory_mb, Some(8192));
        assert_eq!(d.steps[1].input["algorithm"], "xgboost");
    }

    #[test]
    fn sequential_mode_chains_steps_in_order() {
        let d = FlowDef::parse(&json!({"execution_mode": "sequential", "steps": [
            {"id": "data_ingest", "task_type": "data_ingest"},
            {"id": "data_analysis", "task_type": "data_analysis", "input": "${steps.data_ingest.output}"},
            {"id": "synthesis", "task_type": "synthesis"}
        ]}))
        .unwrap();
        assert_eq!(d.parents, vec![vec![], vec![0], vec![1]]);
        let (path, total) = d.critical_path(&[]);
        assert_eq!(path, vec!["data_ingest", "data_analysis", "synthesis"]);
        assert_eq!(total, 3);
    }

    #[test]
    fn every_problem_is_reported_with_its_location() {
        let ps = problems(json!({
            "stepz": 1,
            "steps": [
                {"id": "a", "task_type": "t", "dependencies": ["c"]},
                {"id": "b", "task_type": "t", "dependencies": ["a", "ghost"]},
                {"id": "c", "task_type": "t", "dependencies": ["b"]},
                {"id": "a", "task_type": "t"},
                {"id": "d", "task_type": "t", "when": "input.x >"},
                {"id": "e", "task_type": "t", "pivot": true, "compensation": "undo"},
                {"id": "f", "task_type": "t", "loop": {"until": "output.done == true"}},
                {"id": "g", "task_type": "t", "input": {"q": "${steps.d.output.x}"}},
                {"id": "h", "task_type": "bad type!", "scatter": {"count": 3, "aggregate": "median"}}
            ]
        }));
        assert!(has(&ps, "stepz", "not a known field"), "{ps:?}");
        assert!(
            has(&ps, "steps[1].dependencies[1]", "unknown step \"ghost\""),
            "{ps:?}"
        );
        assert!(
            has(&ps, "steps[3].id", "duplicate id \"a\" (also steps[0])"),
            "{ps:?}"
        );
        assert!(
            ps.iter()
                .any(|(_, m)| m.contains("cycle: ") && m.contains("a -> b -> c")),
            "{ps:?}"
        );
        assert!(
            has(&ps, "steps[4].when", "malformed condition at column"),
            "{ps:?}"
        );
        assert!(
            has(
                &ps,
                "steps[5].compensation",
                "pivot step cannot have a compensation"
            ),
            "{ps:?}"
        );
        assert!(
            has(&ps, "steps[6].loop.max_iterations", "must be bounded"),
            "{ps:?}"
        );
        assert!(has(&ps, "steps[8].task_type", "may only contain"), "{ps:?}");
        assert!(
            has(&ps, "steps[8].scatter.aggregate", "must be one of"),
            "{ps:?}"
        );
    }

    #[test]
    fn references_must_name_ancestors() {
        let ps = problems(json!({"steps": [
            {"id": "a", "task_type": "t"},
            {"id": "b", "task_type": "t", "input": {"x": "${steps.a.output.v}", "y": "${steps.c.output}", "z": "${item}"}},
            {"id": "c", "task_type": "t", "dependencies": ["b"], "input": "${steps.nope.output}", "when": "steps.a.output.ok == true"}
        ]}));
        assert!(has(&ps, "steps[1].input.x", "not an ancestor"), "{ps:?}");
        assert!(has(&ps, "steps[1].input.y", "not an ancestor"), "{ps:?}");
        assert!(
            has(&ps, "steps[1].input.z", "\"item\" is not available here"),
            "{ps:?}"
        );
        assert!(
            has(&ps, "steps[2].input", "unknown step \"nope\""),
            "{ps:?}"
        );
        assert!(has(&ps, "steps[2].when", "not an ancestor"), "{ps:?}");
        assert_eq!(ps.len(), 5, "{ps:?}");
    }

    #[test]
    fn a_long_cycle_is_named_in_order() {
        let ps = problems(json!({"steps": [
            {"id": "x", "task_type": "t", "dependencies": ["z"]},
            {"id": "y", "task_type": "t", "dependencies": ["x"]},
            {"id": "z", "task_type": "t", "dependencies": ["y"]},
            {"id": "free", "task_type": "t"}
        ]}));
        assert_eq!(ps.len(), 1, "{ps:?}");
        let m = &ps[0].1;
        assert!(
            m == "cycle: x -> y -> z -> x"
                || m == "cycle: y -> z -> x -> y"
                || m == "cycle: z -> x -> y -> z",
            "{m}"
        );
    }

    #[test]
    fn saga_fields_need_a_saga_and_round_trip() {
        let ps =
            problems(json!({"steps": [{"id": "a", "task_type": "t", "compensation": "undo"}]}));
        assert!(ps[0].1.contains("need a saga"));
        let d = FlowDef::parse(&json!({"saga": {"compensation": "cascade"}, "steps": [
            {"id": "collect_data", "task_type": "collector", "compensation": "delete_data"},
            {"id": "generate_report", "task_type": "reporter", "dependencies": ["collect_data"], "is_pivot": true},
            {"id": "loop", "task_type": "t", "dependencies": ["generate_report"], "loop": {"max_iterations": 3, "until": "output.done == true"}},
            {"id": "m", "task_type": "t", "map": {"over": "${input.items}"}, "input": {"i": "${item}"}}
        ]}))
        .unwrap();
        assert_eq!(d.saga, Some(Compensation::Cascade));
        let back = FlowDef::reload(&d.to_value()).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn resources_match_agent_labels() {
        let r = Resources {
            cpu: Some(2.0),
            memory_mb: Some(1024),
            gpu: Some(1),
            labels: [("zone".to_string(), "eu".to_string())].into(),
        };
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(r.satisfied_by(&labels(&[
            ("cpu", "4"),
            ("memory_mb", "2048"),
            ("gpu", "1"),
            ("zone", "eu")
        ])));
        assert!(!r.satisfied_by(&labels(&[
            ("cpu", "4"),
            ("memory_mb", "2048"),
            ("zone", "eu")
        ])));
        assert!(!r.satisfied_by(&labels(&[
            ("cpu", "1"),
            ("memory_mb", "2048"),
            ("gpu", "1"),
            ("zone", "eu")
        ])));
        assert!(Resources::default().satisfied_by(&BTreeMap::new()));
    }
}
