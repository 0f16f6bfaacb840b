//! A request poolplane cannot decode (garbage bytes, invalid UTF-8 in a
//! string, nesting deeper than protobuf allows) is the caller's error. tonic
//! answers it INTERNAL, which tells clients the server failed; this layer
//! turns exactly those answers into INVALID_ARGUMENT, as the status
//! contract says, and a request above `server.max_request_bytes` (tonic's
//! OUT_OF_RANGE) into RESOURCE_EXHAUSTED. Nothing else is touched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use http_body::{Body, Frame};

/// What tonic says, as it travels in `grpc-message` (percent-encoded:
/// spaces are `%20`), when its protobuf codec cannot decode a message...
const DECODE_FAILURE: &str = "failed%20to%20decode%20Protobuf%20message";
/// ...and when a message is above the size limit.
const TOO_LARGE: &str = "Error,%20decoded%20message%20length%20too%20large";

#[derive(Clone, Copy, Default)]
pub(crate) struct DecodeErrorsLayer;

impl<S> tower_layer::Layer<S> for DecodeErrorsLayer {
    type Service = DecodeErrors<S>;

    fn layer(&self, inner: S) -> DecodeErrors<S> {
        DecodeErrors { inner }
    }
}

#[derive(Clone)]
pub(crate) struct DecodeErrors<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for DecodeErrors<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RelabeledBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            relabel(response.headers_mut());
            Ok(response.map(|inner| RelabeledBody { inner }))
        })
    }
}

/// A response body whose trailers (where a status usually travels) are
/// relabelled too.
pub(crate) struct RelabeledBody<B> {
    inner: B,
}

impl<B: Body + Unpin> Body for RelabeledBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(trailers) = frame.trailers_mut() {
                relabel(trailers);
            }
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

/// Relabels a status (in headers or trailers) that reports a decode failure.
fn relabel(headers: &mut http::HeaderMap) {
    let code = headers.get("grpc-status").map(HeaderValue::as_bytes);
    let message = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        .unwrap_or("");
    let relabelled = match code {
        Some(b"13") if message.starts_with(DECODE_FAILURE) => "3",
        Some(b"11") if message.starts_with(TOO_LARGE) => "8",
        _ => return,
    };
    headers.insert("grpc-status", HeaderValue::from_static(relabelled));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decode_failures_and_oversized_requests_are_relabelled() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("13"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static(
                "failed%20to%20decode%20Protobuf%20message:%20invalid%20wire%20type",
            ),
        );
        relabel(&mut headers);
        assert_eq!(headers["grpc-status"], "3");

        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("11"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("Error,%20decoded%20message%20length%20too%20large:%20found"),
        );
        relabel(&mut headers);
        assert_eq!(headers["grpc-status"], "8");

        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("13"));
        headers.insert("grpc-message", HeaderValue::from_static("something else"));
        relabel(&mut headers);
        assert_eq!(headers["grpc-status"], "13");
    }
}
