//! Logs and traces. [`init`] installs the process's `tracing` subscriber:
//! log lines as text or JSON (with the fields of the spans they happen in),
//! and, when an OTLP endpoint is given, an OpenTelemetry layer that exports
//! poolplane's spans over OTLP/gRPC. [`continue_trace`] makes a call's span
//! a child of the caller's W3C `traceparent`.
//!
//! The spans themselves are made where the work happens (`api::trace` per
//! RPC, `query::trace` per acquisition and statement) with plain `tracing`
//! macros: only this module knows OpenTelemetry. It reads no environment
//! variable; `main.rs` turns `OTEL_*` into [`OtlpSettings`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::LogFormat;

/// Where and as what to export spans.
#[derive(Clone)]
pub struct OtlpSettings {
    /// The collector's OTLP/gRPC address, e.g. `http://collector:4317`.
    pub endpoint: String,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Most time one export may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSettings")
            .field("endpoint", &endpoint_for_display(&self.endpoint))
            .field("service_name", &self.service_name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// How the subscriber writes and exports.
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    /// Which events (and spans, for the log lines) are written.
    pub filter: EnvFilter,
    /// Colours, for a person at a terminal.
    pub ansi: bool,
    /// `None`: no traces are exported.
    pub otlp: Option<OtlpSettings>,
    /// Log lines go to stderr rather than stdout.
    pub to_stderr: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("a logger was installed already: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the span exporter alive; [`Telemetry::shutdown`] sends what is
/// still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (waiting at most two seconds: a
    /// collector that is down must not eat the shutdown's grace period)
    /// and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(err) = provider.shutdown_with_timeout(Duration::from_secs(2)) {
                tracing::warn!(error = %err, "spans not exported at shutdown");
            }
        }
    }
}

/// The target of every poolplane span and event (the crate's name).
const OUR_TARGET: &str = env!("CARGO_CRATE_NAME");

/// Installs the subscriber. Must run inside the tokio runtime when `otlp`
/// is set (the exporter's gRPC client lives there).
pub fn init(settings: TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let logs = log_layer(settings.log_format, settings.ansi, settings.to_stderr)
        .with_filter(settings.filter);
    let (traces, provider) = match settings.otlp {
        None => (None, None),
        Some(otlp) => {
            let provider = tracer_provider(&otlp)?;
            let tracer = provider.tracer(OUR_TARGET);
            // Our spans only, at any level, and no events: an event's
            // message may quote a caller's text.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter_fn(|meta| {
                    meta.is_span() && meta.target().starts_with(OUR_TARGET)
                }));
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    Ok(Telemetry { provider })
}

fn log_layer(
    format: LogFormat,
    ansi: bool,
    to_stderr: bool,
) -> Box<dyn Layer<Registry> + Send + Sync> {
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || {
        let out: Box<dyn std::io::Write> = if to_stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        out
    });
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => layer.with_ansi(ansi).boxed(),
        // One object per line: the event's fields, the span it happened in
        // and the spans around that, for a log pipeline to index.
        LogFormat::Json => layer
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .boxed(),
    }
}

fn tracer_provider(otlp: &OtlpSettings) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(otlp.endpoint.clone())
        .with_timeout(otlp.timeout)
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint_for_display(&otlp.endpoint),
            source,
        })?;
    let resource = Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(Reporting::new(exporter, &otlp.endpoint))
        .build())
}

/// How often at most a failing export is logged again.
const EXPORT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);

/// An exporter whose failures are logged: the SDK drops them silently, and
/// a collector that is down would otherwise look like a quiet service. The
/// first failure is a WARN line, then one a minute at most with the spans
/// lost since, and the first success after is an INFO line.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    /// The endpoint without credentials, for the log.
    shown: String,
    /// The endpoint as configured, to be kept out of any error text.
    endpoint: String,
    failures: Mutex<ExportFailures>,
}

#[derive(Debug, Default)]
struct ExportFailures {
    /// When the last WARN line was written; `None` while exports succeed.
    logged_at: Option<Instant>,
    /// Spans lost since that line.
    spans_lost: usize,
}

impl<E> Reporting<E> {
    fn new(inner: E, endpoint: &str) -> Reporting<E> {
        Reporting {
            inner,
            shown: endpoint_for_display(endpoint),
            endpoint: endpoint.to_string(),
            failures: Mutex::new(ExportFailures::default()),
        }
    }

    fn observe(&self, result: &OTelSdkResult, spans: usize) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match result {
            Ok(()) => {
                if failures.logged_at.take().is_some() {
                    tracing::info!(
                        endpoint = %self.shown,
                        spans_lost = failures.spans_lost,
                        "exporting traces again"
                    );
                    failures.spans_lost = 0;
                }
            }
            Err(error) => {
                failures.spans_lost += spans;
                if failures
                    .logged_at
                    .is_some_and(|at| at.elapsed() < EXPORT_FAILURE_LOG_EVERY)
                {
                    return;
                }
                let error = error.to_string().replace(&self.endpoint, &self.shown);
                tracing::warn!(
                    endpoint = %self.shown,
                    %error,
                    spans_lost = failures.spans_lost,
                    "could not export traces (logged at most once a minute until they go through)"
                );
                failures.logged_at = Some(Instant::now());
                failures.spans_lost = 0;
            }
        }
    }
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.observe(&result, spans);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// `endpoint` without any user name or password in it, for logs and errors.
pub fn endpoint_for_display(endpoint: &str) -> String {
    match endpoint.parse::<http::Uri>() {
        Ok(uri) => {
            let scheme = uri.scheme_str().unwrap_or("http");
            let host = uri.host().unwrap_or("?");
            match uri.port_u16() {
                Some(port) => format!("{scheme}://{host}:{port}"),
                None => format!("{scheme}://{host}"),
            }
        }
        Err(_) => "(not a URL)".to_string(),
    }
}

/// Makes `span` a child of the trace the request's `traceparent` (and
/// `tracestate`) names, if it names one. Without an OpenTelemetry layer
/// this does nothing.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    // Only fails without the layer (traces off): nothing to continue then.
    let _ = span.set_parent(parent);
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_shown_without_credentials() {
        assert_eq!(
            endpoint_for_display("https://user:secret@collector:4317/path"),
            "https://collector:4317"
        );
        assert_eq!(endpoint_for_display("http://collector"), "http://collector");
        assert_eq!(endpoint_for_display("::::"), "(not a URL)");
    }
}
