//! gRPC end to end: the client API gives the same answers and errors as REST, and
//! the agent protocol enforces slots and fencing, against the real binary.

mod common;

use baton_proto::v1;
use common::*;
use serde_json::json;
use std::time::Duration;
use tokio_stream::StreamExt;

async fn client(server: &Server) -> v1::baton_client::BatonClient<tonic::transport::Channel> {
    v1::baton_client::BatonClient::new(grpc_channel(server).await)
}

fn task(task_type: &str) -> v1::TaskRequest {
    v1::TaskRequest {
        task_type: task_type.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_submit_and_get_match_rest_and_carry_raw_bytes() {
    let dir = TempDir::new("grpc-submit");
    let server = Server::start(&dir.0);
    let _agent = AgentProc::start(&server.grpc, "echo", 2, "echo-g");
    let api = Api::new(&server.http);
    api.wait_agents(1).await;
    let mut c = client(&server).await;
    let mut req = task("echo");
    req.task_id = "grpc-1".into();
    req.priority = "high".into();
    req.metadata_json = r#"{"source": "grpc"}"#.into();
    req.inputs = vec![
        v1::InputPart {
            r#type: "binary".into(),
            data: vec![0, 159, 146, 150],
            ..Default::default()
        },
        v1::InputPart {
            r#type: "text".into(),
            data: b"hi".to_vec(),
            ..Default::default()
        },
    ];
    let resp = c
        .submit_task(v1::SubmitTaskRequest {
            task: Some(req.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.created);
    // Queued, or already running when the idle echo agent took it in the
    // submit's own commit.
    let status = resp.task.unwrap().status;
    assert!(matches!(status.as_str(), "queued" | "running"), "{status}");
    let again = c
        .submit_task(v1::SubmitTaskRequest { task: Some(req) })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created, "same task again is not created twice");

    let rest = api.wait_done("grpc-1", Duration::from_secs(30)).await;
    assert_eq!(rest["status"], "completed");
    assert_eq!(rest["priority"], "high");
    // Raw bytes arrive intact (base64 of 00 9f 92 96 in the REST view of the echo).
    assert_eq!(rest["output"]["inputs"][0]["data"], "AJ+Slg==");
    let got = c
        .get_task(v1::GetTaskRequest {
            task_id: "grpc-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, "completed");
    assert_eq!(got.inputs[0].data, vec![0, 159, 146, 150]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&got.output_json).unwrap(),
        rest["output"]
    );
    assert_eq!(got.metrics.unwrap().agents_used, 1);
    assert_eq!(got.agent_executions.len(), 1);
    let h = c.health(v1::HealthRequest {}).await.unwrap().into_inner();
    assert!(h.healthy);
    let agents = c
        .list_agents(v1::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].agent_id, "echo-g");
    assert!(
        agents[0].connected_at_ms > 0 && agents[0].last_heartbeat_ms >= agents[0].connected_at_ms
    );
    assert_eq!(agents[0].completed, 1);
}

#[tokio::test]
async fn grpc_errors_match_rest_errors() {
    let dir = TempDir::new("grpc-errors");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let mut c = client(&server).await;

    let mut bad = task("");
    bad.priority = "42".into();
    let status = c
        .submit_task(v1::SubmitTaskRequest { task: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let grpc_err = baton_proto::from_status(&status);
    let rest = api
        .post("/api/v1/tasks", &json!({"task_type": "", "priority": 42}))
        .await;
    assert_eq!(rest.status, 400);
    assert_eq!(grpc_err.code.as_str(), rest.body["error"]["code"]);
    assert_eq!(grpc_err.message, rest.body["error"]["message"]);
    assert_eq!(grpc_err.details, rest.body["error"]["details"]);

    let missing = c
        .get_task(v1::GetTaskRequest {
            task_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad_status = c
        .list_tasks(v1::ListTasksRequest {
            status: "exploded".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_status.code(), tonic::Code::InvalidArgument);

    let mut first = task("echo");
    first.task_id = "same".into();
    c.submit_task(v1::SubmitTaskRequest {
        task: Some(first.clone()),
    })
    .await
    .unwrap();
    first.metadata_json = r#"{"other": true}"#.into();
    let conflict = c
        .submit_task(v1::SubmitTaskRequest { task: Some(first) })
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        baton_proto::from_status(&conflict).code.as_str(),
        "conflict"
    );

    // In a batch, a conflict is reported on its item and the others are stored.
    let mut clash = task("echo");
    clash.task_id = "same".into();
    clash.metadata_json = r#"{"third": true}"#.into();
    let mut fresh = task("echo");
    fresh.task_id = "fresh".into();
    let batch = c
        .submit_tasks(v1::SubmitTasksRequest {
            tasks: vec![clash, fresh],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        batch.results[0].error.as_ref().map(|e| e.code.as_str()),
        Some("conflict")
    );
    assert!(batch.results[0].task.is_none());
    assert!(batch.results[1].created && batch.results[1].error.is_none());

    // A batch with bad tasks is refused whole, with the same error as over REST:
    // every problem of every task, each under its field, named once.
    let mut no_type = task("");
    no_type.task_id = "batch-bad-0".into();
    let mut loud = task("echo");
    loud.task_id = "batch-bad-1".into();
    loud.priority = "99".into();
    let status = c
        .submit_tasks(v1::SubmitTasksRequest {
            tasks: vec![task("echo"), no_type, loud],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let grpc_err = baton_proto::from_status(&status);
    let rest = api
        .post(
            "/api/v1/tasks/batch",
            &json!({"tasks": [
                {"task_type": "echo"},
                {"task_id": "batch-bad-0", "task_type": ""},
                {"task_id": "batch-bad-1", "task_type": "echo", "priority": 99},
            ]}),
        )
        .await;
    assert_eq!(rest.status, 400, "{}", rest.body);
    assert_eq!(grpc_err.message, rest.body["error"]["message"]);
    assert_eq!(grpc_err.details, rest.body["error"]["details"]);
    assert_eq!(
        grpc_err.message,
        "tasks[1].task_type must not be empty (and 1 more problem)"
    );
    assert_eq!(
        grpc_err.details["problems"][1],
        json!({"field": "tasks[2].priority", "message": "99 is out of range: use 1..=10 or one of critical, high, normal, low, background"})
    );
    assert_eq!(api.get("/api/v1/tasks/batch-bad-1").await.status, 404);
}

type AgentTx = tokio::sync::mpsc::Sender<v1::AgentMessage>;

async fn raw_agent(
    server: &Server,
    reg: v1::Register,
) -> (AgentTx, tonic::Streaming<v1::ServerMessage>) {
    let mut c = v1::agent_service_client::AgentServiceClient::new(grpc_channel(server).await);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Register(reg)),
    })
    .await
    .unwrap();
    let stream = c
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

#[tokio::test]
async fn agent_protocol_respects_slots_and_fences_results() {
    let dir = TempDir::new("grpc-agent");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);

    // An invalid registration is refused with the shared error code.
    let (_tx0, mut s0) = raw_agent(
        &server,
        v1::Register {
            agent_id: "x".into(),
            max_concurrent: 1,
            ..Default::default()
        },
    )
    .await;
    match next_msg(&mut s0).await {
        v1::server_message::Msg::Error(e) => assert_eq!(e.code, "invalid_argument"),
        other => panic!("expected an error, got {other:?}"),
    }

    let reg = v1::Register {
        agent_id: "raw".into(),
        task_types: vec!["raw".into()],
        max_concurrent: 2,
        ..Default::default()
    };
    let (tx, mut stream) = raw_agent(&server, reg).await;
    assert!(matches!(
        next_msg(&mut stream).await,
        v1::server_message::Msg::Registered(_)
    ));
    for i in 0..5 {
        api.submit(json!({"task_id": format!("r{i}"), "task_type": "raw"}))
            .await;
    }
    // Never more than the two declared slots while nothing is returned.
    let mut held = Vec::new();
    while held.len() < 2 {
        if let v1::server_message::Msg::Assignments(a) = next_msg(&mut stream).await {
            held.extend(a.assignments);
        }
    }
    assert_eq!(held.len(), 2);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "a third task was pushed into two slots"
    );

    // A result for a task this agent does not hold is refused and changes nothing.
    let foreign = v1::Result {
        task_id: "r4".into(),
        attempt: 1,
        outcome: Some(v1::result::Outcome::Success(v1::Success {
            output_json: "{}".into(),
        })),
        ..Default::default()
    };
    // A result for a held task but a wrong attempt is refused too.
    let stale = v1::Result {
        attempt: held[0].attempt + 1,
        ..v1::Result {
            task_id: held[0].task_id.clone(),
            ..foreign.clone()
        }
    };
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Results(v1::Results {
            results: vec![foreign, stale],
        })),
    })
    .await
    .unwrap();
    let acks = loop {
        if let v1::server_message::Msg::Acks(a) = next_msg(&mut stream).await {
            break a.acks;
        }
    };
    assert_eq!(acks.len(), 2);
    assert!(
        acks.iter()
            .all(|a| !a.accepted && a.error_code == "stale_attempt"),
        "{acks:?}"
    );
    assert_eq!(api.get("/api/v1/tasks/r4").await.body["status"], "queued");

    // A proper result is accepted, and frees a slot that is filled at once.
    let ok = v1::Result {
        task_id: held[0].task_id.clone(),
        attempt: held[0].attempt,
        outcome: Some(v1::result::Outcome::Success(v1::Success {
            output_json: r#"{"done": 1}"#.into(),
        })),
        ..Default::default()
    };
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Results(v1::Results {
            results: vec![ok],
        })),
    })
    .await
    .unwrap();
    let mut got_ack = false;
    let mut got_assignment = false;
    while !(got_ack && got_assignment) {
        match next_msg(&mut stream).await {
            v1::server_message::Msg::Acks(a) => {
                assert!(a.acks[0].accepted, "{a:?}");
                got_ack = true;
            }
            v1::server_message::Msg::Assignments(a) => {
                assert_eq!(a.assignments.len(), 1);
                got_assignment = true;
            }
            _ => {}
        }
    }
    let done = api
        .get(&format!("/api/v1/tasks/{}", held[0].task_id))
        .await
        .body;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"], json!({"done": 1}));
}
