//! OpenTelemetry traces: one span per decision (and per MCP forward),
//! exported over OTLP/HTTP (JSON) when `telemetry.otlp_endpoint` is set,
//! and nothing at all otherwise.
//!
//! A span joins the caller's trace: the W3C `traceparent` the agent or the
//! enforcement point sent (an HTTP header, or `_meta.traceparent` on an MCP
//! call) is its parent, so the decision shows up inside the agent's own
//! trace. Spans are recorded after the decision is committed, with its
//! start time, so tracing never sits on the decision path.
//!
//! What a span carries is chosen, not captured: the decision, the action,
//! the resource, the policy ids, the task, incident, agent and request ids.
//! Never parameters, intent, reasons or tool output (agent-written text,
//! possibly secrets); a malformed `traceparent` starts a new trace.

use crate::config::TelemetryConfig;
use opentelemetry::trace::{Span, SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::time::SystemTime;

/// The tracer, when traces are exported.
#[derive(Default)]
pub struct Telemetry {
    exporting: Option<(SdkTracerProvider, SdkTracer)>,
}

/// What a decision span says.
pub struct DecisionSpan<'a> {
    pub traceparent: Option<&'a str>,
    pub started: SystemTime,
    /// `decision` (`/v1/authorize`, MCP) or `authzen.decision`.
    pub via: &'a str,
    pub outcome: &'a str,
    pub action: &'a str,
    pub resource: String,
    pub policies: &'a [String],
    pub task: &'a str,
    pub incident: &'a str,
    pub agent: &'a str,
    pub request: &'a str,
}

/// What an MCP forward span says.
pub struct ForwardSpan<'a> {
    pub traceparent: Option<&'a str>,
    pub started: SystemTime,
    pub upstream: &'a str,
    pub tool: &'a str,
    pub request: &'a str,
    pub task: &'a str,
    /// `succeeded` or `failed`.
    pub outcome: &'a str,
}

impl Telemetry {
    /// Export to `otlp_endpoint` if configured; off otherwise.
    pub fn from_config(cfg: &TelemetryConfig) -> Result<Self, String> {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Ok(Self::default());
        };
        crate::upstream::install_crypto_provider();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint {endpoint}: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("tollgate");
        Ok(Self {
            exporting: Some((provider, tracer)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.exporting.is_some()
    }

    pub fn decision(&self, s: DecisionSpan<'_>) {
        let Some((_, tracer)) = &self.exporting else {
            return;
        };
        let attributes = vec![
            KeyValue::new("tollgate.via", s.via.to_string()),
            KeyValue::new("tollgate.decision", s.outcome.to_string()),
            KeyValue::new("tollgate.action", s.action.to_string()),
            KeyValue::new("tollgate.resource", s.resource),
            KeyValue::new("tollgate.policies", s.policies.join(",")),
            KeyValue::new("tollgate.task_id", s.task.to_string()),
            KeyValue::new("tollgate.incident_id", s.incident.to_string()),
            KeyValue::new("tollgate.agent", s.agent.to_string()),
            KeyValue::new("tollgate.request_id", s.request.to_string()),
        ];
        record(
            tracer,
            "tollgate.decision",
            SpanKind::Server,
            s.traceparent,
            s.started,
            attributes,
        );
    }

    pub fn forward(&self, s: ForwardSpan<'_>) {
        let Some((_, tracer)) = &self.exporting else {
            return;
        };
        let attributes = vec![
            KeyValue::new("tollgate.mcp.upstream", s.upstream.to_string()),
            KeyValue::new("tollgate.mcp.tool", s.tool.to_string()),
            KeyValue::new("tollgate.request_id", s.request.to_string()),
            KeyValue::new("tollgate.task_id", s.task.to_string()),
            KeyValue::new("tollgate.outcome", s.outcome.to_string()),
        ];
        record(
            tracer,
            "tollgate.mcp.forward",
            SpanKind::Client,
            s.traceparent,
            s.started,
            attributes,
        );
    }

    /// Send what is buffered (at shutdown).
    pub fn flush(&self) {
        if let Some((provider, _)) = &self.exporting {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "could not export the last traces");
            }
        }
    }
}

/// The caller's span, from a W3C `traceparent`
/// (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`); none if absent
/// or malformed (then the span starts a trace of its own).
fn parent(traceparent: Option<&str>) -> Context {
    use opentelemetry::propagation::TextMapPropagator;
    let Some(value) = traceparent else {
        return Context::new();
    };
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), value.to_string());
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        cx
    } else {
        Context::new()
    }
}

fn record(
    tracer: &SdkTracer,
    name: &'static str,
    kind: SpanKind,
    traceparent: Option<&str>,
    started: SystemTime,
    attributes: Vec<KeyValue>,
) {
    let mut span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_start_time(started)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent(traceparent));
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_the_parent_only_when_well_formed() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let cx = parent(Some(good));
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(sc.span_id().to_string(), "b7ad6b7169203331");
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(!parent(Some(bad)).span().span_context().is_valid(), "{bad}");
        }
        assert!(!parent(None).span().span_context().is_valid());
    }
}
