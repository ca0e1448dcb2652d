//! Seed 000's two use cases end to end, as a user sends them: the request of the
//! seed's API reference (`POST /api/v1/tasks` with `task_type` `report_generation`
//! or `real_time_monitoring`), served by the built-in flows over agents that run
//! as separate processes, each serving one step's task type.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn agents(server: &Server) -> Vec<AgentProc> {
    [
        "data_ingest",
        "data_analysis",
        "synthesis",
        "video_detection",
        "alerting",
    ]
    .iter()
    .map(|t| AgentProc::start(&server.grpc, t, 4, &format!("{t}-agent")))
    .collect()
}

fn step_agents(view: &Value) -> Vec<(String, String)> {
    view["agent_executions"]
        .as_array()
        .expect("agent_executions")
        .iter()
        .map(|e| {
            (
                e["step"].as_str().unwrap_or_default().to_string(),
                e["agent_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_generation_runs_as_a_flow_of_three_agents() {
    let dir = TempDir::new("usecase-report");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agents = agents(&server);
    api.wait_agents(5).await;

    let request = baton_agents::samples::report_request();
    let accepted = api.post("/api/v1/tasks", &request).await;
    assert_eq!(accepted.status, 201, "{}", accepted.body);
    assert_eq!(accepted.body["task_id"], "report-001");
    assert_eq!(accepted.body["task_type"], "report_generation");

    let done = api.wait_done("report-001", Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    // One ingest task per input part (the CSV and the image), then analysis, then synthesis.
    let steps = step_agents(&done);
    assert_eq!(
        steps,
        [
            ("data_ingest".to_string(), "data_ingest-agent".to_string()),
            ("data_ingest".into(), "data_ingest-agent".into()),
            ("data_analysis".into(), "data_analysis-agent".into()),
            ("synthesis".into(), "synthesis-agent".into()),
        ]
    );
    assert_eq!(done["metrics"]["agents_used"], 3, "{done}");
    assert_eq!(done["metrics"]["retry_count"], 0, "{done}");
    let report = &done["output"];
    assert_eq!(report["title"], "Q4 Sales Analysis", "{report}");
    assert!(report["report_id"]
        .as_str()
        .is_some_and(|r| r.starts_with("report_")));
    assert!(report["executive_summary"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    for key in ["statistics", "insights", "anomalies"] {
        assert!(
            !report["detailed_findings"][key].is_null(),
            "{key}: {report}"
        );
    }
    assert!(report["recommendations"]
        .as_array()
        .is_some_and(|r| !r.is_empty()));
    // The image was ingested too.
    assert_eq!(
        report["detailed_findings"]["images"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{report}"
    );

    // The same request again is the same task: nothing new runs.
    let again = api.post("/api/v1/tasks", &request).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_time_monitoring_raises_seed_alerts() {
    let dir = TempDir::new("usecase-monitor");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agents = agents(&server);
    api.wait_agents(5).await;

    let accepted = api
        .post("/api/v1/tasks", &baton_agents::samples::monitor_request())
        .await;
    assert_eq!(accepted.status, 201, "{}", accepted.body);
    let done = api.wait_done("monitor-001", Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let alerts = done["output"]["alerts"].as_array().expect("alerts");
    let types: Vec<&str> = alerts.iter().filter_map(|a| a["type"].as_str()).collect();
    assert!(types.contains(&"crowd_detected"), "{types:?}");
    for alert in alerts {
        for key in [
            "alert_id",
            "type",
            "severity",
            "message",
            "timestamp",
            "requires_action",
        ] {
            assert!(!alert[key].is_null(), "{key} missing: {alert}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_from_text_without_numbers_fails_clearly() {
    let dir = TempDir::new("usecase-bad");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agents = agents(&server);
    api.wait_agents(5).await;
    let accepted = api
        .post(
            "/api/v1/tasks",
            &serde_json::json!({"task_id": "no-numbers", "task_type": "report_generation",
                "inputs": [{"type": "text", "data": "nothing to count here"}]}),
        )
        .await;
    assert_eq!(accepted.status, 201, "{}", accepted.body);
    let done = api.wait_done("no-numbers", Duration::from_secs(60)).await;
    assert_eq!(done["status"], "failed", "{done}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "a reason is given: {done}");
    assert_eq!(
        done["metrics"]["retry_count"], 0,
        "a bad input is not retried: {done}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_submit_of_a_use_case_starts_its_flow_like_rest() {
    use baton_proto::v1;
    let dir = TempDir::new("usecase-grpc");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agents = agents(&server);
    api.wait_agents(5).await;
    let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .expect("grpc connects");
    let mut client = v1::baton_client::BatonClient::new(channel);
    // Seed 000's report request, with the chart as raw bytes rather than base64.
    let request = v1::TaskRequest {
        task_id: "grpc-report".into(),
        task_type: "report_generation".into(),
        inputs: vec![
            v1::InputPart {
                r#type: "text".into(),
                data: baton_agents::samples::SALES_CSV.as_bytes().to_vec(),
                ..Default::default()
            },
            v1::InputPart {
                r#type: "image".into(),
                data: baton_agents::samples::chart_png(),
                ..Default::default()
            },
        ],
        metadata_json: r#"{"report_title": "Q4 Sales Analysis"}"#.into(),
        execution_mode: "parallel".into(),
        ..Default::default()
    };
    let submitted = client
        .submit_task(v1::SubmitTaskRequest {
            task: Some(request.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(submitted.created);
    let task = submitted.task.unwrap();
    assert_eq!(task.task_id, "grpc-report");
    assert_eq!(task.task_type, "report_generation");
    assert_eq!(task.status, "running");

    // REST sees the run as the same task, and it runs through the three agents.
    let done = api.wait_done("grpc-report", Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["execution_mode"], "parallel");
    let steps: Vec<String> = step_agents(&done).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        steps,
        ["data_ingest", "data_ingest", "data_analysis", "synthesis"]
    );

    let got = client
        .get_task(v1::GetTaskRequest {
            task_id: "grpc-report".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, "completed");
    assert_eq!(got.task_type, "report_generation");
    assert_eq!(got.agent_executions.len(), 4);
    assert!(got.finished_at_ms >= got.created_at_ms && got.finished_at_ms > 0);
    let output: Value = serde_json::from_str(&got.output_json).unwrap();
    assert_eq!(output, done["output"]);
    assert_eq!(output["title"], "Q4 Sales Analysis");
    assert_eq!(
        serde_json::from_str::<Value>(&got.metadata_json).unwrap(),
        serde_json::json!({"report_title": "Q4 Sales Analysis"})
    );

    // The same request again is the same task, as over REST.
    let again = client
        .submit_task(v1::SubmitTaskRequest {
            task: Some(request),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.task.unwrap().status, "completed");
    // An unknown id is still not found.
    let missing = client
        .get_task(v1::GetTaskRequest {
            task_id: "no-such-task".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_task_and_a_plain_task_cannot_share_an_id() {
    let dir = TempDir::new("usecase-ids");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let flow = |id: &str| {
        serde_json::json!({"task_id": id, "task_type": "report_generation",
            "inputs": [{"type": "text", "data": "1 2 3"}]})
    };
    let plain = |id: &str| serde_json::json!({"task_id": id, "task_type": "echo"});

    // A plain task may not take a flow task's id, alone or in a batch...
    assert_eq!(api.post("/api/v1/tasks", &flow("shared")).await.status, 201);
    let refused = api.post("/api/v1/tasks", &plain("shared")).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.body["error"]["details"]["task_id"], "shared");
    let batch = api
        .post(
            "/api/v1/tasks/batch",
            &serde_json::json!({"tasks": [plain("before"), plain("shared"), plain("after")]}),
        )
        .await;
    assert_eq!(batch.status, 200, "{}", batch.body);
    let items = batch.body["tasks"].as_array().expect("items").clone();
    let ids: Vec<&str> = items
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["before", "shared", "after"], "{}", batch.body);
    assert_eq!(items[0]["created"], true, "{}", batch.body);
    assert!(items[1]["error"]["message"].is_string(), "{}", batch.body);
    assert_eq!(items[2]["created"], true, "{}", batch.body);
    // ...and the flow task is what its id still shows.
    let shown = api.get("/api/v1/tasks/shared").await;
    assert_eq!(
        shown.body["task_type"], "report_generation",
        "{}",
        shown.body
    );
    // The same flow task again is the existing one.
    assert_eq!(api.post("/api/v1/tasks", &flow("shared")).await.status, 200);

    // A flow task may not take a plain task's id, and starts no run.
    assert_eq!(api.post("/api/v1/tasks", &plain("plain")).await.status, 201);
    let refused = api.post("/api/v1/tasks", &flow("plain")).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(api.get("/api/v1/runs/plain").await.status, 404);
    assert_eq!(
        api.get("/api/v1/tasks/plain").await.body["task_type"],
        "echo"
    );
}
