use super::*;
use crate::workflow::def::FlowDef;
use proptest::prelude::*;
use serde_json::json;

/// Drives a run to its end: every submitted task finishes as `behave` says
/// (Ok(output) completes it, Err(message) fails it), in submission order.
struct Sim {
    run: Run,
    outputs: HashMap<String, Value>,
    submitted: Vec<TaskSpec>,
    cancelled: Vec<String>,
    /// Task ids in the order they finished.
    finished: Vec<String>,
    /// For each submitted task, how many tasks had finished when it was submitted.
    finished_when_submitted: HashMap<String, usize>,
    now: Millis,
}

type Behave = dyn Fn(&TaskSpec) -> Result<Value, String>;

impl Sim {
    fn new(def: Value, input: Value) -> Sim {
        let def = FlowDef::parse(&def).expect("valid definition");
        let run = Run::new("r".into(), def, None, input, Priority::Normal, 0);
        Sim {
            run,
            outputs: HashMap::new(),
            submitted: Vec::new(),
            cancelled: Vec::new(),
            finished: Vec::new(),
            finished_when_submitted: HashMap::new(),
            now: 0,
        }
    }

    fn apply(&mut self, cmd: RunCommand) -> Result<Actions, RunRefusal> {
        self.now += 1;
        let policy = RetryPolicy::default();
        let env = Env {
            now: self.now,
            outputs: &self.outputs,
            default_timeout_ms: 1000,
            default_retry: &policy,
        };
        let acts = apply(&mut self.run, cmd, &env)?;
        for t in &acts.submit {
            self.finished_when_submitted
                .insert(t.task_id.as_str().to_string(), self.finished.len());
        }
        self.submitted.extend(acts.submit.iter().cloned());
        self.cancelled
            .extend(acts.cancel.iter().map(|t| t.as_str().to_string()));
        Ok(acts)
    }

    /// Finishes queued tasks one at a time (FIFO) until none is left open.
    fn drive(&mut self, behave: &Behave) {
        let mut queue: std::collections::VecDeque<TaskSpec> =
            self.submitted.iter().cloned().collect();
        let mut seen: BTreeSet<String> = queue
            .iter()
            .map(|t| t.task_id.as_str().to_string())
            .collect();
        while let Some(task) = queue.pop_front() {
            let id = task.task_id.as_str().to_string();
            if self.cancelled.contains(&id) {
                self.finish(&id, Status::Cancelled, None);
            } else {
                match behave(&task) {
                    Ok(out) => {
                        self.outputs.insert(id.clone(), out);
                        self.finish(&id, Status::Completed, None);
                    }
                    Err(e) => self.finish(&id, Status::Failed, Some(e)),
                }
            }
            for t in &self.submitted {
                if seen.insert(t.task_id.as_str().to_string()) {
                    queue.push_back(t.clone());
                }
            }
        }
    }

    fn finish(&mut self, id: &str, status: Status, error: Option<String>) {
        self.finished.push(id.to_string());
        self.apply(RunCommand::TaskFinished(TaskOutcome {
            task_id: id.into(),
            status,
            error,
            attempts: 1,
            agent_id: Some("a".into()),
            duration_ms: Some(1),
        }))
        .unwrap();
    }

    fn step(&self, id: &str) -> &StepRun {
        self.run.steps.iter().find(|s| s.id == id).unwrap()
    }

    fn output(&self, id: &str) -> Option<Value> {
        let i = self.run.def.index[id];
        self.run.step_output(i, &self.outputs)
    }

    fn input_of(&self, task_id: &str) -> Value {
        let t = self
            .submitted
            .iter()
            .find(|t| t.task_id.as_str() == task_id)
            .unwrap_or_else(|| panic!("{task_id} not submitted"));
        t.inputs[0].to_json_value()["data"].clone()
    }
}

fn echo(t: &TaskSpec) -> Result<Value, String> {
    Ok(t.inputs[0].to_json_value()["data"].clone())
}

#[test]
fn sequential_chain_passes_data_and_completes() {
    let mut sim = Sim::new(
        json!({"execution_mode": "sequential", "steps": [
            {"id": "data_ingest", "task_type": "data_ingest", "input": {"text": "${input.text}"}},
            {"id": "data_analysis", "task_type": "data_analysis", "input": {"ingested": "${steps.data_ingest.output.text}"}},
            {"id": "synthesis", "task_type": "synthesis", "input": "title: ${steps.data_analysis.output.ingested}"}
        ]}),
        json!({"text": "Q4"}),
    );
    let acts = sim.apply(RunCommand::Start).unwrap();
    assert_eq!(acts.submit.len(), 1, "only the first step starts");
    assert_eq!(acts.submit[0].task_id.as_str(), "r:data_ingest");
    assert_eq!(acts.submit[0].run_id.as_deref(), Some("r"));
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Completed);
    assert_eq!(
        sim.finished,
        vec!["r:data_ingest", "r:data_analysis", "r:synthesis"]
    );
    assert_eq!(sim.output("synthesis"), Some(json!("title: Q4")));
}

#[test]
fn fan_out_fan_in_starts_the_join_once_after_all() {
    let mut steps = vec![json!({"id": "split", "task_type": "t"})];
    for k in 0..10 {
        steps.push(
            json!({"id": format!("p{k}"), "task_type": "t", "dependencies": ["split"], "input": k}),
        );
    }
    steps.push(json!({"id": "join", "task_type": "t", "dependencies": (0..10).map(|k| format!("p{k}")).collect::<Vec<_>>(),
                      "input": {"first": "${steps.p0.output}", "last": "${steps.p9.output}"}}));
    let mut sim = Sim::new(json!({"steps": steps}), json!({}));
    sim.apply(RunCommand::Start).unwrap();
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Completed);
    assert_eq!(sim.submitted.len(), 12);
    assert_eq!(sim.finished.last().unwrap(), "r:join");
    assert_eq!(sim.input_of("r:join"), json!({"first": 0, "last": 9}));
}

#[test]
fn conditions_skip_branches_and_the_join_still_runs() {
    let mut sim = Sim::new(
        json!({"steps": [
            {"id": "score", "task_type": "t", "input": {"value": 0.9}},
            {"id": "high", "task_type": "t", "dependencies": ["score"], "when": "steps.score.output.value >= 0.8"},
            {"id": "low", "task_type": "t", "dependencies": ["score"], "when": "steps.score.output.value < 0.8"},
            {"id": "after_low", "task_type": "t", "dependencies": ["low"]},
            {"id": "join", "task_type": "t", "dependencies": ["high", "low"]}
        ]}),
        json!({}),
    );
    sim.apply(RunCommand::Start).unwrap();
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Completed);
    assert_eq!(sim.step("low").status, StepStatus::Skipped);
    assert_eq!(
        sim.step("after_low").status,
        StepStatus::Completed,
        "a skipped parent satisfies its children"
    );
    assert_eq!(sim.step("join").status, StepStatus::Completed);
    assert_eq!(sim.output("low"), None);
}

#[test]
fn a_condition_over_a_wrong_type_fails_the_step_not_the_engine() {
    let mut sim = Sim::new(
        json!({"steps": [
            {"id": "a", "task_type": "t", "input": {"value": "high"}},
            {"id": "b", "task_type": "t", "dependencies": ["a"], "when": "steps.a.output.value > 3"},
            {"id": "c", "task_type": "t", "dependencies": ["a"], "input": "${steps.a.output.missing}"}
        ], "on_failure": "continue"}),
        json!({}),
    );
    sim.apply(RunCommand::Start).unwrap();
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Failed);
    assert!(sim
        .step("b")
        .error
        .as_deref()
        .unwrap()
        .contains("cannot compare a string with a number"));
    assert_eq!(
        sim.step("c").error.as_deref(),
        Some("input: steps.a.output.missing is absent")
    );
}

#[test]
fn map_reduce_keeps_item_order_and_respects_max_parallel() {
    let mut sim = Sim::new(
        json!({"steps": [
            {"id": "m", "task_type": "square", "map": {"over": "${input.items}", "max_parallel": 2}, "input": {"x": "${item}", "i": "${index}"}},
            {"id": "reduce", "task_type": "sum", "dependencies": ["m"], "input": "${steps.m.output}"}
        ]}),
        json!({"items": [1, 2, 3, 4, 5]}),
    );
    let acts = sim.apply(RunCommand::Start).unwrap();
    assert_eq!(acts.submit.len(), 2, "max_parallel bounds the first wave");
    sim.drive(&|t: &TaskSpec| {
        let v = t.inputs[0].to_json_value()["data"].clone();
        if t.task_type == "square" {
            let x = v["x"].as_i64().unwrap();
            Ok(json!(x * x))
        } else {
            Ok(json!(v
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_i64().unwrap())
                .sum::<i64>()))
        }
    });
    assert_eq!(sim.run.status, RunStatus::Completed);
    assert_eq!(sim.output("m"), Some(json!([1, 4, 9, 16, 25])));
    assert_eq!(sim.output("reduce"), Some(json!(55)));
}

#[test]
fn map_over_a_non_array_fails_with_a_clear_error() {
    let mut sim = Sim::new(
        json!({"steps": [{"id": "m", "task_type": "t", "map": {"over": "input.items"}}]}),
        json!({"items": 3}),
    );
    sim.apply(RunCommand::Start).unwrap();
    assert_eq!(sim.run.status, RunStatus::Failed);
    assert_eq!(
        sim.step("m").error.as_deref(),
        Some("map.over input.items gave a number, not an array")
    );
}

#[test]
fn loops_run_until_their_condition_or_fail_at_the_bound() {
    let def = |max: u32| {
        json!({"steps": [{"id": "l", "task_type": "count", "input": {"n": "${iteration}"},
        "loop": {"max_iterations": max, "until": "output.n >= 3"}}]})
    };
    let mut sim = Sim::new(def(10), json!({}));
    sim.apply(RunCommand::Start).unwrap();
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Completed);
    assert_eq!(sim.submitted.len(), 4);
    assert_eq!(sim.output("l"), Some(json!({"n": 3})));

    let mut sim = Sim::new(def(2), json!({}));
    sim.apply(RunCommand::Start).unwrap();
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Failed);
    assert!(sim
        .step("l")
        .error
        .as_deref()
        .unwrap()
        .contains("never held"));
}

fn scatter_sim(aggregate: &str, min: u32, fail_replicas: &'static [u32]) -> Sim {
    let mut sim = Sim::new(
        json!({"steps": [{"id": "vote", "task_type": "classify",
            "scatter": {"count": 5, "aggregate": aggregate, "min_responses": min, "field": "label"}}]}),
        json!({}),
    );
    sim.apply(RunCommand::Start).unwrap();
    sim.drive(&move |t: &TaskSpec| {
        let r = t.metadata["replica"].as_u64().unwrap() as u32;
        if fail_replicas.contains(&r) {
            Err("model unavailable".into())
        } else {
            Ok(json!({"label": if r.is_multiple_of(2) { "cat" } else { "dog" }, "score": r}))
        }
    });
    sim
}

#[test]
fn scatter_gather_aggregates() {
    let sim = scatter_sim("majority", 3, &[]);
    assert_eq!(sim.run.status, RunStatus::Completed);
    assert_eq!(sim.output("vote").unwrap()["value"], "cat");
    assert_eq!(sim.output("vote").unwrap()["votes"], 3);

    let sim = scatter_sim("first", 1, &[0]);
    assert_eq!(sim.run.status, RunStatus::Completed);
    assert_eq!(sim.output("vote").unwrap()["label"], "dog");
    assert!(
        sim.cancelled.len() >= 3,
        "the other replicas are cancelled: {:?}",
        sim.cancelled
    );

    let sim = scatter_sim("all", 3, &[1]);
    assert_eq!(sim.output("vote").unwrap().as_array().unwrap().len(), 4);
}

#[test]
fn scatter_gather_fails_when_min_responses_cannot_be_reached() {
    let sim = scatter_sim("majority", 4, &[0, 1]);
    assert_eq!(sim.run.status, RunStatus::Failed);
    assert!(
        sim.step("vote")
            .error
            .as_deref()
            .unwrap()
            .contains("min_responses is 4"),
        "{:?}",
        sim.step("vote").error
    );
}

fn saga(strategy: &str, pivot_at: Option<usize>) -> Sim {
    let mut steps = Vec::new();
    for (k, name) in [
        "collect_data",
        "validate",
        "calculate",
        "generate_report",
        "publish",
    ]
    .iter()
    .enumerate()
    {
        let mut s = json!({"id": name, "task_type": name});
        if Some(k) == pivot_at {
            s["pivot"] = json!(true);
        } else {
            s["compensation"] = json!(format!("undo_{name}"));
        }
        if k == 1 || k == 2 {
            s["dependencies"] = json!(["collect_data"]);
        } else if k == 3 {
            s["dependencies"] = json!(["validate", "calculate"]);
        } else if k == 4 {
            s["dependencies"] = json!(["generate_report"]);
        }
        steps.push(s);
    }
    let mut sim = Sim::new(
        json!({"saga": {"compensation": strategy}, "steps": steps}),
        json!({}),
    );
    sim.apply(RunCommand::Start).unwrap();
    // The fourth step (generate_report) fails.
    sim.drive(&|t: &TaskSpec| {
        if t.task_type == "generate_report" {
            Err("disk full".into())
        } else {
            Ok(json!({"done": t.task_type}))
        }
    });
    sim
}

fn compensated(sim: &Sim) -> Vec<String> {
    sim.finished
        .iter()
        .filter(|id| id.ends_with(":undo"))
        .map(|id| {
            id.trim_start_matches("r:")
                .trim_end_matches(":undo")
                .to_string()
        })
        .collect()
}

#[test]
fn saga_strategies_compensate_in_their_order() {
    let sim = saga("backward", None);
    assert_eq!(sim.run.status, RunStatus::Compensated);
    // Completion order of the steps that have compensations and completed.
    let done: Vec<String> = sim
        .finished
        .iter()
        .filter(|id| !id.ends_with(":undo") && !id.contains("generate_report"))
        .map(|id| id.trim_start_matches("r:").to_string())
        .collect();
    assert_eq!(done.len(), 3);
    let mut reversed = done.clone();
    reversed.reverse();
    assert_eq!(compensated(&sim), reversed, "last completed first");
    assert!(sim
        .run
        .events
        .iter()
        .any(|e| e.kind == "saga_compensation_started"));

    let sim = saga("forward", None);
    assert_eq!(compensated(&sim), done, "first completed first");

    let sim = saga("parallel", None);
    assert_eq!(compensated(&sim).len(), 3);
    assert_eq!(sim.run.status, RunStatus::Compensated);

    let sim = saga("selective", None);
    assert_eq!(
        compensated(&sim),
        vec!["generate_report"],
        "only the failed step"
    );

    let sim = saga("cascade", None);
    let order = compensated(&sim);
    assert_eq!(order.len(), 3);
    assert_eq!(
        order.last().unwrap(),
        "collect_data",
        "parents after their dependents: {order:?}"
    );
}

#[test]
fn no_rollback_after_the_pivot() {
    // The pivot is the third step; the fourth fails after it completed.
    let mut sim = Sim::new(
        json!({"saga": "backward", "steps": [
            {"id": "a", "task_type": "a", "compensation": "undo_a"},
            {"id": "b", "task_type": "b", "compensation": "undo_b"},
            {"id": "pivot", "task_type": "p", "pivot": true},
            {"id": "d", "task_type": "d"}
        ], "execution_mode": "sequential"}),
        json!({}),
    );
    sim.apply(RunCommand::Start).unwrap();
    sim.drive(&|t: &TaskSpec| {
        if t.task_type == "d" {
            Err("boom".into())
        } else {
            Ok(json!(1))
        }
    });
    assert_eq!(sim.run.status, RunStatus::Failed);
    assert!(compensated(&sim).is_empty());
    assert!(sim
        .run
        .events
        .iter()
        .any(|e| e.kind == "saga_no_compensation"));
}

#[test]
fn a_failed_compensation_aborts_the_saga() {
    let mut sim = Sim::new(
        json!({"saga": "backward", "execution_mode": "sequential", "steps": [
            {"id": "a", "task_type": "a", "compensation": "undo_a"},
            {"id": "b", "task_type": "b", "compensation": "undo_b"},
            {"id": "c", "task_type": "c"}
        ]}),
        json!({}),
    );
    sim.apply(RunCommand::Start).unwrap();
    sim.drive(&|t: &TaskSpec| match t.task_type.as_str() {
        "c" | "undo_b" => Err("nope".into()),
        _ => Ok(json!(1)),
    });
    assert_eq!(sim.run.status, RunStatus::CompensationFailed);
    assert_eq!(compensated(&sim), vec!["b", "a"], "the others still run");
}

#[test]
fn pause_starts_nothing_new_and_resume_continues() {
    let mut sim = Sim::new(
        json!({"execution_mode": "sequential", "steps": [
        {"id": "a", "task_type": "t"}, {"id": "b", "task_type": "t"}]}),
        json!({}),
    );
    sim.apply(RunCommand::Start).unwrap();
    sim.apply(RunCommand::Pause).unwrap();
    assert!(sim.apply(RunCommand::Pause).is_err());
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Paused);
    assert_eq!(
        sim.submitted.len(),
        1,
        "a finished while paused; b did not start"
    );
    let acts = sim.apply(RunCommand::Resume).unwrap();
    assert_eq!(acts.submit.len(), 1);
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Completed);
}

#[test]
fn retry_runs_only_the_failed_steps_again() {
    let mut sim = Sim::new(
        json!({"steps": [
        {"id": "a", "task_type": "ok"},
        {"id": "b", "task_type": "flaky", "dependencies": ["a"]},
        {"id": "c", "task_type": "ok", "dependencies": ["b"]}]}),
        json!({}),
    );
    sim.apply(RunCommand::Start).unwrap();
    sim.drive(&|t: &TaskSpec| {
        if t.task_type == "flaky" {
            Err("down".into())
        } else {
            Ok(json!(1))
        }
    });
    assert_eq!(sim.run.status, RunStatus::Failed);
    assert_eq!(sim.step("c").status, StepStatus::Cancelled);
    let acts = sim.apply(RunCommand::Retry).unwrap();
    assert_eq!(
        acts.submit
            .iter()
            .map(|t| t.task_id.as_str())
            .collect::<Vec<_>>(),
        vec!["r:b~g1"]
    );
    sim.submitted = acts.submit;
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Completed);
    assert_eq!(sim.step("a").tasks[0].task_id, "r:a", "a was not run again");
    assert!(
        sim.apply(RunCommand::Retry).is_err(),
        "a completed run is not retried"
    );
}

#[test]
fn cancel_cancels_open_tasks() {
    let mut sim = Sim::new(
        json!({"steps": [{"id": "a", "task_type": "t"}, {"id": "b", "task_type": "t"}]}),
        json!({}),
    );
    sim.apply(RunCommand::Start).unwrap();
    let acts = sim
        .apply(RunCommand::Cancel {
            reason: Some("user".into()),
        })
        .unwrap();
    assert_eq!(acts.cancel.len(), 2);
    assert_eq!(sim.run.status, RunStatus::Cancelled);
    assert!(sim.apply(RunCommand::Cancel { reason: None }).is_err());
}

#[test]
fn a_run_survives_serialisation_midway() {
    let def_json = json!({"execution_mode": "sequential", "steps": [{"id": "a", "task_type": "t"}, {"id": "b", "task_type": "t"}]});
    let mut sim = Sim::new(def_json, json!({"k": 1}));
    sim.apply(RunCommand::Start).unwrap();
    let stored = sim.run.to_value();
    let def = FlowDef::reload(&sim.run.def.to_value()).unwrap();
    let back = Run::load(&stored, def).unwrap();
    assert_eq!(back.to_value(), stored);
    assert!(back.owns("r:a"));
    sim.run = back;
    sim.drive(&echo);
    assert_eq!(sim.run.status, RunStatus::Completed);
}

#[test]
fn cached_steps_share_a_task_id_per_input() {
    let d = json!({"steps": [{"id": "a", "task_type": "t", "cache_strategy": "memory", "input": {"x": 1}}]});
    let mut one = Sim::new(d.clone(), json!({}));
    let mut two = Sim::new(d, json!({}));
    let a = one.apply(RunCommand::Start).unwrap();
    let b = two.apply(RunCommand::Start).unwrap();
    assert_eq!(a.submit[0].task_id, b.submit[0].task_id);
    assert!(a.submit[0].task_id.as_str().starts_with("cache:t:"));
}

/// A random DAG: step k may depend on any earlier step.
fn arb_dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<bool>, bool)> {
    (2usize..25).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|k| {
                proptest::collection::btree_set(0..k.max(1), 0..k.min(3) + 1).prop_map(move |s| {
                    if k == 0 {
                        vec![]
                    } else {
                        s.into_iter().collect()
                    }
                })
            })
            .collect::<Vec<_>>();
        (
            deps,
            proptest::collection::vec(proptest::bool::weighted(0.15), n),
            any::<bool>(),
        )
    })
}

proptest! {
    #[test]
    fn every_step_runs_once_after_its_parents((deps, fails, fail_fast) in arb_dag()) {
        let steps: Vec<Value> = deps.iter().enumerate().map(|(k, ds)| json!({
            "id": format!("s{k}"), "task_type": if fails[k] { "bad" } else { "good" },
            "dependencies": ds.iter().map(|d| format!("s{d}")).collect::<Vec<_>>()
        })).collect();
        let on_failure = if fail_fast { "fail_fast" } else { "continue" };
        let mut sim = Sim::new(json!({"steps": steps, "on_failure": on_failure}), json!({}));
        sim.apply(RunCommand::Start).unwrap();
        sim.drive(&|t: &TaskSpec| if t.task_type == "bad" { Err("x".into()) } else { Ok(json!(1)) });

        // Each task submitted at most once.
        let ids: Vec<&str> = sim.submitted.iter().map(|t| t.task_id.as_str()).collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        prop_assert_eq!(ids.len(), unique.len());
        // A step is submitted only after every parent completed.
        let pos = |id: &str| sim.finished.iter().position(|f| f == id);
        for (k, ds) in deps.iter().enumerate() {
            let me = format!("r:s{k}");
            if !ids.contains(&me.as_str()) { continue; }
            let finished_before = sim.finished_when_submitted[&me];
            for d in ds {
                let parent = format!("r:s{d}");
                prop_assert_eq!(sim.step(&format!("s{d}")).status, StepStatus::Completed);
                let parent_done = pos(&parent).expect("parent finished");
                prop_assert!(parent_done < finished_before, "{} submitted before its parent {} finished", me, parent);
            }
        }
        let any_failed = sim.run.steps.iter().any(|s| s.status == StepStatus::Failed);
        prop_assert!(!sim.run.status.is_active(), "the run ended: {:?}", sim.run.status);
        if any_failed {
            prop_assert_eq!(sim.run.status, RunStatus::Failed);
            // A failed step's dependents never ran.
            for (k, ds) in deps.iter().enumerate() {
                if ds.iter().any(|d| sim.step(&format!("s{d}")).status == StepStatus::Failed) {
                    let child = format!("r:s{k}");
                    prop_assert!(!ids.contains(&child.as_str()), "{} ran after a failed parent", child);
                }
            }
            if fail_fast {
                let failures = sim.run.steps.iter().filter(|s| s.status == StepStatus::Failed).count();
                prop_assert_eq!(failures, 1, "fail-fast stops at the first failure");
            }
        } else {
            prop_assert_eq!(sim.run.status, RunStatus::Completed);
            prop_assert_eq!(ids.len(), deps.len(), "every step ran exactly once");
        }
    }
}
