//! The workflow API surfaces beyond REST's single calls, through the real binary
//! with real agent processes: the gRPC `Workflows` service (same answers and errors
//! as REST), `POST /api/v1/runs/batch`, and the `baton flows` / `baton runs` commands.

mod common;

use baton_proto::v1;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_stream::StreamExt;

const LONG: Duration = Duration::from_secs(60);

type Client = v1::workflows_client::WorkflowsClient<tonic::transport::Channel>;

async fn grpc(server: &Server) -> Client {
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .expect("grpc connects");
    v1::workflows_client::WorkflowsClient::new(channel)
}

async fn setup(tag: &str, types: &str) -> (TempDir, Server, AgentProc, Api) {
    let dir = TempDir::new(tag);
    let server = Server::start(&dir.0);
    let agent = AgentProc::start(&server.grpc, types, 32, &format!("{tag}-agent"));
    let api = Api::new(&server.http);
    api.wait_agents(1).await;
    (dir, server, agent, api)
}

fn run_json(run: &v1::Run) -> Value {
    serde_json::from_str(&run.run_json).expect("run_json is JSON")
}

/// A definition with every kind of problem the validator reports at once.
fn bad_definition() -> Value {
    json!({"steps": [
        {"id": "a", "task_type": "echo", "dependencies": ["c"]},
        {"id": "b", "task_type": "echo", "dependencies": ["a", "ghost"]},
        {"id": "c", "task_type": "echo", "dependencies": ["b"]},
        {"id": "a", "task_type": "echo"},
        {"id": "d", "task_type": "echo", "when": "input.x >"},
        {"id": "l", "task_type": "echo", "loop": {"until": "output.ok == true"}}
    ]})
}

/// The REST error and the gRPC status for the same input agree: same code (through
/// the shared table), message and details.
fn assert_same_error(rest: &Resp, grpc: &tonic::Status, http: u16, code: tonic::Code) {
    assert_eq!(rest.status, http, "{}", rest.body);
    assert_eq!(grpc.code(), code, "{grpc:?}");
    let e = baton_proto::from_status(grpc);
    assert_eq!(e.code.as_str(), rest.body["error"]["code"], "{grpc:?}");
    assert_eq!(e.message, rest.body["error"]["message"], "{grpc:?}");
    let rest_details = &rest.body["error"]["details"];
    if rest_details == &json!({}) {
        assert!(e.details.is_null(), "{:?}", e.details);
    } else {
        assert_eq!(&e.details, rest_details);
    }
}

#[tokio::test]
async fn grpc_flows_register_list_get_and_errors_match_rest() {
    let (_d, server, _a, api) = setup("grpc-flows", "echo").await;
    let mut c = grpc(&server).await;
    let def = json!({"execution_mode": "sequential", "steps": [
        {"id": "first", "task_type": "echo", "input": {"text": "${input.text}"}},
        {"id": "second", "task_type": "echo", "input": "${steps.first.output.inputs[0].data.text}"}
    ]});
    let reg = |name: &str, version: u32, def: &Value| v1::RegisterFlowRequest {
        name: name.into(),
        version,
        definition_json: def.to_string(),
    };
    let r = c
        .register_flow(reg("g_flow", 0, &def))
        .await
        .unwrap()
        .into_inner();
    assert!(r.created);
    let flow = r.flow.unwrap();
    assert_eq!((flow.name.as_str(), flow.version), ("g_flow", 1));
    let again = c
        .register_flow(reg("g_flow", 0, &def))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created, "the same definition is the same version");
    let mut def2 = def.clone();
    def2["description"] = json!("v2");
    let v2 = c
        .register_flow(reg("g_flow", 0, &def2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.flow.unwrap().version, 2);

    let got = c
        .get_flow(v1::GetFlowRequest {
            name: "g_flow".into(),
            version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let rest = api.get("/api/v1/flows/g_flow?version=1").await.body;
    assert_eq!(
        serde_json::from_str::<Value>(&got.definition_json).unwrap(),
        rest["definition"]
    );
    let latest = c
        .get_flow(v1::GetFlowRequest {
            name: "g_flow".into(),
            version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(latest.version, 2);
    let list = c
        .list_flows(v1::ListFlowsRequest {})
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<u32> = list
        .flows
        .iter()
        .filter(|f| f.name == "g_flow")
        .map(|f| f.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
    assert!(
        list.flows.iter().any(|f| f.name == "report_generation"),
        "the built-in flows are listed too"
    );

    // Errors: the same input gives the same code, message and details.
    let grpc_err = c
        .get_flow(v1::GetFlowRequest {
            name: "nope".into(),
            version: 0,
        })
        .await
        .unwrap_err();
    assert_same_error(
        &api.get("/api/v1/flows/nope").await,
        &grpc_err,
        404,
        tonic::Code::NotFound,
    );
    let grpc_err = c
        .register_flow(reg("bad_flow", 0, &bad_definition()))
        .await
        .unwrap_err();
    let rest = api
        .post(
            "/api/v1/flows",
            &json!({"name": "bad_flow", "definition": bad_definition()}),
        )
        .await;
    assert_same_error(&rest, &grpc_err, 400, tonic::Code::InvalidArgument);
    let problems = baton_proto::from_status(&grpc_err).details["problems"]
        .as_array()
        .unwrap()
        .len();
    assert!(problems >= 5, "every problem at once: {grpc_err:?}");
    // A version taken by another definition.
    let grpc_err = c.register_flow(reg("g_flow", 1, &def2)).await.unwrap_err();
    let rest = api
        .post(
            "/api/v1/flows",
            &json!({"name": "g_flow", "version": 1, "definition": def2}),
        )
        .await;
    assert_same_error(&rest, &grpc_err, 409, tonic::Code::AlreadyExists);
    let grpc_err = c
        .register_flow(reg("g_flow", 0, &json!(null)))
        .await
        .unwrap_err();
    assert_eq!(grpc_err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn grpc_runs_start_get_list_watch_and_commands() {
    let (_d, server, _a, api) = setup("grpc-runs", "echo,sleep,fail").await;
    let mut c = grpc(&server).await;
    let def = json!({"execution_mode": "sequential", "steps": [
        {"id": "a", "task_type": "echo", "input": {"text": "${input.text}"}},
        {"id": "b", "task_type": "sleep", "metadata": {"sleep_ms": 150}},
        {"id": "c", "task_type": "echo", "input": "${steps.a.output.inputs[0].data.text}"}
    ]});
    c.register_flow(v1::RegisterFlowRequest {
        name: "g_chain".into(),
        version: 0,
        definition_json: def.to_string(),
    })
    .await
    .unwrap();

    // StartRun from a registered flow, then WatchRun until it ends.
    let started = c
        .start_run(v1::StartRunRequest {
            run_id: "g-run-1".into(),
            flow: "g_chain".into(),
            input_json: json!({"text": "hello"}).to_string(),
            priority: "high".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(started.created);
    let run = started.run.unwrap();
    assert_eq!((run.run_id.as_str(), run.steps_total), ("g-run-1", 3));
    assert_eq!(
        run_json(&run)["flow"],
        json!({"name": "g_chain", "version": 1})
    );
    let mut stream = c
        .watch_run(v1::WatchRunRequest {
            run_id: "g-run-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(msg) = tokio::time::timeout(LONG, stream.next())
        .await
        .expect("the watch ends with the run")
    {
        events.push(msg.unwrap());
    }
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.last(), Some(&"end"), "{kinds:?}");
    assert_eq!(kinds[kinds.len() - 2], "run_completed", "{kinds:?}");
    let started_steps: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "step_started")
        .map(|e| {
            serde_json::from_str::<Value>(&e.event_json).unwrap()["step"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(started_steps, ["a", "b", "c"], "each step once, in order");
    let end = events
        .last()
        .unwrap()
        .run
        .clone()
        .expect("end carries the run");
    assert_eq!(end.status, "completed");
    assert_eq!((end.steps_done, end.steps_total), (3, 3));
    let end_view = run_json(&end);
    assert_eq!(step(&end_view, "c")["output"]["inputs"][0]["data"], "hello");
    // Watching a finished run replays its events and ends at once.
    let replay: Vec<v1::RunEvent> = c
        .watch_run(v1::WatchRunRequest {
            run_id: "g-run-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .map(|m| m.unwrap())
        .collect()
        .await;
    assert_eq!(replay.len(), events.len());

    // GetRun is REST's view.
    let got = c
        .get_run(v1::GetRunRequest {
            run_id: "g-run-1".into(),
            include_outputs: true,
        })
        .await
        .unwrap()
        .into_inner();
    let rest = api
        .get("/api/v1/runs/g-run-1?include_outputs=true")
        .await
        .body;
    let mut grpc_view = run_json(&got);
    let mut rest_view = rest.clone();
    for v in [&mut grpc_view, &mut rest_view] {
        // Connected agents' view of waiting steps can differ between two reads.
        v.as_object_mut().unwrap().remove("updated_at");
    }
    assert_eq!(grpc_view, rest_view);
    assert_eq!(got.status, "completed");

    // ListRuns with filters; a bad filter is refused like over REST.
    let list = c
        .list_runs(v1::ListRunsRequest {
            flow: "g_chain".into(),
            status: "completed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.runs.len(), 1);
    assert_eq!(list.runs[0].run_id, "g-run-1");
    assert_eq!(list.runs[0].flow, "g_chain");
    assert_eq!((list.runs[0].steps_done, list.runs[0].steps_total), (3, 3));
    let grpc_err = c
        .list_runs(v1::ListRunsRequest {
            status: "sleepy".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_same_error(
        &api.get("/api/v1/runs?status=sleepy").await,
        &grpc_err,
        400,
        tonic::Code::InvalidArgument,
    );

    // An inline definition with every problem: INVALID_ARGUMENT with REST's list.
    let grpc_err = c
        .start_run(v1::StartRunRequest {
            run_id: "g-bad".into(),
            definition_json: bad_definition().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let rest = api
        .post(
            "/api/v1/runs",
            &json!({"run_id": "g-bad", "definition": bad_definition()}),
        )
        .await;
    assert_same_error(&rest, &grpc_err, 400, tonic::Code::InvalidArgument);
    let error = baton_proto::from_status(&grpc_err);
    let fields = error.problem_fields();
    for want in [
        "steps[1].dependencies[1]",
        "steps[3].id",
        "steps[4].when",
        "steps[5].loop.max_iterations",
    ] {
        assert!(fields.contains(&want), "{want} missing in {fields:?}");
    }
    assert_eq!(api.get("/api/v1/runs/g-bad").await.status, 404);
    // Other bad requests: same answers as REST.
    let grpc_err = c
        .start_run(v1::StartRunRequest {
            flow: "unknown".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_same_error(
        &api.post("/api/v1/runs", &json!({"flow": "unknown"})).await,
        &grpc_err,
        404,
        tonic::Code::NotFound,
    );
    let grpc_err = c
        .start_run(v1::StartRunRequest {
            flow: "g_chain".into(),
            on_failure: "shrug".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_same_error(
        &api.post(
            "/api/v1/runs",
            &json!({"flow": "g_chain", "on_failure": "shrug"}),
        )
        .await,
        &grpc_err,
        400,
        tonic::Code::InvalidArgument,
    );
    let grpc_err = c
        .start_run(v1::StartRunRequest {
            flow: "g_chain".into(),
            input_json: "{not json".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(grpc_err.code(), tonic::Code::InvalidArgument);
    assert!(grpc_err.message().contains("input_json"), "{grpc_err:?}");
    let grpc_err = c
        .get_run(v1::GetRunRequest {
            run_id: "ghost".into(),
            include_outputs: false,
        })
        .await
        .unwrap_err();
    assert_same_error(
        &api.get("/api/v1/runs/ghost").await,
        &grpc_err,
        404,
        tonic::Code::NotFound,
    );
    let grpc_err = c
        .watch_run(v1::WatchRunRequest {
            run_id: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(grpc_err.code(), tonic::Code::NotFound);

    // Pause holds new steps; resume finishes the run.
    let slow = json!({"execution_mode": "sequential", "steps": [
        {"id": "a", "task_type": "sleep", "metadata": {"sleep_ms": 600}},
        {"id": "b", "task_type": "sleep"}
    ]});
    c.start_run(v1::StartRunRequest {
        run_id: "g-pause".into(),
        definition_json: slow.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let paused = c
        .pause_run(v1::RunRef {
            run_id: "g-pause".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paused.status, "paused");
    wait_run(&api, "g-pause", |r| step(r, "a")["status"] == "completed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = api.get("/api/v1/runs/g-pause").await.body;
    assert_eq!(step(&run, "b")["status"], "pending", "{run}");
    let grpc_err = c
        .pause_run(v1::RunRef {
            run_id: "g-pause".into(),
        })
        .await
        .unwrap_err();
    assert_same_error(
        &api.post("/api/v1/runs/g-pause/pause", &json!({})).await,
        &grpc_err,
        409,
        tonic::Code::FailedPrecondition,
    );
    let resumed = c
        .resume_run(v1::RunRef {
            run_id: "g-pause".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.status, "running");
    assert_eq!(wait_finished(&api, "g-pause").await["status"], "completed");

    // Cancel stops a run.
    c.start_run(v1::StartRunRequest {
        run_id: "g-cancel".into(),
        definition_json: json!({"steps": [{"id": "long", "task_type": "sleep", "metadata": {"sleep_ms": 20000}}]}).to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let cancelled = c
        .cancel_run(v1::RunRef {
            run_id: "g-cancel".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status, "cancelled");
    let run = wait_finished(&api, "g-cancel").await;
    assert_eq!(step(&run, "long")["status"], "cancelled", "{run}");

    // Retry runs the failed step again, not the completed one.
    let failing = json!({"steps": [
        {"id": "ok", "task_type": "echo"},
        {"id": "bad", "task_type": "fail", "dependencies": ["ok"], "metadata": {"permanent": true}}
    ]});
    c.start_run(v1::StartRunRequest {
        run_id: "g-retry".into(),
        definition_json: failing.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(wait_finished(&api, "g-retry").await["status"], "failed");
    let retried = c
        .retry_run(v1::RunRef {
            run_id: "g-retry".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.status, "running");
    let run = wait_run(&api, "g-retry", |r| {
        r["generation"] == 1 && r["status"] == "failed"
    })
    .await;
    assert_eq!(step(&run, "ok")["tasks"][0]["task_id"], "g-retry:ok");
    assert_eq!(step(&run, "bad")["tasks"][0]["task_id"], "g-retry:bad~g1");
}

#[tokio::test]
async fn grpc_start_runs_reports_each_item_and_starts_the_good_ones() {
    let (_d, server, _a, api) = setup("grpc-batch", "echo").await;
    let mut c = grpc(&server).await;
    let one = json!({"steps": [{"id": "x", "task_type": "echo"}]});
    let item = |id: &str, def: &Value| v1::StartRunRequest {
        run_id: id.into(),
        definition_json: def.to_string(),
        ..Default::default()
    };
    let resp = c
        .start_runs(v1::StartRunsRequest {
            runs: vec![
                item("gb-1", &one),
                item("gb-bad", &bad_definition()),
                item("gb-2", &one),
                v1::StartRunRequest {
                    flow: "nope".into(),
                    ..Default::default()
                },
                item("gb-1", &one),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resp.created, resp.existing, resp.errors), (2, 1, 2));
    let r = &resp.results;
    assert!(r[0].created && r[0].error.is_none());
    let bad = r[1].error.clone().unwrap();
    assert_eq!(bad.code, "invalid_argument");
    let details: Value = serde_json::from_str(&bad.details_json).unwrap();
    // The same problems as a single start (REST) reports.
    let rest = api
        .post(
            "/api/v1/runs",
            &json!({"run_id": "gb-bad", "definition": bad_definition()}),
        )
        .await;
    assert_eq!(details, rest.body["error"]["details"]);
    assert_eq!(bad.message, rest.body["error"]["message"]);
    assert_eq!(r[3].error.clone().unwrap().code, "not_found");
    assert!(!r[4].created && r[4].run.as_ref().unwrap().run_id == "gb-1");
    for id in ["gb-1", "gb-2"] {
        assert_eq!(wait_finished(&api, id).await["status"], "completed");
    }
    let err = c
        .start_runs(v1::StartRunsRequest { runs: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn rest_batch_starts_good_runs_and_reports_bad_ones_per_item() {
    let (_d, _s, _a, api) = setup("rest-batch", "echo").await;
    let def = json!({"steps": [
        {"id": "a", "task_type": "echo", "input": "${input}"},
        {"id": "b", "task_type": "echo", "dependencies": ["a"]}
    ]});
    assert_eq!(
        api.post("/api/v1/flows", &json!({"name": "bf", "definition": def}))
            .await
            .status,
        201
    );
    let mut runs: Vec<Value> = (0..20)
        .map(|i| json!({"flow": "bf", "run_id": format!("br-{i}"), "input": {"i": i}}))
        .collect();
    runs.push(json!({"definition": bad_definition(), "run_id": "br-bad"}));
    runs.push(json!({"flow": "missing", "run_id": "br-missing"}));
    runs.push(json!({"flow": "bf", "bogus": true}));
    // Seed 002's document as an item, and an inline definition without an id.
    runs.push(json!({"workflow_id": "br-seed002", "tasks": [
        {"task_id": "prep", "task_type": "echo"},
        {"task_id": "train", "task_type": "echo", "dependencies": ["prep"]}
    ]}));
    runs.push(json!({"definition": def, "input": 7}));
    let r = api.post("/api/v1/runs/batch", &json!({"runs": runs})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (
            r.body["created"].clone(),
            r.body["existing"].clone(),
            r.body["errors"].clone()
        ),
        (json!(22), json!(0), json!(3)),
        "{}",
        r.body
    );
    let items = r.body["runs"].as_array().unwrap();
    assert_eq!(items.len(), 25);
    assert_eq!(items[0]["run_id"], "br-0");
    assert_eq!(items[0]["created"], true);
    assert_eq!(items[20]["run_id"], "br-bad");
    assert_eq!(items[20]["error"]["code"], "invalid_argument");
    let single = api
        .post(
            "/api/v1/runs",
            &json!({"definition": bad_definition(), "run_id": "br-bad"}),
        )
        .await;
    assert_eq!(
        items[20]["error"]["details"],
        single.body["error"]["details"]
    );
    assert_eq!(
        items[20]["error"]["message"],
        single.body["error"]["message"]
    );
    assert_eq!(items[21]["error"]["code"], "not_found");
    assert_eq!(items[22]["error"]["code"], "invalid_argument");
    assert_eq!(
        items[22]["error"]["details"]["problems"][0]["field"],
        "bogus"
    );
    assert_eq!(items[23]["run_id"], "br-seed002");
    let generated = items[24]["run_id"].as_str().unwrap().to_string();
    // Every good run completes; the bad ones left nothing behind.
    for i in 0..20 {
        let run = wait_finished(&api, &format!("br-{i}")).await;
        assert_eq!(run["status"], "completed", "{run}");
        assert_eq!(
            step(&run, "a")["output"]["inputs"][0]["data"],
            json!({"i": i})
        );
    }
    for id in ["br-seed002", generated.as_str()] {
        assert_eq!(wait_finished(&api, id).await["status"], "completed");
    }
    assert_eq!(api.get("/api/v1/runs/br-bad").await.status, 404);
    assert_eq!(api.get("/api/v1/runs/br-missing").await.status, 404);

    // The same batch again: every good item exists already.
    let r = api
        .post(
            "/api/v1/runs/batch",
            &json!({"runs": [{"flow": "bf", "run_id": "br-0"}]}),
        )
        .await;
    assert_eq!(
        (r.body["created"].clone(), r.body["existing"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(r.body["runs"][0]["status"], "completed");

    // The envelope is checked as a whole.
    for (body, status) in [
        (json!({"runs": []}), 400),
        (json!({"tasks": []}), 400),
        (json!([]), 400),
        (json!({"runs": vec![json!({}); 1001]}), 413),
    ] {
        let r = api.post("/api/v1/runs/batch", &body).await;
        assert_eq!(r.status, status, "{body:.80}: {}", r.body);
    }
}

#[tokio::test]
async fn cli_registers_a_yaml_flow_and_drives_its_runs() {
    let (dir, server, _a, api) = setup("cli-runs", "echo,sleep").await;
    let file = dir.0.join("report.yaml");
    std::fs::write(
        &file,
        "name: cli_report\n\
         execution_mode: sequential\n\
         steps:\n  \
           - id: ingest\n    task_type: echo\n    input: {text: \"${input.text}\"}\n  \
           - id: analyse\n    task_type: sleep\n    metadata: {sleep_ms: 200}\n  \
           - id: publish\n    task_type: echo\n    input: \"${steps.ingest.output.inputs[0].data.text}\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (ok, out, err) = baton(&server, &["flows", "register", path]);
    assert!(ok, "{err}");
    assert!(out.contains("flow cli_report version 1"), "{out}");
    let (ok, out, _) = baton(&server, &["flows", "list"]);
    assert!(ok);
    assert!(out.contains("cli_report"), "{out}");
    let (ok, out, _) = baton(&server, &["flows", "get", "cli_report", "--json"]);
    assert!(ok);
    let flow: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(flow["definition"]["steps"][1]["id"], "analyse");
    let (ok, _, err) = baton(&server, &["flows", "get", "cli_report", "--version", "9"]);
    assert!(!ok);
    assert!(err.contains("not_found"), "{err}");

    // start --wait follows the run and shows its steps.
    let (ok, out, err) = baton(
        &server,
        &[
            "runs",
            "start",
            "--flow",
            "cli_report",
            "--run-id",
            "cli-1",
            "--input",
            r#"{"text": "Q4"}"#,
            "--wait",
        ],
    );
    assert!(ok, "{out}\n{err}");
    for want in [
        "step ingest started",
        "step analyse completed",
        "run completed",
        "status     completed",
        "progress   3/3 steps",
        "cli-runs-agent",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    let (ok, out, _) = baton(&server, &["runs", "get", "cli-1", "--json"]);
    assert!(ok);
    let run: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["status"], "completed");
    assert_eq!(run["flow"]["name"], "cli_report");
    let (ok, out, _) = baton(&server, &["runs", "get", "cli-1", "--outputs"]);
    assert!(ok);
    assert!(out.contains("output of publish"), "{out}");
    let (ok, out, _) = baton(&server, &["runs", "list", "--flow", "cli_report"]);
    assert!(ok);
    assert!(out.contains("cli-1") && out.contains("3/3"), "{out}");

    // Pause and resume, then watch to the end.
    let slow = dir.0.join("slow.json");
    std::fs::write(
        &slow,
        json!({"execution_mode": "sequential", "steps": [
            // Long enough that pause and cancel (separate CLI processes) land while it runs.
            {"id": "a", "task_type": "sleep", "metadata": {"sleep_ms": 1500}},
            {"id": "b", "task_type": "sleep", "metadata": {"sleep_ms": 50}}
        ]})
        .to_string(),
    )
    .unwrap();
    let slow = slow.to_str().unwrap();
    let (ok, _, err) = baton(
        &server,
        &["runs", "start", "--file", slow, "--run-id", "cli-p"],
    );
    assert!(ok, "{err}");
    let (ok, out, err) = baton(&server, &["runs", "pause", "cli-p"]);
    assert!(ok, "{err}");
    assert!(out.contains("run cli-p is paused"), "{out}");
    wait_run(&api, "cli-p", |r| step(r, "a")["status"] == "completed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = api.get("/api/v1/runs/cli-p").await.body;
    assert_eq!(step(&run, "b")["status"], "pending", "paused: {run}");
    let (ok, out, _) = baton(&server, &["runs", "resume", "cli-p"]);
    assert!(ok);
    assert!(out.contains("run cli-p is running"), "{out}");
    let (ok, out, err) = baton(&server, &["runs", "watch", "cli-p"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("run paused") && out.contains("run resumed"),
        "{out}"
    );
    assert!(out.contains("step b completed"), "{out}");

    // A step that failed (its task cancelled from outside) runs again on retry.
    let (ok, _, err) = baton(
        &server,
        &[
            "runs", "start", "--file", slow, "--run-id", "cli-r", "--input", "{}",
        ],
    );
    assert!(ok, "{err}");
    wait_run(&api, "cli-r", |r| step(r, "a")["status"] == "running").await;
    let r = api.post("/api/v1/tasks/cli-r:a/cancel", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (ok, out, err) = baton(&server, &["runs", "watch", "cli-r", "--json"]);
    assert!(!ok, "a failed run is a failure: {out}");
    assert!(err.contains("ended failed"), "{err}");
    let last: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["status"], "failed", "the last line is the run");
    let (ok, out, err) = baton(&server, &["runs", "retry", "cli-r"]);
    assert!(ok, "{err}");
    assert!(out.contains("is running"), "{out}");
    let (ok, out, err) = baton(&server, &["runs", "watch", "cli-r"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("retried    1 time(s)"), "{out}");
    let run = api.get("/api/v1/runs/cli-r").await.body;
    assert_eq!(step(&run, "a")["tasks"][0]["task_id"], "cli-r:a~g1");

    // Cancel.
    let (ok, _, _) = baton(
        &server,
        &["runs", "start", "--file", slow, "--run-id", "cli-c"],
    );
    assert!(ok);
    let (ok, out, _) = baton(&server, &["runs", "cancel", "cli-c", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "cancelled");
    let (ok, _, err) = baton(&server, &["runs", "pause", "cli-c"]);
    assert!(!ok);
    assert!(err.contains("failed_precondition"), "{err}");

    // Errors in words: a bad definition lists its problems.
    let bad = dir.0.join("bad.json");
    std::fs::write(&bad, bad_definition().to_string()).unwrap();
    let (ok, _, err) = baton(&server, &["runs", "start", "--file", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("invalid_argument") && err.contains("steps[3].id"),
        "{err}"
    );
    let (ok, _, err) = baton(&server, &["runs", "watch", "ghost"]);
    assert!(!ok);
    assert!(err.contains("not_found"), "{err}");
}
