//! A task's event stream (`GET /api/v1/tasks/{task_id}/events`) against the real
//! binary, with agents as separate processes: alerts of the monitoring flow arrive
//! before the end, a plain task's stream ends with its terminal state, an LLM's
//! streamed tokens arrive as `token` events, events of attempts an agent does not
//! hold are dropped, and an unknown task is a 404.

mod common;

use baton_proto::v1;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(60);

fn names(events: &[baton_agents::sse::SseEvent]) -> Vec<&str> {
    events.iter().map(event_name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_alerts_arrive_on_the_task_stream_before_the_end() {
    let dir = TempDir::new("stream-monitor");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let _agents = [
        AgentProc::start(&server.grpc, "video_detection", 2, "detect-agent"),
        AgentProc::start(&server.grpc, "alerting", 2, "alert-agent"),
    ];
    api.wait_agents(2).await;
    let accepted = api
        .post("/api/v1/tasks", &baton_agents::samples::monitor_request())
        .await;
    assert_eq!(accepted.status, 201, "{}", accepted.body);

    let events = read_events(&server.http, "/api/v1/tasks/monitor-001/events", WITHIN).await;
    let names = names(&events);
    let end = names
        .iter()
        .position(|n| *n == "end")
        .expect("an end event");
    assert_eq!(end, events.len() - 1, "end is last: {names:?}");
    let first_alert = names
        .iter()
        .position(|n| *n == "alert")
        .unwrap_or_else(|| panic!("no alert: {names:?}"));
    assert!(first_alert < end);
    assert!(
        names.iter().filter(|n| **n == "detection").count() >= 6,
        "one detection per frame: {names:?}"
    );
    // The run's lifecycle is there too, to its last event, before the end.
    let lifecycle: Vec<String> = events[..end]
        .iter()
        .filter(|e| event_name(e) == "status")
        .map(|e| {
            event_data(e)["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(lifecycle.first().map(String::as_str), Some("run_created"));
    assert_eq!(
        lifecycle.last().map(String::as_str),
        Some("run_completed"),
        "{lifecycle:?}"
    );

    let task = event_data(&events[end]);
    assert_eq!(task["task_id"], "monitor-001");
    assert_eq!(task["task_type"], "real_time_monitoring");
    assert_eq!(task["status"], "completed", "{task}");
    // Each streamed alert is one of the task's alerts, in seed 000's shape.
    let streamed: Vec<Value> = events
        .iter()
        .filter(|e| event_name(e) == "alert")
        .map(event_data)
        .collect();
    let output = task["output"]["alerts"].as_array().expect("alerts").clone();
    assert_eq!(streamed, output);
    for alert in &streamed {
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

    // A client that connects after the end still gets the alerts (replayed) and the end.
    let late = read_events(&server.http, "/api/v1/tasks/monitor-001/events", WITHIN).await;
    let late_alerts = late.iter().filter(|e| event_name(e) == "alert").count();
    assert_eq!(late_alerts, streamed.len());
    assert_eq!(late.last().map(event_name), Some("end"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_task_stream_shows_its_lifecycle_and_ends_with_its_terminal_state() {
    let dir = TempDir::new("stream-plain");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    // Queued with no agent yet: the stream is open before the task runs.
    api.submit(echo("plain-1")).await;
    let reader = tokio::spawn({
        let base = server.http.clone();
        async move { read_events(&base, "/api/v1/tasks/plain-1/events", WITHIN).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _agent = AgentProc::start(&server.grpc, "echo,fail", 2, "echo-agent");
    let events = reader.await.unwrap();
    let names = names(&events);
    assert_eq!(names.last(), Some(&"end"), "{names:?}");
    let transitions: Vec<String> = events
        .iter()
        .filter(|e| event_name(e) == "status")
        .map(|e| event_data(e)["to"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(transitions, ["queued", "running", "completed"]);
    let task = event_data(events.last().unwrap());
    assert_eq!(task["status"], "completed");
    assert_eq!(task["output"]["inputs"][0]["data"], "hello");

    // A task that fails for good ends its stream with its failure.
    api.submit(json!({"task_id": "plain-2", "task_type": "fail",
                      "metadata": {"permanent": true}}))
        .await;
    let events = read_events(&server.http, "/api/v1/tasks/plain-2/events", WITHIN).await;
    let task = event_data(events.last().unwrap());
    assert_eq!(event_name(events.last().unwrap()), "end");
    assert!(
        matches!(task["status"].as_str(), Some("failed" | "dead_lettered")),
        "{task}"
    );
    assert!(task["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("planned failure")));
}

#[tokio::test]
async fn an_unknown_task_has_no_event_stream() {
    let dir = TempDir::new("stream-404");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let r = api.get("/api/v1/tasks/no-such-task/events").await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "not_found");
    assert_eq!(r.body["error"]["message"], "task no-such-task not found");
    // The route is in the OpenAPI document.
    let doc = api.get("/openapi.json").await;
    assert!(
        doc.body["paths"]["/api/v1/tasks/{task_id}/events"]["get"].is_object(),
        "{}",
        doc.body["paths"]
    );
}

/// A fake OpenAI-compatible server that streams its answer in pieces, a moment apart.
async fn fake_llm() -> String {
    use axum::response::IntoResponse;
    const PIECES: [&str; 4] = ["The ", "quarter ", "closed ", "strong."];
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            let chunks = futures::stream::unfold(0usize, |i| async move {
                if i > PIECES.len() + 1 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                let line = match i {
                    i if i < PIECES.len() => json!({"model": "fake", "choices": [{"delta": {"content": PIECES[i]}, "finish_reason": null}]}).to_string(),
                    i if i == PIECES.len() => json!({"choices": [{"delta": {}, "finish_reason": "stop"}]}).to_string(),
                    _ => "[DONE]".to_string(),
                };
                Some((
                    Ok::<_, std::io::Error>(format!("data: {line}\n\n")),
                    i + 1,
                ))
            });
            (
                [("content-type", "text/event-stream")],
                axum::body::Body::from_stream(chunks),
            )
                .into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_tokens_arrive_as_token_events_and_make_up_the_output() {
    let dir = TempDir::new("stream-llm");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let base_url = fake_llm().await;
    let _agent = AgentProc::start_with_env(
        &server.grpc,
        "llm",
        1,
        "llm-agent",
        &[
            ("BATON_LLM_BASE_URL", &base_url),
            ("BATON_LLM_MODEL", "fake"),
        ],
    );
    api.wait_agents(1).await;
    api.submit(json!({"task_id": "llm-1", "task_type": "llm",
                      "inputs": [{"type": "text", "data": "How did the quarter close?"}]}))
        .await;
    let events = read_events(&server.http, "/api/v1/tasks/llm-1/events", WITHIN).await;
    let names = names(&events);
    assert_eq!(names.last(), Some(&"end"), "{names:?}");
    let tokens: Vec<String> = events
        .iter()
        .filter(|e| event_name(e) == "token")
        .map(|e| event_data(e).as_str().unwrap().to_string())
        .collect();
    assert_eq!(tokens, ["The ", "quarter ", "closed ", "strong."]);
    let task = event_data(events.last().unwrap());
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["output"]["text"], tokens.concat());
    // The tokens came while the task ran: after it started, before it ended.
    let running = events
        .iter()
        .position(|e| event_name(e) == "status" && event_data(e)["to"] == "running")
        .expect("a running event");
    let first_token = names.iter().position(|n| *n == "token").unwrap();
    assert!(running < first_token, "{names:?}");
}

fn progress(events: &[(&str, u32, &str, &str)]) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Progress(v1::Progress {
            events: events
                .iter()
                .map(|(task_id, attempt, kind, data)| v1::ProgressEvent {
                    task_id: task_id.to_string(),
                    attempt: *attempt,
                    kind: kind.to_string(),
                    data_json: data.to_string(),
                })
                .collect(),
        })),
    }
}

fn result(task_id: &str, attempt: u32) -> v1::AgentMessage {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Results(v1::Results {
            results: vec![v1::Result {
                task_id: task_id.into(),
                attempt,
                outcome: Some(v1::result::Outcome::Success(v1::Success {
                    output_json: "{\"done\":true}".into(),
                })),
                ..Default::default()
            }],
        })),
    }
}

#[tokio::test]
async fn events_of_attempts_an_agent_does_not_hold_are_dropped() {
    let dir = TempDir::new("stream-fence");
    let server = Server::start(&dir.0);
    let api = Api::new(&server.http);
    let mut agents = v1::agent_service_client::AgentServiceClient::new(grpc_channel(&server).await);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Register(v1::Register {
            agent_id: "raw".into(),
            task_types: vec!["raw".into()],
            max_concurrent: 1,
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut stream = agents
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        next_msg(&mut stream).await,
        v1::server_message::Msg::Registered(_)
    ));
    api.submit(json!({"task_id": "held", "task_type": "raw"}))
        .await;
    api.submit(json!({"task_id": "queued", "task_type": "raw"}))
        .await;
    let attempt = loop {
        if let v1::server_message::Msg::Assignments(a) = next_msg(&mut stream).await {
            assert_eq!(a.assignments[0].task_id, "held");
            break a.assignments[0].attempt;
        }
    };
    tx.send(progress(&[
        ("held", attempt, "token", "\"fresh\""),
        // Not the attempt this agent holds.
        ("held", attempt + 1, "token", "\"stale attempt\""),
        // A task this agent does not hold at all.
        ("queued", 1, "token", "\"not held\""),
        // Held, but a kind the server keeps for itself, a bad kind, bad data.
        ("held", attempt, "end", "\"reserved\""),
        ("held", attempt, "two words", "\"bad kind\""),
        ("held", attempt, "token", "{not json"),
    ]))
    .await
    .unwrap();
    tx.send(result("held", attempt)).await.unwrap();
    // After its result, the attempt is no longer held either.
    tx.send(progress(&[("held", attempt, "token", "\"too late\"")]))
        .await
        .unwrap();
    // A refused result after it: its ack proves the late event was handled.
    tx.send(result("queued", 7)).await.unwrap();
    let mut acks = Vec::new();
    while acks.len() < 2 {
        if let v1::server_message::Msg::Acks(a) = next_msg(&mut stream).await {
            acks.extend(a.acks);
        }
    }
    assert!(acks[0].accepted && !acks[1].accepted, "{acks:?}");

    let events = read_events(&server.http, "/api/v1/tasks/held/events", WITHIN).await;
    let agent_events: Vec<(String, String)> = events
        .iter()
        .filter(|e| !matches!(event_name(e), "status" | "end"))
        .map(|e| (event_name(e).to_string(), e.data.clone()))
        .collect();
    assert_eq!(
        agent_events,
        [("token".to_string(), "\"fresh\"".to_string())]
    );
    let task = event_data(events.last().unwrap());
    assert_eq!(task["status"], "completed");
    assert_eq!(task["output"], json!({"done": true}));
}
