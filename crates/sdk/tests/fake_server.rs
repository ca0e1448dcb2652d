//! The agent runtime against a scripted fake `AgentService` on port 0: registration
//! comes first, assignments run the handler, results are batched and re-sent after a
//! lost connection, cancels abort, shutdown drains, endpoints are cycled, and events
//! a handler emits go out before its result.

use baton_proto::v1;
use baton_proto::v1::agent_message::Msg as AgentMsg;
use baton_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use baton_proto::v1::server_message::Msg as ServerMsg;
use baton_sdk::{Agent, Error, Handler, HandlerError, Task};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(5);

/// One agent connection, driven by the test.
struct Conn {
    inbound: Streaming<v1::AgentMessage>,
    outbound: mpsc::Sender<Result<v1::ServerMessage, Status>>,
}

struct FakeServer {
    conns: mpsc::UnboundedSender<Conn>,
}

#[tonic::async_trait]
impl AgentService for FakeServer {
    type ConnectStream = ReceiverStream<Result<v1::ServerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let (outbound, rx) = mpsc::channel(64);
        self.conns
            .send(Conn {
                inbound: request.into_inner(),
                outbound,
            })
            .map_err(|_| Status::unavailable("test is over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn start_fake_server() -> (String, mpsc::UnboundedReceiver<Conn>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (conns, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(FakeServer { conns }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (url, rx)
}

async fn accept(conns: &mut mpsc::UnboundedReceiver<Conn>) -> Conn {
    tokio::time::timeout(WAIT, conns.recv())
        .await
        .expect("agent connects")
        .expect("server is up")
}

impl Conn {
    /// The next message, or `None` once the agent closed its stream.
    async fn recv(&mut self) -> Option<AgentMsg> {
        match tokio::time::timeout(WAIT, self.inbound.next())
            .await
            .expect("agent sends something")
        {
            Some(Ok(m)) => Some(m.msg.expect("message has a body")),
            Some(Err(_)) | None => None,
        }
    }

    async fn recv_skipping_heartbeats(&mut self) -> AgentMsg {
        loop {
            match self.recv().await.expect("stream still open") {
                AgentMsg::Heartbeat(_) => continue,
                other => return other,
            }
        }
    }

    async fn results(&mut self) -> Vec<v1::Result> {
        match self.recv_skipping_heartbeats().await {
            AgentMsg::Results(r) => r.results,
            other => panic!("expected results, got {other:?}"),
        }
    }

    async fn send(&self, msg: ServerMsg) {
        self.outbound
            .send(Ok(v1::ServerMessage { msg: Some(msg) }))
            .await
            .expect("agent is listening");
    }

    /// Checks that the first message is `Register`, and accepts it.
    async fn register(&mut self, heartbeat_interval_ms: u64) -> v1::Register {
        let register = match self.recv().await {
            Some(AgentMsg::Register(r)) => r,
            other => panic!("the first message must be register, got {other:?}"),
        };
        self.send(ServerMsg::Registered(v1::Registered {
            session_id: "s".into(),
            heartbeat_interval_ms,
            lease_ms: 30_000,
        }))
        .await;
        register
    }

    async fn assign(&self, tasks: &[(&str, Value)]) {
        let tasks: Vec<_> = tasks
            .iter()
            .map(|(id, metadata)| (*id, 1, metadata.clone()))
            .collect();
        self.assign_attempts(&tasks).await;
    }

    async fn assign_attempts(&self, tasks: &[(&str, u32, Value)]) {
        let assignments = tasks
            .iter()
            .map(|(id, attempt, metadata)| v1::Assignment {
                task_id: id.to_string(),
                attempt: *attempt,
                task_type: "t".into(),
                metadata_json: metadata.to_string(),
                timeout_ms: 60_000,
                ..Default::default()
            })
            .collect();
        self.send(ServerMsg::Assignments(v1::Assignments { assignments }))
            .await;
    }

    async fn ack(&self, acks: &[(&str, bool)]) {
        let acks = acks
            .iter()
            .map(|(id, accepted)| v1::ResultAck {
                task_id: id.to_string(),
                attempt: 1,
                accepted: *accepted,
                error_code: if *accepted {
                    String::new()
                } else {
                    "stale_attempt".into()
                },
                message: String::new(),
            })
            .collect();
        self.send(ServerMsg::Acks(v1::ResultAcks { acks })).await;
    }
}

fn ids(results: &[v1::Result]) -> Vec<&str> {
    results.iter().map(|r| r.task_id.as_str()).collect()
}

fn output(result: &v1::Result) -> Value {
    match &result.outcome {
        Some(v1::result::Outcome::Success(s)) => serde_json::from_str(&s.output_json).unwrap(),
        other => panic!("expected success, got {other:?}"),
    }
}

/// What the test handler reports, and the gates that hold it.
#[derive(Clone)]
struct Probe {
    events: mpsc::UnboundedSender<String>,
    gates: Arc<HashMap<&'static str, Semaphore>>,
}

impl Probe {
    fn new(gates: &[&'static str]) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (events, rx) = mpsc::unbounded_channel();
        let gates = gates.iter().map(|g| (*g, Semaphore::new(0))).collect();
        (
            Self {
                events,
                gates: Arc::new(gates),
            },
            rx,
        )
    }

    fn open(&self, gate: &str, n: usize) {
        self.gates[gate].add_permits(n);
    }
}

/// Reports `dropped <id>` unless the handler got to the end.
struct DropGuard {
    probe: Probe,
    id: String,
    finished: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.probe.events.send(format!("dropped {}", self.id));
        }
    }
}

/// Metadata drives it: `gate` waits for a permit, `panic` panics, `forever` never ends.
fn handler(probe: Probe) -> impl Handler {
    move |task: Task| {
        let probe = probe.clone();
        async move {
            let id = task.task_id.to_string();
            let _ = probe.events.send(format!("started {id}"));
            let mut guard = DropGuard {
                probe: probe.clone(),
                id: id.clone(),
                finished: false,
            };
            if let Some(gate) = task.metadata.get("gate").and_then(Value::as_str) {
                probe.gates[gate].acquire().await.unwrap().forget();
            }
            if task.metadata.get("panic") == Some(&json!(true)) {
                panic!("boom");
            }
            if task.metadata.get("forever") == Some(&json!(true)) {
                std::future::pending::<()>().await;
            }
            guard.finished = true;
            let _ = probe.events.send(format!("finished {id}"));
            Ok::<_, HandlerError>(json!({"task_id": id, "attempt": task.attempt}))
        }
    }
}

async fn wait_for(events: &mut mpsc::UnboundedReceiver<String>, want: &str) {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.recv().await {
            if event == want {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no event {want:?}");
}

#[tokio::test]
async fn register_run_batch_resend_cancel_and_drain() {
    let (url, mut conns) = start_fake_server().await;
    let (probe, mut events) = Probe::new(&["a", "c", "d"]);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(
        Agent::builder([url])
            .agent_id("test-agent")
            .task_type("t")
            .max_concurrent(4)
            .label("zone", "a")
            .version("9.9.9")
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .drain_timeout(Duration::from_secs(30))
            .run_until(handler(probe.clone()), stop_rx),
    );

    // Registration comes first and carries the configuration.
    let mut first = accept(&mut conns).await;
    let register = first.register(60_000).await;
    assert_eq!(register.agent_id, "test-agent");
    assert_eq!(register.task_types, ["t"]);
    assert_eq!(register.max_concurrent, 4);
    assert_eq!(register.version, "9.9.9");
    assert_eq!(register.labels.get("zone").map(String::as_str), Some("a"));

    // Assignments run the handler; the results arrive but are never acked before the
    // server drops the stream.
    first
        .assign(&[
            ("a1", json!({"gate": "a"})),
            ("a2", json!({"gate": "a"})),
            ("a3", json!({"gate": "a"})),
        ])
        .await;
    for id in ["a1", "a2", "a3"] {
        wait_for(&mut events, &format!("started {id}")).await;
    }
    probe.open("a", 3);
    let mut got = Vec::new();
    while got.len() < 3 {
        got.extend(first.results().await);
    }
    let mut got_ids = ids(&got);
    got_ids.sort();
    assert_eq!(got_ids, ["a1", "a2", "a3"]);
    assert_eq!(
        output(&got[0]),
        json!({"task_id": got[0].task_id, "attempt": 1})
    );
    drop(first);

    // After re-registering, every unacked result is re-sent at once, in one frame.
    let mut second = accept(&mut conns).await;
    assert_eq!(second.register(60_000).await.agent_id, "test-agent");
    let resent = second.results().await;
    let mut resent_ids = ids(&resent);
    resent_ids.sort();
    assert_eq!(
        resent_ids,
        ["a1", "a2", "a3"],
        "all unacked results in one frame"
    );
    // The immediate heartbeat names what the agent still holds.
    match second.recv().await {
        Some(AgentMsg::Heartbeat(h)) => assert_eq!(h.in_flight.len(), 3, "{h:?}"),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    second
        .ack(&[("a1", true), ("a2", true), ("a3", false)])
        .await;

    // A cancel aborts the handler and nothing is ever sent for it.
    second
        .assign(&[
            ("c1", json!({"forever": true})),
            ("c2", json!({"gate": "c"})),
        ])
        .await;
    wait_for(&mut events, "started c1").await;
    second
        .send(ServerMsg::Cancels(v1::Cancels {
            attempts: vec![v1::AttemptRef {
                task_id: "c1".into(),
                attempt: 1,
            }],
        }))
        .await;
    wait_for(&mut events, "dropped c1").await;
    probe.open("c", 1);
    assert_eq!(ids(&second.results().await), ["c2"]);
    second.ack(&[("c2", true)]).await;

    // A panic is reported as a retryable failure and the agent keeps going.
    second.assign(&[("p1", json!({"panic": true}))]).await;
    let panicked = second.results().await;
    assert_eq!(ids(&panicked), ["p1"]);
    assert_eq!(
        panicked[0].outcome,
        Some(v1::result::Outcome::Failure(
            HandlerError::retryable("handler panicked: boom").to_proto()
        ))
    );
    second.ack(&[("p1", true)]).await;

    // Shutdown drains: Drain first, then the running attempt's result, then the
    // agent returns once that result is acked.
    second.assign(&[("d1", json!({"gate": "d"}))]).await;
    wait_for(&mut events, "started d1").await;
    stop_tx.send(()).unwrap();
    match second.recv_skipping_heartbeats().await {
        AgentMsg::Drain(_) => {}
        other => panic!("expected drain, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !agent.is_finished(),
        "the agent waits for the running attempt"
    );
    probe.open("d", 1);
    assert_eq!(ids(&second.results().await), ["d1"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!agent.is_finished(), "the agent waits for the ack");
    second.ack(&[("d1", true)]).await;
    let outcome = tokio::time::timeout(WAIT, agent)
        .await
        .expect("agent stops after the drain")
        .unwrap();
    assert_eq!(outcome, Ok(()));

    // The agent closed its stream without sending anything more (no result for c1).
    while let Some(msg) = second.recv().await {
        assert!(matches!(msg, AgentMsg::Heartbeat(_)), "unexpected {msg:?}");
    }
}

#[tokio::test]
async fn endpoints_are_cycled_heartbeats_list_attempts_and_drain_times_out() {
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let (url, mut conns) = start_fake_server().await;
    let (probe, mut events) = Probe::new(&["h"]);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(
        Agent::builder([dead_url, url])
            .task_type("t")
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .drain_timeout(Duration::from_millis(200))
            .run_until(handler(probe.clone()), stop_rx),
    );
    let mut conn = accept(&mut conns).await;
    let register = conn.register(20).await;
    assert!(
        !register.agent_id.is_empty(),
        "a default agent id is generated"
    );
    conn.assign(&[("h1", json!({"gate": "h"}))]).await;
    wait_for(&mut events, "started h1").await;
    let listed = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(AgentMsg::Heartbeat(h)) = conn.recv().await {
                if h.in_flight
                    == [v1::AttemptRef {
                        task_id: "h1".into(),
                        attempt: 1,
                    }]
                {
                    return;
                }
            }
        }
    })
    .await;
    assert!(
        listed.is_ok(),
        "a periodic heartbeat lists the running attempt"
    );

    // The attempt never finishes: the drain gives up after its timeout and aborts it.
    stop_tx.send(()).unwrap();
    let outcome = tokio::time::timeout(WAIT, agent)
        .await
        .expect("drain times out")
        .unwrap();
    assert_eq!(outcome, Ok(()));
    wait_for(&mut events, "dropped h1").await;
}

#[tokio::test]
async fn transient_refusals_are_retried_and_invalid_registrations_stop_the_agent() {
    let (url, mut conns) = start_fake_server().await;
    let (probe, _events) = Probe::new(&[]);
    let agent = tokio::spawn(
        Agent::builder([url])
            .task_type("t")
            .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .run_until(handler(probe), std::future::pending::<()>()),
    );
    for (code, message) in [
        ("unavailable", "store is down"),
        ("invalid_argument", "task type t is not allowed"),
    ] {
        let mut conn = accept(&mut conns).await;
        assert!(matches!(conn.recv().await, Some(AgentMsg::Register(_))));
        conn.send(ServerMsg::Error(v1::ErrorReply {
            code: code.into(),
            message: message.into(),
        }))
        .await;
    }
    let outcome = tokio::time::timeout(WAIT, agent)
        .await
        .expect("agent gives up")
        .unwrap();
    assert_eq!(
        outcome,
        Err(Error::Rejected {
            code: "invalid_argument".into(),
            message: "task type t is not allowed".into()
        })
    );
}

#[tokio::test]
async fn excess_assignments_wait_for_a_slot_and_newer_attempts_supersede_older_ones() {
    let (url, mut conns) = start_fake_server().await;
    let (probe, mut events) = Probe::new(&["q"]);
    let agent = tokio::spawn(
        Agent::builder([url])
            .task_type("t")
            .max_concurrent(1)
            .run_until(handler(probe.clone()), std::future::pending::<()>()),
    );
    let mut conn = accept(&mut conns).await;
    conn.register(60_000).await;

    // More than max_concurrent: the second starts only once the first has finished.
    conn.assign(&[("q1", json!({"gate": "q"})), ("q2", json!({}))])
        .await;
    wait_for(&mut events, "started q1").await;
    probe.open("q", 1);
    let mut order = Vec::new();
    while order.len() < 3 {
        order.push(
            tokio::time::timeout(WAIT, events.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert_eq!(order, ["finished q1", "started q2", "finished q2"]);

    // A newer attempt of a task the agent is still running aborts the older one.
    conn.assign_attempts(&[("s1", 1, json!({"forever": true}))])
        .await;
    wait_for(&mut events, "started s1").await;
    conn.assign_attempts(&[("s1", 2, json!({}))]).await;
    wait_for(&mut events, "dropped s1").await;
    let mut seen = Vec::new();
    while !seen.iter().any(|r: &v1::Result| r.task_id == "s1") {
        seen.extend(conn.results().await);
    }
    let s1: Vec<u32> = seen
        .iter()
        .filter(|r| r.task_id == "s1")
        .map(|r| r.attempt)
        .collect();
    assert_eq!(s1, [2], "only the newer attempt reports");
    agent.abort();
}

#[tokio::test]
async fn emitted_events_reach_the_server_before_the_attempts_result() {
    let (url, mut conns) = start_fake_server().await;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let agent = tokio::spawn(
        Agent::builder([url])
            .agent_id("emitter")
            .task_type("t")
            .run_until(
                |task: Task| async move {
                    task.emit("token", "Sales ");
                    task.emit("token", "rose.");
                    task.emit("alert", json!({"type": "crowd_detected"}));
                    Ok(json!({"text": "Sales rose."}))
                },
                stop_rx,
            ),
    );
    let mut conn = accept(&mut conns).await;
    conn.register(60_000).await;
    conn.assign(&[("e1", json!({}))]).await;
    let mut events = Vec::new();
    let results = loop {
        match conn.recv_skipping_heartbeats().await {
            AgentMsg::Progress(p) => events.extend(p.events),
            AgentMsg::Results(r) => break r.results,
            other => panic!("unexpected {other:?}"),
        }
    };
    let seen: Vec<(String, u32, String, String)> = events
        .into_iter()
        .map(|e| (e.task_id, e.attempt, e.kind, e.data_json))
        .collect();
    let want = |kind: &str, data: &str| ("e1".to_string(), 1, kind.to_string(), data.to_string());
    assert_eq!(
        seen,
        [
            want("token", "\"Sales \""),
            want("token", "\"rose.\""),
            want("alert", r#"{"type":"crowd_detected"}"#),
        ]
    );
    assert_eq!(ids(&results), ["e1"]);
    assert_eq!(output(&results[0]), json!({"text": "Sales rose."}));
    conn.ack(&[("e1", true)]).await;
    drop(stop_tx);
    tokio::time::timeout(WAIT, agent)
        .await
        .expect("the agent drains")
        .unwrap()
        .unwrap();
}
