//! What the agent declares and reports, seen from a fake server on port 0: the
//! `Register` message carries seed 004's descriptor, and heartbeats carry the
//! error rate and response time of the results the agent sent.

use baton_proto::v1;
use baton_proto::v1::agent_message::Msg as AgentMsg;
use baton_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use baton_proto::v1::server_message::Msg as ServerMsg;
use baton_sdk::{Agent, HandlerError, Task};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(5);

type Outbound = mpsc::Sender<Result<v1::ServerMessage, Status>>;

struct FakeServer {
    conns: mpsc::UnboundedSender<(Streaming<v1::AgentMessage>, Outbound)>,
}

#[tonic::async_trait]
impl AgentService for FakeServer {
    type ConnectStream = ReceiverStream<Result<v1::ServerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        self.conns
            .send((request.into_inner(), tx))
            .map_err(|_| Status::unavailable("test is over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn next(inbound: &mut Streaming<v1::AgentMessage>) -> AgentMsg {
    tokio::time::timeout(WAIT, inbound.next())
        .await
        .expect("agent sends something")
        .expect("stream open")
        .expect("no stream error")
        .msg
        .expect("message has a body")
}

async fn send(tx: &Outbound, msg: ServerMsg) {
    tx.send(Ok(v1::ServerMessage { msg: Some(msg) }))
        .await
        .expect("agent is listening");
}

/// Fails as the task's `outcome` metadata says.
async fn handler(task: Task) -> Result<serde_json::Value, HandlerError> {
    match task.metadata["outcome"].as_str() {
        Some("retryable") => Err(HandlerError::retryable("flaky")),
        Some("permanent") => Err(HandlerError::permanent("bad input")),
        _ => Ok(serde_json::json!({})),
    }
}

#[tokio::test]
async fn register_carries_the_descriptor_and_heartbeats_the_load() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (conns_tx, mut conns) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(FakeServer { conns: conns_tx }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(
        Agent::builder([url])
            .agent_id("calc-1")
            .task_type("calc")
            .agent_type("CarbonCalculatorAgent")
            .version("2.1.0")
            .capability("scope3_emissions")
            .service_type("computation")
            .endpoint("tcp://10.0.1.50:5000")
            .tag("production")
            .location("us-east-1")
            .cost_factor(0.5)
            .weight(3.0)
            .drain_timeout(Duration::from_millis(200))
            .run_until(handler, stop_rx),
    );
    let (mut inbound, tx) = tokio::time::timeout(WAIT, conns.recv())
        .await
        .unwrap()
        .unwrap();
    let register = match next(&mut inbound).await {
        AgentMsg::Register(r) => r,
        other => panic!("the first message must be register, got {other:?}"),
    };
    assert_eq!(register.agent_type, "CarbonCalculatorAgent");
    assert_eq!(register.version, "2.1.0");
    assert_eq!(register.capabilities, ["scope3_emissions"]);
    assert_eq!(register.service_types, ["computation"]);
    assert_eq!(register.endpoint, "tcp://10.0.1.50:5000");
    assert_eq!(register.tags, ["production"]);
    assert_eq!(register.location, "us-east-1");
    assert_eq!(register.cost_factor, Some(0.5));
    assert_eq!(register.weight, Some(3.0));
    send(
        &tx,
        ServerMsg::Registered(v1::Registered {
            session_id: "s".into(),
            heartbeat_interval_ms: 20,
            lease_ms: 30_000,
        }),
    )
    .await;
    // Before any result, the heartbeat claims no error rate or response time.
    match next(&mut inbound).await {
        AgentMsg::Heartbeat(h) => {
            assert_eq!(h.error_rate, None, "{h:?}");
            assert_eq!(h.response_time_ms, None, "{h:?}");
        }
        other => panic!("expected the immediate heartbeat, got {other:?}"),
    }
    let assignments = ["ok", "ok", "retryable", "permanent"]
        .iter()
        .enumerate()
        .map(|(i, outcome)| v1::Assignment {
            task_id: format!("t{i}"),
            attempt: 1,
            task_type: "calc".into(),
            metadata_json: serde_json::json!({ "outcome": outcome }).to_string(),
            timeout_ms: 60_000,
            ..Default::default()
        })
        .collect();
    send(&tx, ServerMsg::Assignments(v1::Assignments { assignments })).await;
    // One retryable error among three counted results; the permanent failure is
    // the input's fault and does not count.
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            if let AgentMsg::Heartbeat(h) = next(&mut inbound).await {
                if h.error_rate.is_some_and(|r| (r - 1.0 / 3.0).abs() < 1e-12) {
                    return h;
                }
            }
        }
    })
    .await
    .expect("a heartbeat reports the error rate");
    let rt = seen.response_time_ms.expect("a response time");
    assert!((0.0..1_000.0).contains(&rt), "{rt}");
    if cfg!(target_os = "linux") {
        // The CPU figure needs a second of history; it may not be there yet, but
        // when it is, it is a share.
        if let Some(cpu) = seen.cpu_usage {
            assert!((0.0..=1.0).contains(&cpu), "{cpu}");
        }
    }
    let _ = stop_tx.send(());
    drop(tx);
    let _ = tokio::time::timeout(WAIT, agent).await;
}
