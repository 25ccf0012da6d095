//! The HTTP side: liveness and readiness probes, the Prometheus metrics, and the JSON
//! API (see [`crate::rest`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crossenc_core::{Models, PipelineError, RequestId};
use crossenc_metrics::{MethodLabels, Metrics, RequestRecorder, CONTENT_TYPE};

use crate::access::{self, Served};
use crate::auth::LiveKeys;
use crate::budget::{BodyBudget, Refusal};
use crate::failure::{ErrorClass, Failure};
use crate::listen::{Connection, LimitedListener, TrackRequests};
use crate::request_id::RequestIdLayer;
use crate::rest;
use crate::rule::RuleLayer;
use crate::tls::LiveAcceptor;

#[derive(Clone)]
pub struct HttpState {
    pub models: Arc<Models>,
    pub metrics: Arc<Metrics>,
    pub draining: Arc<AtomicBool>,
    /// Whether the server has learned what its workers said at start.
    pub started: Arc<AtomicBool>,
    pub max_request_bytes: usize,
    pub request_timeout: std::time::Duration,
    pub keys: Arc<LiveKeys>,
    /// The admin port's keys (`server.admin_api_key_file`); empty: the port is open.
    pub admin_keys: Arc<LiveKeys>,
    pub budget: Arc<BodyBudget>,
    /// When the server started, in seconds since the epoch: `/v1/models`' `created`.
    pub started_at: u64,
}

/// The API's routes, and the probes; with `admin`, `/metrics` and `/openapi.json` too.
/// Every route but the probes needs a key when keys are configured.
pub fn router(state: HttpState, admin: bool) -> Router {
    let mut api = Router::new()
        .route("/rerank", post(rest::rerank))
        .route("/v1/rerank", post(rest::v1_rerank))
        .route("/score", post(rest::score))
        .layer(DefaultBodyLimit::max(state.max_request_bytes))
        .route_layer(middleware::from_fn_with_state(state.clone(), body_budget))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            admission_gate,
        ))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            record_request,
        ))
        .route("/v1/models", get(rest::models));
    if admin {
        api = api
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(rest::openapi));
    }
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    probes().merge(api).with_state(state).layer(RequestIdLayer)
}

/// The admin routes alone, for `server.admin_addr`: no API; /metrics and /openapi.json
/// need a key of `server.admin_api_key_file` when it is set (else a network policy
/// guards the port).
pub fn admin_router(state: HttpState) -> Router {
    let admin = Router::new()
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(rest::openapi))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_admin_key,
        ));
    probes().merge(admin).with_state(state)
}

fn probes() -> Router<HttpState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// Refuses a request without a valid API key: 401, nothing said but that a key is
/// needed, and counted by route (and as a request, for the API's routes).
async fn require_key(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    check_key(&state, &state.keys, request, next).await
}

/// [`require_key`] with the admin port's keys.
async fn require_admin_key(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    check_key(&state, &state.admin_keys, request, next).await
}

async fn check_key(state: &HttpState, keys: &LiveKeys, request: Request, next: Next) -> Response {
    let presented = request.headers().get(header::AUTHORIZATION);
    if keys.admit(presented.map(|v| v.as_bytes())) {
        return next.run(request).await;
    }
    let method = route_word(request.uri().path());
    let metrics = &state.metrics;
    metrics
        .auth_failures
        .get_or_create(&MethodLabels { method })
        .inc();
    let failure = Failure::unauthenticated();
    if matches!(method, "http_rerank" | "http_v1_rerank" | "http_score") {
        RequestRecorder::start(Arc::clone(metrics), method, Instant::now())
            .finish(Err(failure.class.code_word()));
    }
    let mut response = failure.into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The `method` labels of the HTTP routes that take a key.
pub const KEYED_ROUTES: &[&str] = &[
    "http_rerank",
    "http_v1_rerank",
    "http_score",
    "http_models",
    "http_metrics",
    "http_openapi",
    "http_other",
];

/// The `method` label of an HTTP route.
fn route_word(path: &str) -> &'static str {
    match path {
        "/rerank" => "http_rerank",
        "/v1/rerank" => "http_v1_rerank",
        "/score" => "http_score",
        "/v1/models" => "http_models",
        "/metrics" => "http_metrics",
        "/openapi.json" => "http_openapi",
        _ => "http_other",
    }
}

/// The process is up and answering.
async fn health() -> &'static str {
    "ok\n"
}

/// The server can take requests: every model has workers of both kinds up, and the
/// server is not draining.
async fn ready(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.draining.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !state.started.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    } else if !state.models.is_ready() {
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
        state.metrics.render(),
    )
}

/// Lets an API request in before its body is read, or refuses it at once (429) while
/// `max_concurrent_requests` are in flight: no more bodies than that are decoded at once.
/// The request, body included, must be answered within `http_request_timeout`: a body
/// that never finishes arriving gives its slot back then.
async fn admission_gate(
    State(state): State<HttpState>,
    mut request: Request,
    next: Next,
) -> Response {
    let pass = match state.models.enter() {
        Ok(pass) => pass,
        Err(refused) => return Failure::from(PipelineError::Refused(refused)).into_response(),
    };
    // The handler gives it back once the request has its model's place.
    request.extensions_mut().insert(pass.clone());
    let answered = tokio::time::timeout(state.request_timeout, next.run(request)).await;
    drop(pass);
    answered.unwrap_or_else(|_| rest::timed_out(state.request_timeout).into_response())
}

/// Puts an admitted request's body on the byte budget until it is answered.
async fn body_budget(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let (body, hold) = state.budget.wrap(body, Refusal::Http);
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::new(body)))
        .await;
    drop(hold);
    response
}

/// Records every API request, including those refused before their handler ran (a body
/// that is not JSON, too large, of the wrong content type), and writes its access line.
async fn record_request(
    State(metrics): State<Arc<Metrics>>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = route_word(request.uri().path());
    let id = request.extensions().get::<RequestId>().cloned();
    let recorder = RequestRecorder::start(metrics, method, Instant::now());
    // The handler says the request's model here: recorded there however the request ends.
    request.extensions_mut().insert(recorder.route_cell());
    let response = next.run(request).await;
    let status = response.status();
    let served = response.extensions().get::<Served>();
    let outcome = if status.is_success() {
        Ok(served.map(|s| s.stages))
    } else {
        let class = response.extensions().get::<ErrorClass>();
        Err(class.map_or("unknown", |c| c.code_word()))
    };
    let latency = recorder.finish(outcome);
    access::log(id.as_ref(), method, &status.as_u16(), served, latency);
    response
}

/// How the HTTP server treats each connection (from `server.*`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionRules {
    pub header_read_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub max_age: Duration,
    pub max_age_grace: Duration,
}

/// Serves `router` on `listener` until `stop` turns true, then lets the requests in
/// flight finish (connections close once idle) and returns.
///
/// axum's own `serve` gives hyper no timer, so a client that sends its request head a
/// byte at a time (slowloris) would hold its connection forever; here the head must
/// arrive within `header_read_timeout`, and a connection idle that long between
/// requests is closed too. HTTP/2 connections are pinged; every connection is asked to
/// close at `max_age` and cut `max_age_grace` later.
pub async fn serve(
    listener: LimitedListener,
    (router, tls): (Router, Option<Arc<LiveAcceptor>>),
    mut stop: tokio::sync::watch::Receiver<bool>,
    rules: ConnectionRules,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    // Each connection holds a receiver; all are gone once every connection has closed.
    let (open_tx, open) = tokio::sync::watch::channel(());
    loop {
        let stream = tokio::select! {
            (stream, _) = listener.next() => stream,
            () = stopping(&mut stop) => break,
        };
        let router = router.clone();
        let mut stop = stop.clone();
        let open = open.clone();
        let tls = tls.as_ref().map(|live| live.get());
        tokio::spawn(async move {
            // The handshake runs here, off the accept loop: a slow client holds only
            // its own connection.
            let accepted = Connection::accept(stream, tls.as_ref(), rules.header_read_timeout);
            let stream = match accepted.await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
            };
            let service = tower::ServiceBuilder::new()
                .layer(axum::Extension(stream.info().clone()))
                .layer(RuleLayer(TrackRequests))
                .service(router);
            let service = TowerToHyperService::new(service);
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(rules.header_read_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(rules.keepalive_interval)
                .keep_alive_timeout(rules.keepalive_timeout);
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let too_old = tokio::time::sleep(rules.max_age);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = too_old => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(rules.max_age_grace, connection).await;
                }
                () = stopping(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(open);
        });
    }
    drop(open);
    drop(listener);
    open_tx.closed().await;
}

/// Resolves once `stop` turns true (the guard `wait_for` returns must not cross an await).
async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}
