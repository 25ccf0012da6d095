//! The HTTP side: liveness and readiness probes, and the Prometheus metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;

use crate::metrics::CONTENT_TYPE;
use crate::pipeline::Pipeline;

#[derive(Clone)]
pub struct HttpState {
    pub pipeline: Arc<Pipeline>,
    pub draining: Arc<AtomicBool>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The process is up and answering.
async fn health() -> &'static str {
    "ok\n"
}

/// The server can take requests: workers of both kinds are up and it is not draining.
async fn ready(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !state.pipeline.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "workers not ready\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// The registry, for Prometheus to scrape.
async fn metrics(
    State(state): State<HttpState>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.pipeline.metrics.render(),
    )
}
