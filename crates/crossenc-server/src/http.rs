//! The HTTP side: liveness and readiness probes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

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
