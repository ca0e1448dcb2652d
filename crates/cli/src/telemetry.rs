//! OpenTelemetry export for `baton serve`, `baton dev` and `baton agent`: an OTLP
//! (gRPC) pipeline when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, sampling from
//! `OTEL_SAMPLING_RATE` (seed 001; 0 to 1, default 1). Unset, nothing is built and
//! the orchestrator creates no spans at all.

use anyhow::{anyhow, Context, Result};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// Reads the sampling rate: a number between 0 and 1, 1 when unset.
fn sampling_rate(raw: Option<&str>) -> Result<f64> {
    match raw.map(str::trim).filter(|r| !r.is_empty()) {
        None => Ok(1.0),
        Some(r) => r
            .parse::<f64>()
            .ok()
            .filter(|v| (0.0..=1.0).contains(v))
            .ok_or_else(|| anyhow!("OTEL_SAMPLING_RATE {r:?} must be a number between 0 and 1")),
    }
}

/// The tracer provider the environment asks for, or `None` when tracing is off.
/// `follow_parent`: sample as the incoming trace context says (agents), else by
/// trace id alone (the orchestrator, whose task trace ids are derived from task
/// ids, so every replica takes the same decision for one task).
pub fn from_env(service: &'static str, follow_parent: bool) -> Result<Option<SdkTracerProvider>> {
    let endpoint = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => e.trim().to_string(),
        _ => return Ok(None),
    };
    let rate = sampling_rate(std::env::var("OTEL_SAMPLING_RATE").ok().as_deref())?;
    let by_trace_id = Sampler::TraceIdRatioBased(rate);
    let sampler = if follow_parent {
        Sampler::ParentBased(Box::new(by_trace_id))
    } else {
        by_trace_id
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .with_context(|| format!("cannot set up the OTLP exporter to {endpoint}"))?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build(),
    ))
}

/// Sends what is buffered and stops the exporter.
pub async fn shutdown(provider: Option<SdkTracerProvider>) {
    if let Some(p) = provider {
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rate_is_a_fraction() {
        assert_eq!(sampling_rate(None).unwrap(), 1.0);
        assert_eq!(sampling_rate(Some("0.25")).unwrap(), 0.25);
        assert_eq!(sampling_rate(Some(" 0 ")).unwrap(), 0.0);
        for bad in ["1.5", "-0.1", "half"] {
            let err = sampling_rate(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("OTEL_SAMPLING_RATE"), "{err}");
        }
    }
}
