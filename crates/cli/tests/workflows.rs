//! End-to-end workflow tests through the real binary: flow registry, runs in every
//! seed form, sagas, scatter-gather, pause/resume, retry from failure, task
//! dependencies, large outputs passed by reference, and SIGKILL of the server in
//! the middle of a run and of a saga.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

async fn setup(tag: &str, types: &str) -> (TempDir, Server, AgentProc, Api) {
    let dir = TempDir::new(tag);
    let server = Server::start(&dir.0);
    let agent = AgentProc::start(&server.grpc, types, 32, &format!("{tag}-agent"));
    let api = Api::new(&server.http);
    api.wait_agents(1).await;
    (dir, server, agent, api)
}

#[tokio::test]
async fn seed_002_workflow_document_runs_as_written() {
    let (_d, _s, _a, api) = setup("wf-seed002", "echo").await;
    let r = api
        .post(
            "/api/v1/runs",
            &json!({
                "workflow_id": "fraud_detection_training",
                "name": "Fraud Detection Model Training",
                "tasks": [
                    {"task_id": "preprocess_data", "task_type": "echo", "dependencies": [],
                     "parameters": {"dataset_path": "/data/transactions.csv"}, "cache_strategy": "redis"},
                    {"task_id": "train_model", "task_type": "echo", "dependencies": ["preprocess_data"],
                     "parameters": {"algorithm": "xgboost", "n_estimators": 100,
                                    "data": "${steps.preprocess_data.output.inputs[0].data.dataset_path}"}}
                ]
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["run_id"], "fraud_detection_training");
    let run = wait_finished(&api, "fraud_detection_training").await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["progress"]["percent"], 100.0);
    let train = step(&run, "train_model");
    assert_eq!(
        train["output"]["inputs"][0]["data"],
        json!({"algorithm": "xgboost", "n_estimators": 100, "data": "/data/transactions.csv"})
    );
    assert_eq!(train["agents"], json!(["wf-seed002-agent"]));
    // Starting the same run id again returns the existing run.
    let again = api
        .post(
            "/api/v1/runs",
            &json!({"workflow_id": "fraud_detection_training", "tasks": [{"task_id": "x", "task_type": "echo"}]}),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
}

#[tokio::test]
async fn registered_flows_are_versioned_and_runs_start_from_them() {
    let (_d, _s, _a, api) = setup("wf-registry", "echo").await;
    let def = json!({"execution_mode": "sequential", "steps": [
        {"id": "data_ingest", "task_type": "echo", "input": {"text": "${input.text}"}},
        {"id": "data_analysis", "task_type": "echo", "input": "${steps.data_ingest.output.inputs[0].data.text}"},
        {"id": "synthesis", "task_type": "echo"}
    ]});
    let r = api
        .post(
            "/api/v1/flows",
            &json!({"name": "sales_report", "definition": def}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["version"].clone()),
        (201, json!(1)),
        "{}",
        r.body
    );
    // The same definition again changes nothing; another one becomes version 2.
    let r = api
        .post(
            "/api/v1/flows",
            &json!({"name": "sales_report", "definition": def}),
        )
        .await;
    assert_eq!((r.status, r.body["version"].clone()), (200, json!(1)));
    let mut def2 = def.clone();
    def2["description"] = json!("v2");
    let r = api
        .post(
            "/api/v1/flows",
            &json!({"name": "sales_report", "definition": def2}),
        )
        .await;
    assert_eq!(r.body["version"], 2);
    let r = api
        .post(
            "/api/v1/flows",
            &json!({"name": "sales_report", "version": 1, "definition": def2}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let flows = api.get("/api/v1/flows").await.body;
    let ours = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"] == "sales_report")
        .count();
    assert_eq!(ours, 2, "two versions besides the built-in flows: {flows}");
    assert_eq!(
        api.get("/api/v1/flows/sales_report?version=1").await.body["version"],
        1
    );
    assert_eq!(api.get("/api/v1/flows/nope").await.status, 404);

    // YAML is accepted too.
    let yaml = "name: yaml_flow\ndefinition:\n  steps:\n    - id: only\n      task_type: echo\n";
    let r = api
        .http
        .post(format!("{}/api/v1/flows", api.base))
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let r = api
        .post("/api/v1/runs", &json!({"flow": "sales_report", "version": 1, "run_id": "rep-1", "input": {"text": "Q4"}}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let run = wait_finished(&api, "rep-1").await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["flow"], json!({"name": "sales_report", "version": 1}));
    assert_eq!(
        run["critical_path"],
        json!(["data_ingest", "data_analysis", "synthesis"])
    );
    assert_eq!(
        step(&run, "data_analysis")["output"]["inputs"][0]["data"],
        "Q4"
    );
    let list = api
        .get("/api/v1/runs?flow=sales_report&status=completed")
        .await
        .body;
    assert_eq!(list["runs"][0]["run_id"], "rep-1");
}

#[tokio::test]
async fn invalid_definitions_list_every_problem_and_change_nothing() {
    let (_d, _s, _a, api) = setup("wf-invalid", "echo").await;
    let r = api
        .post(
            "/api/v1/runs",
            &json!({"steps": [
            {"id": "a", "task_type": "echo", "dependencies": ["c"]},
            {"id": "b", "task_type": "echo", "dependencies": ["a", "ghost"]},
            {"id": "c", "task_type": "echo", "dependencies": ["b"]},
            {"id": "a", "task_type": "echo"},
            {"id": "d", "task_type": "echo", "when": "input.x >"},
            {"id": "l", "task_type": "echo", "loop": {"until": "output.ok == true"}}
        ], "run_id": "bad"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "invalid_argument");
    let problems = r.body["error"]["details"]["problems"].as_array().unwrap();
    let fields: Vec<&str> = problems
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    for want in [
        "steps[1].dependencies[1]",
        "steps[3].id",
        "steps[4].when",
        "steps[5].loop.max_iterations",
    ] {
        assert!(fields.contains(&want), "{want} missing in {fields:?}");
    }
    assert!(problems
        .iter()
        .any(|p| p["message"].as_str().unwrap().starts_with("cycle: ")));
    assert_eq!(api.get("/api/v1/runs/bad").await.status, 404);
    let r = api.post("/api/v1/runs", &json!({"flow": "unknown"})).await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = api
        .post("/api/v1/runs", &json!({"flow": "x", "bogus": 1}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
}

fn saga_def(strategy: &str) -> Value {
    json!({"saga": {"compensation": strategy}, "execution_mode": "sequential", "steps": [
        {"id": "collect_data", "task_type": "echo", "compensation": "echo"},
        {"id": "validate", "task_type": "echo", "compensation": "echo"},
        {"id": "calculate", "task_type": "echo", "compensation": "echo"},
        {"id": "generate_report", "task_type": "fail", "metadata": {"permanent": true}, "compensation": "echo"},
        {"id": "publish", "task_type": "echo"}
    ]})
}

#[tokio::test]
async fn a_saga_whose_fourth_step_fails_compensates_under_each_strategy() {
    let (_d, _s, _a, api) = setup("wf-saga", "echo,fail").await;
    for strategy in ["backward", "forward", "parallel", "selective", "cascade"] {
        let id = format!("saga-{strategy}");
        let r = api
            .post(
                "/api/v1/runs",
                &json!({"definition": saga_def(strategy), "run_id": id}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let run = wait_finished(&api, &id).await;
        let compensated: Vec<String> = run["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "saga_compensated_step")
            .map(|e| e["step"].as_str().unwrap().to_string())
            .collect();
        match strategy {
            "selective" => {
                // Only the failed step; it failed permanently, so its undo runs.
                assert_eq!(compensated, vec!["generate_report"], "{strategy}: {run}");
            }
            "backward" | "cascade" => {
                assert_eq!(
                    compensated,
                    vec!["calculate", "validate", "collect_data"],
                    "{strategy}: {run}"
                )
            }
            "forward" => {
                assert_eq!(
                    compensated,
                    vec!["collect_data", "validate", "calculate"],
                    "{strategy}"
                )
            }
            _ => assert_eq!(compensated.len(), 3, "{strategy}: {run}"),
        }
        assert_eq!(run["status"], "compensated", "{strategy}: {run}");
        assert_eq!(step(&run, "publish")["status"], "cancelled");
        // The saga log is kept as events.
        assert!(run["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "saga_compensation_started"));
    }
}

#[tokio::test]
async fn no_compensation_after_a_pivot() {
    let (_d, _s, _a, api) = setup("wf-pivot", "echo,fail").await;
    let def = json!({"saga": "backward", "execution_mode": "sequential", "steps": [
        {"id": "collect_data", "task_type": "echo", "compensation": "echo"},
        {"id": "generate_report", "task_type": "echo", "is_pivot": true},
        {"id": "publish", "task_type": "fail", "metadata": {"permanent": true}}
    ]});
    api.post(
        "/api/v1/runs",
        &json!({"definition": def, "run_id": "pivot"}),
    )
    .await;
    let run = wait_finished(&api, "pivot").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert!(
        step(&run, "collect_data").get("compensation").is_none(),
        "{run}"
    );
    assert!(run["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "saga_no_compensation"));
}

#[tokio::test]
async fn scatter_gather_fails_when_min_responses_is_not_reached() {
    let (_d, _s, _a, api) = setup("wf-scatter", "echo,fail").await;
    let def = json!({"steps": [
        {"id": "ask", "task_type": "fail", "metadata": {"permanent": true},
         "scatter": {"count": 3, "aggregate": "majority", "min_responses": 2}}
    ]});
    api.post(
        "/api/v1/runs",
        &json!({"definition": def, "run_id": "sg-fail"}),
    )
    .await;
    let run = wait_finished(&api, "sg-fail").await;
    assert_eq!(run["status"], "failed");
    assert!(
        step(&run, "ask")["error"]
            .as_str()
            .unwrap()
            .contains("min_responses is 2"),
        "{run}"
    );
    let def = json!({"steps": [
        {"id": "ask", "task_type": "echo", "input": {"label": "cat"},
         "scatter": {"count": 3, "aggregate": "majority", "min_responses": 2, "field": "inputs[0].data.label"}}
    ]});
    api.post(
        "/api/v1/runs",
        &json!({"definition": def, "run_id": "sg-ok"}),
    )
    .await;
    let run = wait_finished(&api, "sg-ok").await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(step(&run, "ask")["output"]["value"], "cat");
    assert_eq!(step(&run, "ask")["output"]["votes"], 3);
}

#[tokio::test]
async fn pause_holds_new_steps_and_resume_finishes_the_run() {
    let (_d, _s, _a, api) = setup("wf-pause", "sleep").await;
    let def = json!({"execution_mode": "sequential", "steps": [
        {"id": "a", "task_type": "sleep", "metadata": {"sleep_ms": 300}},
        {"id": "b", "task_type": "sleep"}
    ]});
    api.post("/api/v1/runs", &json!({"definition": def, "run_id": "p1"}))
        .await;
    let r = api.post("/api/v1/runs/p1/pause", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "paused");
    // a finishes while paused; b does not start.
    wait_run(&api, "p1", |r| step(r, "a")["status"] == "completed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = api.get("/api/v1/runs/p1").await.body;
    assert_eq!(step(&run, "b")["status"], "pending", "{run}");
    // The run is held in memory and never reads an output, so it keeps none:
    // asked for, the completed step's output is read from the store.
    let run = api.get("/api/v1/runs/p1?include_outputs=true").await.body;
    assert_eq!(step(&run, "a")["output"]["slept_ms"], 300, "{run}");
    assert_eq!(
        api.post("/api/v1/runs/p1/pause", &json!({})).await.status,
        409
    );
    let r = api.post("/api/v1/runs/p1/resume", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let run = wait_finished(&api, "p1").await;
    assert_eq!(run["status"], "completed");
}

#[tokio::test]
async fn a_step_whose_agent_dies_on_its_last_attempt_fails_the_run_at_once() {
    let (_d, _s, mut agent, api) = setup("wf-lost", "sleep").await;
    let def = json!({"steps": [
        {"id": "a", "task_type": "sleep", "metadata": {"sleep_ms": 30000},
         "retry": {"max_attempts": 1}},
        {"id": "b", "task_type": "sleep", "dependencies": ["a"]}
    ]});
    let r = api
        .post(
            "/api/v1/runs",
            &json!({"definition": def, "run_id": "lost-1"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    wait_run(&api, "lost-1", |r| step(r, "a")["status"] == "running").await;
    let killed = std::time::Instant::now();
    agent.kill();
    // The lost agent's attempt fails where the server notices the stream end,
    // and the run hears of it then: not at its next reconcile, which comes
    // only once the run has been quiet for 2 s.
    let run = wait_finished(&api, "lost-1").await;
    let took = killed.elapsed();
    assert_eq!(run["status"], "failed", "{run}");
    assert_ne!(step(&run, "a")["status"], "completed", "{run}");
    assert_ne!(step(&run, "b")["status"], "completed", "{run}");
    assert!(
        took < Duration::from_millis(1500),
        "the run took {took:?} to hear of its lost step"
    );
}

#[tokio::test]
async fn retry_reruns_only_the_failed_steps() {
    let (_d, _s, _a, api) = setup("wf-retry", "echo,fail").await;
    // b always fails; a retry must submit b again (a new task) and nothing else.
    let def = json!({"steps": [
        {"id": "a", "task_type": "echo"},
        {"id": "b", "task_type": "fail", "dependencies": ["a"], "metadata": {"permanent": true}},
        {"id": "c", "task_type": "echo", "dependencies": ["b"]}
    ]});
    api.post("/api/v1/runs", &json!({"definition": def, "run_id": "rt"}))
        .await;
    let run = wait_finished(&api, "rt").await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(step(&run, "c")["status"], "cancelled");
    let r = api.post("/api/v1/runs/rt/retry", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "running");
    let run = wait_run(&api, "rt", |r| {
        r["generation"] == 1 && r["status"] == "failed"
    })
    .await;
    assert_eq!(
        step(&run, "a")["tasks"][0]["task_id"],
        "rt:a",
        "a did not run again"
    );
    assert_eq!(step(&run, "a")["status"], "completed");
    assert_eq!(step(&run, "b")["tasks"][0]["task_id"], "rt:b~g1", "{run}");
    assert_eq!(step(&run, "b")["status"], "failed");
    let a = api.get("/api/v1/tasks/rt:a").await.body;
    assert_eq!(a["agent_executions"].as_array().unwrap().len(), 1, "{a}");
    let r = api.post("/api/v1/runs/rt/pause", &json!({})).await;
    assert_eq!(r.status, 409, "a finished run cannot be paused: {}", r.body);
}

#[tokio::test]
async fn seed_001_dependencies_wait_and_failed_parents_cancel_dependents() {
    let (_d, _s, _a, api) = setup("wf-deps", "sleep,fail").await;
    api.submit(json!({"task_id": "parent", "task_type": "sleep", "metadata": {"sleep_ms": 300}}))
        .await;
    let child = api
        .submit(json!({"task_id": "child", "task_type": "sleep", "dependencies": ["parent"]}))
        .await;
    assert_eq!(child["status"], "waiting", "{child}");
    let child = api.wait_done("child", LONG).await;
    assert_eq!(child["status"], "completed", "{child}");
    // The child started only after its parent completed.
    let parent = api.get("/api/v1/tasks/parent").await.body;
    let parent_done = parent["agent_executions"][0]["finished_at"]
        .as_str()
        .unwrap()
        .to_string();
    let child_started = child["agent_executions"][0]["started_at"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        child_started >= parent_done,
        "{child_started} < {parent_done}"
    );

    api.submit(
        json!({"task_id": "bad-parent", "task_type": "fail", "metadata": {"permanent": true}}),
    )
    .await;
    api.submit(json!({"task_id": "dep1", "task_type": "sleep", "dependencies": ["bad-parent"]}))
        .await;
    api.submit(json!({"task_id": "dep2", "task_type": "sleep", "dependencies": ["dep1"]}))
        .await;
    let d2 = api.wait_done("dep2", LONG).await;
    assert_eq!(d2["status"], "cancelled", "the cancel cascades: {d2}");
    let d1 = api.get("/api/v1/tasks/dep1").await.body;
    assert_eq!(d1["status"], "cancelled");
}

#[tokio::test]
async fn server_sigkill_mid_run_and_mid_compensation_resumes_without_rerunning() {
    let dir = TempDir::new("wf-crash");
    let mut server = Server::start(&dir.0);
    let (http_addr, grpc_addr) = (server.http_addr.clone(), server.grpc_addr.clone());
    let _agent = AgentProc::start(&server.grpc, "sleep,fail", 16, "crash-agent");
    let api = Api::new(&server.http);
    api.wait_agents(1).await;
    // A 6-step chain of 200 ms steps, and a saga whose compensations take 400 ms each.
    let chain: Vec<Value> = (0..6)
        .map(
            |k| json!({"id": format!("s{k}"), "task_type": "sleep", "metadata": {"sleep_ms": 200}}),
        )
        .collect();
    api.post(
        "/api/v1/runs",
        &json!({"run_id": "chain", "definition": {"execution_mode": "sequential", "steps": chain}}),
    )
    .await;
    let saga = json!({"saga": "backward", "execution_mode": "sequential", "steps": [
        {"id": "a", "task_type": "sleep", "compensation": {"task_type": "sleep"}, "metadata": {"sleep_ms": 400}},
        {"id": "b", "task_type": "sleep", "compensation": {"task_type": "sleep"}, "metadata": {"sleep_ms": 400}},
        {"id": "c", "task_type": "fail", "metadata": {"permanent": true}}
    ]});
    api.post(
        "/api/v1/runs",
        &json!({"run_id": "saga", "definition": saga}),
    )
    .await;
    wait_run(&api, "saga", |r| r["status"] == "compensating").await;
    wait_run(&api, "chain", |r| step(r, "s1")["status"] == "completed").await;
    server.kill();

    let server = Server::start_on(&dir.0, &http_addr, &grpc_addr, &[]);
    let api = Api::new(&server.http);
    api.wait_healthy().await;
    let chain = wait_finished(&api, "chain").await;
    assert_eq!(chain["status"], "completed", "{chain}");
    for k in 0..6 {
        let s = step(&chain, &format!("s{k}"));
        assert_eq!(s["tasks"].as_array().unwrap().len(), 1, "{s}");
    }
    // Each step ran once: the completed ones were not started again.
    let t = api.get("/api/v1/tasks/chain:s0").await.body;
    assert_eq!(t["metrics"]["retry_count"], 0, "{t}");
    let saga = wait_finished(&api, "saga").await;
    assert_eq!(
        saga["status"], "compensated",
        "the saga went on compensating: {saga}"
    );
    assert_eq!(step(&saga, "a")["compensation"]["status"], "completed");
    assert_eq!(step(&saga, "b")["compensation"]["status"], "completed");
}

#[tokio::test]
async fn run_events_stream_as_server_sent_events() {
    let (_d, _s, _a, api) = setup("wf-sse", "sleep").await;
    let def = json!({"execution_mode": "sequential", "steps": [
        {"id": "a", "task_type": "sleep", "metadata": {"sleep_ms": 100}},
        {"id": "b", "task_type": "sleep", "metadata": {"sleep_ms": 100}}
    ]});
    api.post("/api/v1/runs", &json!({"definition": def, "run_id": "sse"}))
        .await;
    let resp = api
        .http
        .get(format!("{}/api/v1/runs/sse/events", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(LONG, resp.text())
        .await
        .expect("the stream ends with the run")
        .unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["kind"].as_str().map(str::to_string))
        .map(|s| Box::leak(s.into_boxed_str()) as &str)
        .collect();
    assert!(kinds.contains(&"step_started"), "{text}");
    assert_eq!(kinds.last(), Some(&"run_completed"), "{text}");
    assert!(text.contains("event: end"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_output_reaches_ten_children_by_reference_not_by_copy() {
    let (_d, _s, _a, api) = setup("wf-byref", "echo").await;
    // About 1 MB, with some structure to select from.
    let rows: Vec<Value> = (0..10_000)
        .map(|i| json!({"n": i, "pad": "x".repeat(90)}))
        .collect();
    let mut steps =
        vec![json!({"id": "big", "task_type": "echo", "input": {"rows": "${input.rows}"}})];
    for c in 0..10 {
        steps.push(
            json!({"id": format!("c{c}"), "task_type": "echo", "dependencies": ["big"],
            "input": {"child": c, "rows": "${steps.big.output.inputs[0].data.rows}",
                      "first": "${steps.big.output.inputs[0].data.rows[1].n}"}}),
        );
    }
    // A field that turns out absent fails its step alone (the run goes on).
    steps.push(
        json!({"id": "absent", "task_type": "echo", "dependencies": ["big"],
        "input": {"x": "${steps.big.output.inputs[0].data.nope}"}}),
    );
    let r = api
        .post(
            "/api/v1/runs",
            &json!({"run_id": "byref", "input": {"rows": rows},
                "definition": {"on_failure": "continue", "steps": steps}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let run = wait_finished(&api, "byref").await;
    let absent = step(&run, "absent");
    assert_eq!(absent["status"], "failed");
    assert_eq!(
        absent["error"],
        "input: steps.big.output.inputs[0].data.nope is absent"
    );

    let parent = api.get("/api/v1/tasks/byref:big?include_inputs=true").await;
    assert!(parent.body["inputs"].to_string().len() > 1_000_000);
    for c in 0..10 {
        let s = step(&run, &format!("c{c}"));
        assert_eq!(s["status"], "completed", "{}", s["error"]);
        // The agent received the input as written, resolved, and no trace of
        // the reference in the metadata.
        let got = &s["output"]["inputs"][0]["data"];
        assert_eq!(got["child"], c);
        assert_eq!(got["first"], 1);
        assert_eq!(got["rows"], json!(rows), "child {c} got other rows");
        assert!(s["output"]["metadata"].get("input_refs").is_none());
        assert_eq!(s["output"]["metadata"]["step_id"], format!("c{c}"));
        // The stored task holds a reference, not a copy.
        let t = api
            .get(&format!("/api/v1/tasks/byref:c{c}?include_inputs=true"))
            .await;
        assert_eq!(t.status, 200, "{}", t.body);
        let stored = t.body["inputs"].to_string();
        assert!(
            stored.len() < 1_000,
            "child {c} stores {} bytes",
            stored.len()
        );
        assert_eq!(t.body["inputs"][0]["data"]["rows"], Value::Null);
        assert_eq!(t.body["inputs"][0]["data"]["first"], 1);
        let refs = &t.body["metadata"]["input_refs"];
        assert_eq!(
            refs,
            &json!([{"at": "/rows", "task_id": "byref:big",
                     "ref": "steps.big.output.inputs[0].data.rows"}])
        );
    }

    // A client may not write references of its own.
    let r = api
        .post(
            "/api/v1/tasks",
            &json!({"task_id": "sneaky", "task_type": "echo", "metadata": {"input_refs":
                [{"at": "", "task_id": "byref:big", "ref": "steps.big.output"}]}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["error"]["details"]["field"], "metadata.input_refs");
}
