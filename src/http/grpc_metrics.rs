//! gRPC server metrics in the conventional go-grpc-prometheus shape:
//! `grpc_server_started_total`, `grpc_server_handled_total` (with
//! `grpc_code`) and `grpc_server_handling_seconds`, labelled by
//! `grpc_type`, `grpc_service` and `grpc_method`.
//!
//! A tower layer around the tonic router: the status of a call is read from
//! the response headers (trailers-only answers) or from the trailers at the
//! end of the body; a body dropped before its end counts as CANCELLED.
//!
//! The same layer opens each call's span (`rpc`, with OpenTelemetry's RPC
//! attributes), continuing the caller's `traceparent`; the handler runs
//! inside it and it ends with the call, carrying the status code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tracing::Instrument;

/// The gRPC series, registered in the server's metrics registry.
pub struct GrpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    handling: HistogramVec,
}

impl GrpcMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Arc<GrpcMetrics>> {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let started = IntCounterVec::new(
            Opts::new("grpc_server_started_total", "RPCs started on the server."),
            &labels,
        )?;
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "RPCs completed on the server, regardless of success or failure.",
            ),
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        )?;
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "Time from the start of an RPC to its end (the end of its stream).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &labels,
        )?;
        registry.register(Box::new(started.clone()))?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(handling.clone()))?;
        Ok(Arc::new(GrpcMetrics {
            started,
            handled,
            handling,
        }))
    }
}

/// The tower layer that records every call.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<GrpcMetrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<GrpcMetrics>) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> GrpcMetricsService<S> {
        GrpcMetricsService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

/// One call in flight: what to record when it ends.
struct Call {
    metrics: Arc<GrpcMetrics>,
    grpc_type: &'static str,
    service: String,
    method: String,
    started: Instant,
    span: tracing::Span,
}

impl Call {
    fn finish(self, code: &str) {
        record_code(&self.span, code);
        let labels = [self.grpc_type, self.service.as_str(), self.method.as_str()];
        self.metrics
            .handled
            .with_label_values(&[labels[0], labels[1], labels[2], code])
            .inc();
        self.metrics
            .handling
            .with_label_values(&labels)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let grpc_type = grpc_type(&method);
        self.metrics
            .started
            .with_label_values(&[grpc_type, service.as_str(), method.as_str()])
            .inc();
        let span = call_span(&service, &method);
        crate::telemetry::continue_trace(&span, request.headers());
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        }
        .instrument(span.clone());
        let call = Call {
            metrics: Arc::clone(&self.metrics),
            grpc_type,
            service,
            method,
            started: Instant::now(),
            span,
        };
        Box::pin(async move {
            let response = response.await?;
            let header_code = response.headers().get("grpc-status").map(code_name);
            Ok(response.map(|inner| MeteredBody {
                inner,
                header_code,
                call: Some(call),
            }))
        })
    }
}

/// A response body that records its call when the status is known.
pub struct MeteredBody<B> {
    inner: B,
    header_code: Option<&'static str>,
    call: Option<Call>,
}

impl<B> MeteredBody<B> {
    fn finish(&mut self, code: &'static str) {
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
    }
}

impl<B: Body + Unpin> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        // A streaming answer's items are made as the body is polled.
        let span = self.call.as_ref().map(|call| call.span.clone());
        let _entered = span.as_ref().map(tracing::Span::enter);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame
                    .trailers_ref()
                    .and_then(|trailers| trailers.get("grpc-status"))
                    .map(code_name)
                {
                    self.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("Internal"),
            Poll::Ready(None) => {
                let code = self.header_code.unwrap_or("Unknown");
                self.finish(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // A trailers-only answer may never have its body polled to the end.
        let code = self.header_code.unwrap_or("Canceled");
        self.finish(code);
    }
}

/// Every method this server answers. Paths outside it are labelled
/// `unknown`: label values must come from a closed set, or a client calling
/// made-up paths would grow the series without bound.
const KNOWN_METHODS: &[(&str, &[&str])] = &[
    (
        "poolplane.v1.PoolAdmin",
        &[
            "ListPools",
            "GetPool",
            "CreatePool",
            "UpdatePool",
            "DeletePool",
            "ResetStatistics",
            "CheckHealth",
            "GetMetricsHistory",
            "ListAlerts",
            "AcknowledgeAlert",
            "ClearAlert",
            "ListSessions",
            "KillSession",
            "PausePool",
            "ResumePool",
            "ReconnectPool",
            "ReloadConfig",
        ],
    ),
    (
        "poolplane.v1.Query",
        &["Execute", "ExecuteBatch", "ExecuteStream", "Session"],
    ),
    ("poolplane.v1.PoolEvents", &["Watch"]),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
    (
        "grpc.reflection.v1.ServerReflection",
        &["ServerReflectionInfo"],
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        &["ServerReflectionInfo"],
    ),
];

/// The call's span, named as OpenTelemetry names RPC spans
/// (`service/method`, from the closed set).
fn call_span(service: &str, method: &str) -> tracing::Span {
    tracing::info_span!(
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

/// The call's status on its span; codes that mean the server failed mark
/// the span as an error (OpenTelemetry's rule for server spans).
fn record_code(span: &tracing::Span, code: &str) {
    let Some(number) = CODE_NAMES.iter().position(|name| *name == code) else {
        return;
    };
    span.record("rpc.grpc.status_code", number);
    if matches!(
        code,
        "Unknown" | "DeadlineExceeded" | "Unimplemented" | "Internal" | "Unavailable" | "DataLoss"
    ) {
        span.record("otel.status_code", "ERROR");
    }
}

fn split_path(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let known = KNOWN_METHODS
        .iter()
        .any(|(s, methods)| *s == service && methods.contains(&method));
    if known {
        (service.to_string(), method.to_string())
    } else {
        ("unknown".to_string(), "unknown".to_string())
    }
}

fn grpc_type(method: &str) -> &'static str {
    match method {
        "Watch" | "ExecuteStream" => "server_stream",
        "ServerReflectionInfo" | "Session" => "bidi_stream",
        _ => "unary",
    }
}

/// The conventional names of the gRPC status codes, by number.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The conventional name of a numeric grpc-status (`Unknown` for a
/// number gRPC does not define).
fn code_name(value: &http::HeaderValue) -> &'static str {
    value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .and_then(|number| CODE_NAMES.get(number))
        .copied()
        .unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_poolplane_method_is_known() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_else(|err| panic!("descriptor set: {err}"));
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = format!("{package}.{}", service.name.unwrap_or_default());
                for method in service.method {
                    let path = format!("/{service_name}/{}", method.name.unwrap_or_default());
                    assert_ne!(
                        split_path(&path).0,
                        "unknown",
                        "{path} missing from KNOWN_METHODS"
                    );
                }
            }
        }
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/poolplane.v1.Query/Execute"),
            ("poolplane.v1.Query".to_string(), "Execute".to_string())
        );
        assert_eq!(
            split_path("/poolplane.v1.Query/Made-Up-123"),
            ("unknown".to_string(), "unknown".to_string())
        );
        assert_eq!(grpc_type("Watch"), "server_stream");
        assert_eq!(
            code_name(&http::HeaderValue::from_static("4")),
            "DeadlineExceeded"
        );
        assert_eq!(code_name(&http::HeaderValue::from_static("x")), "Unknown");
    }
}
