//! Every request's id: the client's `x-request-id` (HTTP header or gRPC metadata) when it
//! is sane, a generated one otherwise. It rides in the request's extensions to the
//! handler and the core, names the tracing span every log line about the request is
//! written in, and goes back in the response's `x-request-id`.

use std::task::{Context, Poll};

use crossenc_core::RequestId;
use tonic::codegen::http;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and gRPC metadata key) a request id travels in.
pub const HEADER: &str = "x-request-id";

/// The id a request brings, or a new one.
pub fn of_request<B>(request: &http::Request<B>) -> RequestId {
    let sent = request.headers().get(HEADER).and_then(|v| v.to_str().ok());
    sent.and_then(RequestId::from_client)
        .unwrap_or_else(RequestId::generate)
}

/// Gives every request its id (in its extensions, its span and its response), under
/// both the gRPC server and the HTTP router.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = WithRequestId<S>;

    fn layer(&self, inner: S) -> WithRequestId<S> {
        WithRequestId { inner }
    }
}

/// The service [`RequestIdLayer`] makes.
#[derive(Debug, Clone)]
pub struct WithRequestId<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for WithRequestId<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let id = of_request(&request);
        request.extensions_mut().insert(id.clone());
        let span = tracing::info_span!("request", request_id = %id, path = %request.uri().path());
        // A client's W3C traceparent is the request's parent in an exported trace.
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let _ = span.set_parent(parent);
        let answer = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let mut response = answer.await?;
            // Sane by construction: ASCII letters, digits and a few marks.
            if let Ok(value) = http::HeaderValue::from_str(id.as_str()) {
                response.headers_mut().insert(HEADER, value);
            }
            Ok(response)
        })
    }
}

/// Reads W3C trace context from a request's headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|key| key.as_str()).collect()
    }
}
