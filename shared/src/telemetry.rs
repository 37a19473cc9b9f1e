//! Logging and tracing set-up shared by every binary, and W3C trace-context
//! propagation through AMQP headers so one trace follows a command from the
//! HTTP request through the worker to the webhook delivery.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// Keeps the trace exporter alive; dropping it flushes pending spans.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// The resource attributes of `service`: name and version.
pub fn resource(service: &'static str) -> Resource {
    Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    never_log_query_parameters(filter)
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), text
/// or JSON lines on stderr (JSON lines carry the span fields, `trace_id`
/// included), and OTLP trace export when `OTEL_EXPORTER_OTLP_ENDPOINT` is
/// set (the exporter reads the standard `OTEL_*` variables). Later calls do
/// nothing, which tests rely on.
pub fn init(cfg: &LogConfig, service: &'static str) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource(service))
                        .build(),
                ),
                Err(e) => {
                    eprintln!("OTLP exporter disabled: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter()).with(otel);
    let _ = match cfg.log_format {
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_span_list(false))
            .try_init(),
        LogFormat::Text => registry.with(fmt).try_init(),
    };
    Telemetry { provider }
}

/// `tokio_postgres` logs every statement's parameters at DEBUG: command
/// environments, stdin, key hashes. Cap that target at INFO whatever
/// `RUST_LOG` says, so no log level can leak them.
fn never_log_query_parameters(filter: EnvFilter) -> EnvFilter {
    match "tokio_postgres::query=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct PairsExtractor<'a>(&'a [(&'a str, &'a str)]);

impl Extractor for PairsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| *v)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| *k).collect()
    }
}

/// Adds the current span's trace context (`traceparent`, `tracestate`) to
/// message headers. Does nothing when no trace is active.
pub fn inject_current(headers: &mut BTreeMap<String, String>) {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(headers));
    }
}

/// Makes `span` a child of the trace context in `headers` (name/value
/// pairs from AMQP or HTTP headers), and records its `trace_id` field.
pub fn continue_trace(span: &tracing::Span, headers: &[(&str, &str)]) {
    let parent: Context = TraceContextPropagator::new().extract(&PairsExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Records the span's OpenTelemetry trace id in its `trace_id` field (when
/// declared), so JSON log lines can be joined with traces.
pub fn record_trace_id(span: &tracing::Span) {
    let id = span.context().span().span_context().trace_id();
    if id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_active_trace_injects_nothing() {
        let mut h = BTreeMap::new();
        inject_current(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn query_parameters_stay_out_of_debug_logs() {
        let f = never_log_query_parameters(EnvFilter::new("debug"));
        assert!(f.to_string().contains("tokio_postgres::query=info"), "{f}");
    }
}
