//! Where log lines and spans go: log lines to stderr, as text for people or one JSON
//! object per line (with the spans each was written in, so a request's id is on every
//! line about it); spans, when an OTLP endpoint is given, to an OpenTelemetry collector,
//! a client's W3C `traceparent` as their parent. (Workers log through
//! `crossenc_worker::command::init_logging`, in the format their supervisor gave them.)

use std::io::IsTerminal;

use anyhow::Context;
use crossenc_config::LogFormat;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Keeps the span exporter running; sends what it still holds when dropped.
pub struct Tracing(Option<SdkTracerProvider>);

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Where spans are exported, and what they say of the server.
pub struct Otlp<'a> {
    pub endpoint: &'a str,
    pub model: &'a str,
}

/// Installs the process's subscriber: `format`, filtered by `filter` (RUST_LOG syntax),
/// and an OTLP span exporter when `otlp` is given (call within a tokio runtime then).
pub fn init(format: LogFormat, filter: &str, otlp: Option<Otlp<'_>>) -> anyhow::Result<Tracing> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let provider = otlp.map(span_exporter).transpose()?;
    let spans = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("crossenc")));
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .init();
    Ok(Tracing(provider))
}

fn span_exporter(otlp: Otlp<'_>) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(otlp.endpoint)
        .build()
        .with_context(|| format!("cannot export spans to {}", otlp.endpoint))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("crossenc")
        .with_attribute(opentelemetry::KeyValue::new(
            "crossenc.model",
            otlp.model.to_string(),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// For commands other than `serve` and `worker`: text, CROSSENC_LOG or info.
pub fn init_default() {
    let filter = std::env::var("CROSSENC_LOG").unwrap_or_else(|_| "info".into());
    let _ = init(LogFormat::Text, &filter, None);
}
