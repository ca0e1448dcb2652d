//! 10,000 simulated agents across 50 task types, connected from this one process
//! over real gRPC streams (100 connections of 100 streams), registered with
//! seed 004's descriptors; discovery finds them, and tasks routed with several
//! strategies all complete on many different agents.

mod common;

use baton_proto::v1;
use common::{Api, Server, TempDir};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const TYPES: usize = 50;
const PER_TYPE: usize = 200;
const CONNECTIONS: usize = 100;

/// One simulated agent: registers, then answers every assignment at once.
async fn agent(channel: tonic::transport::Channel, n: usize, ready: tokio::sync::mpsc::Sender<()>) {
    let mut client = v1::agent_service_client::AgentServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let reg = v1::Register {
        agent_id: format!("sim-{n:05}"),
        task_types: vec![format!("t{:02}", n % TYPES)],
        version: format!("1.{}.0", n % 3),
        max_concurrent: 2,
        tags: vec![if n.is_multiple_of(2) { "gpu" } else { "cpu" }.into()],
        location: ["eu", "us", "ap"][n % 3].into(),
        cost_factor: Some(1.0 + (n % 5) as f64),
        weight: Some(1.0 + (n % 4) as f64),
        ..Default::default()
    };
    tx.send(v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Register(reg)),
    })
    .await
    .unwrap();
    let mut stream = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("agent stream opens")
        .into_inner();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(4));
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(Ok(msg)) = msg else { return };
                match msg.msg {
                    Some(v1::server_message::Msg::Registered(_)) => {
                        let _ = ready.send(()).await;
                    }
                    Some(v1::server_message::Msg::Assignments(a)) => {
                        let results = a
                            .assignments
                            .into_iter()
                            .map(|a| v1::Result {
                                task_id: a.task_id,
                                attempt: a.attempt,
                                outcome: Some(v1::result::Outcome::Success(v1::Success {
                                    output_json: json!({"agent": n}).to_string(),
                                })),
                                traceparent: String::new(),
                            })
                            .collect();
                        let _ = tx
                            .send(v1::AgentMessage {
                                msg: Some(v1::agent_message::Msg::Results(v1::Results { results })),
                            })
                            .await;
                    }
                    Some(v1::server_message::Msg::Error(e)) => panic!("agent {n} refused: {e:?}"),
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                let _ = tx.send(v1::AgentMessage {
                    msg: Some(v1::agent_message::Msg::Heartbeat(v1::Heartbeat {
                        error_rate: Some(0.0),
                        response_time_ms: Some(5.0),
                        ..Default::default()
                    })),
                }).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_agents_register_are_discovered_and_get_routed_work() {
    let dir = TempDir::new("scale-10k");
    let cfg = dir.0.join("baton.toml");
    std::fs::write(
        &cfg,
        "heartbeat_interval_ms = 5000\nagent_timeout_ms = 60000\nlease_ms = 60000\nmax_workers = 20000\n",
    )
    .unwrap();
    let server = Server::start_on(
        &dir.0.join("data"),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--config", cfg.to_str().unwrap()],
    );
    let api = Api::new(&server.http);
    let started = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1024);
    let total = TYPES * PER_TYPE;
    let mut agents = Vec::with_capacity(total);
    for c in 0..CONNECTIONS {
        let channel = tonic::transport::Channel::from_shared(server.grpc.clone())
            .unwrap()
            .connect()
            .await
            .expect("grpc connects");
        for k in 0..total / CONNECTIONS {
            let n = c * (total / CONNECTIONS) + k;
            agents.push(tokio::spawn(agent(channel.clone(), n, ready_tx.clone())));
        }
    }
    for _ in 0..total {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .expect("every agent registers within 2 minutes")
            .unwrap();
    }
    eprintln!("{total} agents registered in {:?}", started.elapsed());
    let health = api.get("/health").await;
    assert_eq!(
        health.body["stats"]["agents"]["connected"], total,
        "{}",
        health.body["stats"]
    );

    // Discovery over the whole registry.
    let t = Instant::now();
    let found = api
        .get("/api/v1/agents/discover?capabilities=t07&version=%3E%3D1.1.0&location=eu&tags=gpu")
        .await;
    eprintln!(
        "discovery over {total} agents answered in {:?}",
        t.elapsed()
    );
    assert_eq!(found.status, 200, "{}", found.body);
    let list = found.body["agents"].as_array().unwrap();
    // t07 agents: n % 50 == 7, so odd n: none has the gpu tag.
    assert!(list.is_empty(), "{}", found.body);
    let found = api
        .get("/api/v1/agents/discover?capabilities=t08&version=%3E%3D1.1.0&location=eu&tags=gpu")
        .await;
    let list = found.body["agents"].as_array().unwrap();
    // n % 50 == 8 (even: gpu), version 1.(n % 3) >= 1.1: n % 3 in {1, 2}.
    let expected = (0..total).filter(|n| n % TYPES == 8 && n % 3 != 0).count();
    assert_eq!(list.len(), expected);
    // The preferred location first.
    let first_other = list.iter().position(|a| a["same_location"] == false);
    if let Some(p) = first_other {
        assert!(list[p..].iter().all(|a| a["same_location"] == false));
    }

    // Work routed with several strategies, every type.
    let strategies = [
        "least_loaded",
        "round_robin",
        "weighted_capacity",
        "weighted_random",
        "cost_based",
        "consistent_hash",
    ];
    let tasks: Vec<Value> = (0..3_000)
        .map(|i| {
            json!({"task_id": format!("w{i}"), "task_type": format!("t{:02}", i % TYPES),
                "metadata": {"routing_strategy": strategies[i % strategies.len()],
                             "routing_key": format!("k{}", i % 97)}})
        })
        .collect();
    for chunk in tasks.chunks(1_000) {
        let r = api
            .post("/api/v1/tasks/batch", &json!({ "tasks": chunk }))
            .await;
        assert!(r.status < 300, "{}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let h = api.get("/health").await;
        let done = h.body["stats"]["tasks"]["completed"].as_u64().unwrap_or(0);
        if done == 3_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of 3000 completed: {}",
            h.body["stats"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut used = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/tasks?status=completed&limit=1000&cursor={c}"),
            None => "/api/v1/tasks?status=completed&limit=1000".to_string(),
        };
        let page = api.get(&path).await;
        for t in page.body["tasks"].as_array().unwrap() {
            let agent = t["agent_executions"][0]["agent_id"]
                .as_str()
                .unwrap()
                .to_string();
            let n: usize = agent.trim_start_matches("sim-").parse().unwrap();
            let ty: usize = t["task_type"].as_str().unwrap()[1..].parse().unwrap();
            assert_eq!(n % TYPES, ty, "a task went to an agent of another type");
            used.insert(agent);
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    eprintln!("3000 tasks ran on {} distinct agents", used.len());
    assert!(
        used.len() > 1_000,
        "work spread over only {} agents",
        used.len()
    );
    for a in agents {
        a.abort();
    }
}
