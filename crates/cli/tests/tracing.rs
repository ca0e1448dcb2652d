//! OpenTelemetry end to end: the real orchestrator and a real agent process export
//! over OTLP (gRPC) to a receiver in this test that speaks the real protocol
//! (opentelemetry-proto's TraceService). One task gives one trace: the
//! orchestrator's `task` span, its `task.attempt` child, and the agent's
//! `agent.attempt` span as the attempt's child, linked through the `traceparent`
//! the assignment carried; the result carries the agent span's context back and
//! the attempt span links to it.

mod common;

use common::{AgentProc, Api, Server, TempDir};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the receiver on a free port; returns its endpoint and what it received.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = Receiver::default();
    let spans = rx.spans.clone();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(rx))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), spans)
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_task_is_one_trace_across_orchestrator_and_agent() {
    let (endpoint, spans) = receiver().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SAMPLING_RATE", "1"),
        // Export within 100 ms rather than the default 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let dir = TempDir::new("otel");
    let server = Server::start_with_env(&dir.0, "127.0.0.1:0", "127.0.0.1:0", &[], &env);
    let api = Api::new(&server.http);
    let _agent = AgentProc::start_with_env(&server.grpc, "echo", 4, "otel-agent", &env);
    api.wait_agents(1).await;
    api.submit(common::echo("traced-task")).await;
    let done = api.wait_done("traced-task", Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed");

    let deadline = Instant::now() + Duration::from_secs(30);
    let (task, attempt, agent) = loop {
        let got = spans.lock().unwrap().clone();
        let find = |service: &str, name: &str| {
            got.iter()
                .find(|r| {
                    r.service == service
                        && r.span.name == name
                        && (attribute(&r.span, "baton.task_id").as_deref() == Some("traced-task")
                            || attribute(&r.span, "task_id").as_deref() == Some("traced-task"))
                })
                .map(|r| r.span.clone())
        };
        if let (Some(t), Some(a), Some(g)) = (
            find("baton-orchestrator", "task"),
            find("baton-orchestrator", "task.attempt"),
            find("baton-agent", "agent.attempt"),
        ) {
            break (t, a, g);
        }
        assert!(
            Instant::now() < deadline,
            "the receiver did not get the three spans of the task within 30 s; got: {:#?}",
            got.iter()
                .map(|r| (&r.service, &r.span.name, hex(&r.span.trace_id)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // One trace.
    assert_eq!(hex(&task.trace_id), hex(&attempt.trace_id));
    assert_eq!(hex(&attempt.trace_id), hex(&agent.trace_id));
    // Parent and child: task ← attempt (orchestrator) ← agent.attempt (agent).
    assert!(task.parent_span_id.is_empty(), "the task span is the root");
    assert_eq!(hex(&attempt.parent_span_id), hex(&task.span_id));
    assert_eq!(hex(&agent.parent_span_id), hex(&attempt.span_id));
    // And back: the result carried the agent span's context, linked from the attempt.
    assert!(
        attempt
            .links
            .iter()
            .any(|l| hex(&l.span_id) == hex(&agent.span_id)
                && hex(&l.trace_id) == hex(&agent.trace_id)),
        "the attempt span does not link the agent's span: {:?}",
        attempt.links
    );
    assert_eq!(attribute(&attempt, "baton.attempt").as_deref(), Some("1"));
    assert_eq!(
        attribute(&attempt, "baton.agent_id").as_deref(),
        Some("otel-agent")
    );
    // Times nest: the task spans its attempt (its start is the submission time,
    // stored in whole milliseconds).
    assert!(task.start_time_unix_nano <= attempt.start_time_unix_nano);
    assert!(
        task.end_time_unix_nano >= attempt.end_time_unix_nano,
        "task ends {} before its attempt {}",
        task.end_time_unix_nano,
        attempt.end_time_unix_nano
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_rate_zero_exports_no_task_spans() {
    let (endpoint, spans) = receiver().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SAMPLING_RATE", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let dir = TempDir::new("otel-off");
    let server = Server::start_with_env(&dir.0, "127.0.0.1:0", "127.0.0.1:0", &[], &env);
    let api = Api::new(&server.http);
    let _agent = AgentProc::start_with_env(&server.grpc, "echo", 4, "otel-agent-0", &env);
    api.wait_agents(1).await;
    for i in 0..5 {
        api.submit(common::echo(&format!("untraced-{i}"))).await;
    }
    for i in 0..5 {
        api.wait_done(&format!("untraced-{i}"), Duration::from_secs(30))
            .await;
    }
    // Give the exporters several schedule delays to send anything they hold.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let got = spans.lock().unwrap();
    let names: Vec<&str> = got.iter().map(|r| r.span.name.as_str()).collect();
    assert!(
        !names
            .iter()
            .any(|n| ["task", "task.attempt", "agent.attempt"].contains(n)),
        "{names:?}"
    );
}
