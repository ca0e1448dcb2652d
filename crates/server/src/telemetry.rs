//! OpenTelemetry spans of tasks and their attempts, through the `opentelemetry`
//! API (the exporter is set up by the binary: `baton serve` installs an OTLP
//! pipeline when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, then calls [`enable`]).
//! Until then every function here returns at its first line: no span, no id,
//! no allocation.
//!
//! A task's trace id and its `task` span id are derived from the task id, so
//! every replica that runs an attempt of the task, and the replica that sees it
//! end, agree on them without storing anything: each attempt span is a child of
//! the `task` span, and the `task` span itself is emitted once, when the task
//! ends, with the task's submit and end times. The attempt span's context
//! travels to the agent as a W3C `traceparent` on the assignment.

use baton_core::Millis;
use opentelemetry::global::{self, BoxedSpan};
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
use opentelemetry::{Context, KeyValue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Name of the tracer (the instrumentation scope) of the orchestrator's spans.
pub const TRACER: &str = "baton-orchestrator";

/// Turns span creation on; call after installing a global tracer provider.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// FNV-1a, 64 bits, from `seed`: stable across processes and versions.
fn fnv(seed: u64, s: &str) -> u64 {
    let mut h = seed;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The trace of a task (never the invalid all-zero id).
pub fn task_trace_id(task_id: &str) -> TraceId {
    let hi = fnv(0xcbf2_9ce4_8422_2325, task_id);
    let lo = fnv(0x8422_2325_cbf2_9ce4, task_id) | 1;
    TraceId::from_bytes((u128::from(hi) << 64 | u128::from(lo)).to_be_bytes())
}

/// The id of a task's `task` span (never zero).
pub fn task_span_id(task_id: &str) -> SpanId {
    SpanId::from_bytes((fnv(0x9e37_79b9_7f4a_7c15, task_id) | 1).to_be_bytes())
}

fn task_context(task_id: &str) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        task_trace_id(task_id),
        task_span_id(task_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

fn at(ms: Millis) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The W3C `traceparent` of a span context.
pub fn traceparent(sc: &SpanContext) -> String {
    baton_proto::traceparent::format(
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.trace_flags().to_u8(),
    )
}

/// An attempt's span, ended when it is dropped (a result, a timeout, a lost agent).
pub struct AttemptSpan(BoxedSpan);

impl AttemptSpan {
    /// Links the span to the agent's span for the attempt, from the `traceparent`
    /// the result carried back (ignored when it does not parse).
    pub fn link_agent(&mut self, traceparent: &str) {
        if let Some(tp) = baton_proto::traceparent::parse(traceparent) {
            let agent = SpanContext::new(
                TraceId::from_bytes(tp.trace_id),
                SpanId::from_bytes(tp.span_id),
                TraceFlags::new(tp.flags),
                true,
                TraceState::default(),
            );
            self.0
                .add_link(agent, vec![KeyValue::new("baton.link", "agent.attempt")]);
        }
    }

    /// Records the outcome and ends the span.
    pub fn end(mut self, error: Option<&str>) {
        match error {
            Some(message) => self.0.set_status(Status::error(message.to_string())),
            None => self.0.set_status(Status::Ok),
        }
        self.0.end();
    }
}

/// Starts the span of an attempt being assigned, a child of the task's span;
/// returns it with the `traceparent` to send along. `None` when tracing is off.
pub fn start_attempt(
    task_id: &str,
    task_type: &str,
    attempt: u32,
    agent_id: &str,
) -> Option<(AttemptSpan, String)> {
    if !enabled() {
        return None;
    }
    let tracer = global::tracer(TRACER);
    let span = tracer
        .span_builder("task.attempt")
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("baton.task_id", task_id.to_string()),
            KeyValue::new("baton.task_type", task_type.to_string()),
            KeyValue::new("baton.attempt", i64::from(attempt)),
            KeyValue::new("baton.agent_id", agent_id.to_string()),
        ])
        .start_with_context(&tracer, &task_context(task_id));
    let parent = traceparent(span.span_context());
    Some((AttemptSpan(span), parent))
}

/// Emits the span of a task that ended just now, from its submission to now
/// (the stored end time has only millisecond precision, and the task span must
/// end after its last attempt's span).
pub fn task_ended(
    task_id: &str,
    task_type: &str,
    run_id: Option<&str>,
    status: &str,
    created_at_ms: Millis,
) {
    if !enabled() {
        return;
    }
    let tracer = global::tracer(TRACER);
    let mut attributes = vec![
        KeyValue::new("baton.task_id", task_id.to_string()),
        KeyValue::new("baton.task_type", task_type.to_string()),
        KeyValue::new("baton.status", status.to_string()),
    ];
    if let Some(run) = run_id {
        attributes.push(KeyValue::new("baton.run_id", run.to_string()));
    }
    let mut span = tracer
        .span_builder("task")
        .with_kind(SpanKind::Internal)
        .with_trace_id(task_trace_id(task_id))
        .with_span_id(task_span_id(task_id))
        .with_start_time(at(created_at_ms))
        .with_attributes(attributes)
        .start_with_context(&tracer, &Context::new());
    if status != "completed" {
        span.set_status(Status::error(status.to_string()));
    }
    span.end_with_timestamp(SystemTime::now().max(at(created_at_ms)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_valid() {
        assert_eq!(task_trace_id("a"), task_trace_id("a"));
        assert_ne!(task_trace_id("a"), task_trace_id("b"));
        assert_ne!(task_span_id("a"), task_span_id("b"));
        assert_ne!(task_trace_id(""), TraceId::INVALID);
        assert_ne!(task_span_id(""), SpanId::INVALID);
    }

    #[test]
    fn traceparent_is_w3c() {
        let sc = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(
            traceparent(&sc),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }

    #[test]
    fn off_by_default_costs_nothing() {
        assert!(start_attempt("t", "echo", 1, "a").is_none());
    }
}
