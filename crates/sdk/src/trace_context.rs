//! W3C trace context on assignments and results: the orchestrator sends the
//! context of its attempt span (`traceparent`), the agent's span for the attempt
//! becomes its child, and the result carries the agent span's context back, so
//! one task's spans across both processes form one trace. Without an
//! OpenTelemetry layer in the agent's `tracing` subscriber, none of this does
//! anything.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Parses a W3C `traceparent` (version 00) into a remote span context.
pub fn parse_traceparent(raw: &str) -> Option<SpanContext> {
    let tp = baton_proto::traceparent::parse(raw)?;
    Some(SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        TraceFlags::new(tp.flags),
        true,
        TraceState::default(),
    ))
}

/// Makes `span` a child of the orchestrator's attempt span when the assignment
/// carries a valid `traceparent`, and returns the `traceparent` of `span` itself
/// to send back with the result (empty when there is nothing to link).
pub(crate) fn adopt(span: &tracing::Span, traceparent: &str) -> String {
    if traceparent.is_empty() {
        return String::new();
    }
    let Some(parent) = parse_traceparent(traceparent) else {
        return String::new();
    };
    if span
        .set_parent(opentelemetry::Context::new().with_remote_span_context(parent))
        .is_err()
    {
        return String::new();
    }
    let cx = span.context();
    let own = cx.span().span_context().clone();
    if !own.is_valid() {
        return String::new();
    }
    baton_proto::traceparent::format(
        own.trace_id().to_bytes(),
        own.span_id().to_bytes(),
        own.trace_flags().to_u8(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_into_a_remote_context() {
        let sc =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(parse_traceparent("garbage").is_none());
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_goes_back() {
        let span = tracing::info_span!("task");
        assert_eq!(
            adopt(
                &span,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            ),
            ""
        );
        assert_eq!(adopt(&span, ""), "");
    }
}
