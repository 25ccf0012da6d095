//! Both faces on their listeners: binding, the gRPC server with its health and
//! reflection services, the HTTP router, and the health status kept in step with the
//! workers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossenc_config::ServeConfig;
use crossenc_core::Models;
use crossenc_metrics::{MethodLabels, Metrics};
use crossenc_proto::v1::cross_encoder_server::CrossEncoderServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{KeyFileError, LiveKeys};
use crate::budget::{BodyBudget, GrpcBudget};
use crate::grpc::{self, CrossEncoderService};
use crate::http::{self, ConnectionRules, HttpState};
use crate::listen::{ConnectionLimits, LimitedListener, TrackRequests};
use crate::reload::Reload;
use crate::request_id::RequestIdLayer;
use crate::rule::RuleLayer;
use crate::tls::{Tls, TlsError};

/// How long past `default_deadline` a gRPC call without a deadline of its own may take
/// before tonic cancels it (one whose message never finished arriving).
const STALLED_CALL_MARGIN: Duration = Duration::from_secs(1);

/// Why the faces could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the gRPC reflection service cannot be built: {0}")]
    Reflection(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Keys(#[from] KeyFileError),
}

/// The listeners, bound before any worker starts so that a taken port fails fast.
pub struct Listeners {
    grpc: LimitedListener,
    http: LimitedListener,
    /// `server.admin_addr`'s, when the admin routes have a port of their own.
    admin: Option<LimitedListener>,
}

impl Listeners {
    pub async fn bind(config: &ServeConfig) -> Result<Self, ApiError> {
        let server = &config.server;
        let limits = ConnectionLimits {
            connections: server.max_connections,
            first_byte: server.http_header_read_timeout,
            idle: server.connection_idle_timeout,
        };
        let grpc = bind("grpc_addr", server.grpc_addr).await?;
        let http = bind("http_addr", server.http_addr).await?;
        let admin = match server.admin_addr {
            Some(addr) => Some(bind("admin_addr", addr).await?),
            None => None,
        };
        Ok(Self {
            grpc: LimitedListener::new(grpc, limits, "grpc"),
            http: LimitedListener::new(http, limits, "http"),
            admin: admin.map(|a| LimitedListener::new(a, limits, "admin")),
        })
    }

    /// The bound addresses (gRPC, HTTP, admin), not the asked ones: with port 0 these
    /// are where to connect. The admin routes are on the HTTP address unless split.
    pub fn addresses(&self) -> (String, String, String) {
        let bound = |l: &LimitedListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let http = bound(&self.http);
        let admin = self.admin.as_ref().map_or_else(|| http.clone(), bound);
        (bound(&self.grpc), http, admin)
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ApiError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ApiError::Bind { what, addr, source })
}

/// The faces, serving until `stop` turns true.
pub struct Faces {
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    health: tonic_health::server::HealthReporter,
    health_watch: Option<JoinHandle<()>>,
    draining: Arc<AtomicBool>,
    /// Set once the server has learned what its workers said at start (admission's
    /// first rate, each model's longest pair): readiness waits for it.
    started: Arc<AtomicBool>,
}

/// What the faces need besides the configuration.
pub struct FacesState {
    pub models: Arc<Models>,
    pub metrics: Arc<Metrics>,
    pub stop: watch::Receiver<bool>,
}

impl Faces {
    /// Serves gRPC and HTTP on `listeners`; the gRPC health status says NOT_SERVING
    /// until [`Faces::follow_workers`].
    pub async fn start(
        config: &ServeConfig,
        listeners: Listeners,
        state: FacesState,
    ) -> Result<Self, ApiError> {
        let FacesState {
            models,
            metrics,
            stop,
        } = state;
        let server = &config.server;
        let max_request_bytes = bytes(server.max_request_bytes.as_u64());
        let tls = Tls::load(server)?;
        let keys = LiveKeys::for_api(server)?;
        let admin_keys = LiveKeys::for_admin(server)?;
        let budget = BodyBudget::new(bytes(server.max_inflight_request_bytes.as_u64()));
        // Present at 0 from the start, so that increase() sees the first refusal.
        for method in grpc::KEYED_METHODS.iter().chain(http::KEYED_ROUTES) {
            let labels = MethodLabels { method };
            let _ = metrics.auth_failures.get_or_create(&labels);
        }
        warn_if_exposed(config, &listeners, tls.is_some(), !keys.is_empty());
        let mut reloaders: Vec<Arc<dyn Reload>> =
            vec![Arc::clone(&keys) as _, Arc::clone(&admin_keys) as _];
        reloaders.extend(tls.iter().flat_map(Tls::reloaders));
        tokio::spawn(crate::reload::watch(reloaders, stop.clone()));
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_not_serving::<CrossEncoderServer<CrossEncoderService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crossenc_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ApiError::Reflection(e.to_string()))?;
        let service = CrossEncoderServer::new(CrossEncoderService::new(
            Arc::clone(&models),
            Arc::clone(&metrics),
            server.default_deadline,
        ))
        .max_decoding_message_size(max_request_bytes)
        .max_encoding_message_size(max_request_bytes);
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .max_concurrent_streams(server.http2_max_concurrent_streams)
                .http2_keepalive_interval(Some(server.http2_keepalive_interval))
                .http2_keepalive_timeout(Some(server.http2_keepalive_timeout))
                .max_connection_age(server.max_connection_age)
                .max_connection_age_grace(server.max_connection_age_grace)
                // A call whose message never finishes arriving gives its request slot
                // back: the client's deadline, or a little past the default one (which
                // the handler answers itself once the message is in).
                .timeout(server.default_deadline + STALLED_CALL_MARGIN)
                .layer(RuleLayer(TrackRequests))
                .layer(tower::util::MapRequestLayer::new(grpc::stamp_arrival))
                .layer(RequestIdLayer)
                .layer(RuleLayer(grpc::KeyCheck {
                    keys: Arc::clone(&keys),
                    metrics: Arc::clone(&metrics),
                }))
                .layer(RuleLayer(grpc::Gate {
                    models: Arc::clone(&models),
                    metrics: Arc::clone(&metrics),
                }))
                .layer(RuleLayer(GrpcBudget(Arc::clone(&budget))))
                .add_service(health_service)
                .add_service(reflection)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    listeners
                        .grpc
                        .into_connections(tls.as_ref().map(|t| t.grpc.clone())),
                    stopped(stop.clone()),
                ),
        );
        let draining = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        let started_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let http_state = HttpState {
            models,
            metrics,
            draining: Arc::clone(&draining),
            started: Arc::clone(&started),
            max_request_bytes,
            request_timeout: server.http_request_timeout,
            keys,
            admin_keys,
            budget,
            started_at,
        };
        let split = listeners.admin.is_some();
        let router = http::router(http_state.clone(), !split);
        let rules = ConnectionRules {
            header_read_timeout: server.http_header_read_timeout,
            keepalive_interval: server.http2_keepalive_interval,
            keepalive_timeout: server.http2_keepalive_timeout,
            max_age: server.max_connection_age,
            max_age_grace: server.max_connection_age_grace,
        };
        let http = tokio::spawn(http::serve(
            listeners.http,
            (router, tls.map(|t| t.http)),
            stop.clone(),
            rules,
        ));
        let admin = listeners.admin.map(|listener| {
            let router = http::admin_router(http_state);
            tokio::spawn(http::serve(listener, (router, None), stop, rules))
        });
        Ok(Self {
            grpc,
            http,
            admin,
            health,
            health_watch: None,
            draining,
            started,
        })
    }

    /// Readiness and the gRPC health status follow the workers from now on: the server
    /// has learned what they said at start.
    pub fn follow_workers(&mut self, models: Arc<Models>) {
        self.started.store(true, Ordering::Relaxed);
        let watch = report_health(self.health.clone(), models, Arc::clone(&self.draining));
        self.health_watch = Some(tokio::spawn(watch));
    }

    /// Refuses new requests (readiness and health say so) while those in flight finish.
    pub async fn drain(&mut self) {
        self.draining.store(true, Ordering::Relaxed);
        if let Some(watch) = self.health_watch.take() {
            watch.abort();
            // An update already under way must land before NOT_SERVING, not after.
            let _ = watch.await;
        }
        self.health
            .set_not_serving::<CrossEncoderServer<CrossEncoderService>>()
            .await;
    }

    /// Waits for the servers to finish once `stop` turned true.
    pub async fn stopped(self) {
        let _ = self.grpc.await;
        let _ = self.http.await;
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
    }
}

/// Warns of a listener open beyond loopback without TLS, or an API without keys there.
fn warn_if_exposed(config: &ServeConfig, listeners: &Listeners, tls: bool, keys: bool) {
    let server = &config.server;
    let exposed = |addr: SocketAddr| !addr.ip().is_loopback();
    for (what, addr) in [
        ("grpc_addr", server.grpc_addr),
        ("http_addr", server.http_addr),
    ] {
        if !exposed(addr) {
            continue;
        }
        if !tls {
            tracing::warn!(%addr, "server.{what} is reachable beyond this machine without TLS: set server.tls_cert_file and server.tls_key_file");
        }
        if !keys {
            tracing::warn!(%addr, "server.{what} is reachable beyond this machine without API keys: set server.api_key_file");
        }
    }
    if listeners.admin.is_none() && exposed(server.http_addr) {
        tracing::info!("/metrics and /openapi.json share server.http_addr with the API; server.admin_addr gives them a port of their own");
    }
}

pub(crate) fn bytes(size: u64) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX)
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}

/// Keeps the gRPC health status in step with the workers: SERVING while every model
/// has at least one worker of each kind up, NOT_SERVING while one has none (during a
/// restart).
async fn report_health(
    health: tonic_health::server::HealthReporter,
    models: Arc<Models>,
    draining: Arc<AtomicBool>,
) {
    let mut changes = models.changes();
    loop {
        if draining.load(Ordering::Relaxed) {
            return;
        }
        if models.is_ready() {
            health
                .set_serving::<CrossEncoderServer<CrossEncoderService>>()
                .await;
        } else {
            health
                .set_not_serving::<CrossEncoderServer<CrossEncoderService>>()
                .await;
        }
        let changed = changes.iter_mut().map(|c| Box::pin(c.changed()));
        if futures_util::future::select_all(changed).await.0.is_err() {
            return;
        }
    }
}
