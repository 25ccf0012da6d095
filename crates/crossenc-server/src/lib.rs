//! The crossenc supervisor: it starts the worker processes, serves the gRPC API and the
//! HTTP probes, and sends each request's pairs through the workers. It never runs the
//! model itself.

pub mod admission;
pub mod collector;
pub mod dispatch;
pub mod grpc;
pub mod http;
pub mod launch;
pub mod listen;
pub mod metrics;
pub mod pipeline;
pub mod pool;
pub mod respawn;
pub mod rest;
pub mod scheduler;
pub mod scoring;
pub mod texts;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossenc_config::{InvalidSetting, ServeConfig};
use crossenc_ipc::WorkerKind;
use crossenc_proto::v1::cross_encoder_server::CrossEncoderServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::collector::{Collector, GpuMonitor};
use crate::dispatch::DispatchLimits;
use crate::grpc::CrossEncoderService;
use crate::http::HttpState;
pub use crate::launch::{SpawnError, WorkerLauncher};
use crate::listen::LimitedListener;
use crate::metrics::{BuildLabels, Metrics};
use crate::pipeline::{Pipeline, PipelineLimits};
use crate::pool::{Worker, WorkerSet};
use crate::respawn::{Backoff, WorkerSlot, STOP_GRACE};
use crate::scheduler::SchedulerLimits;

/// How long past `default_deadline` a gRPC call without a deadline of its own may take
/// before tonic cancels it (one whose message never finished arriving).
const STALLED_CALL_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {}", list(.0))]
    Config(Vec<InvalidSetting>),
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("the {what} server stopped: {message}")]
    Server { what: &'static str, message: String },
}

fn list(errors: &[InvalidSetting]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// Runs the server until `shutdown` resolves, then drains in-flight requests (up to
/// `shutdown_grace`), stops the workers and returns.
pub async fn serve(
    config: ServeConfig,
    launcher: WorkerLauncher,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    config.validate().map_err(ServeError::Config)?;
    raise_open_file_limit();
    let max_request_bytes = bytes(config.server.max_request_bytes.as_u64());
    let connections = config.server.max_connections;
    let first_byte = config.server.http_header_read_timeout;
    let grpc_listener = LimitedListener::new(
        bind("grpc_addr", config.server.grpc_addr).await?,
        (connections, first_byte),
        "grpc",
    );
    let http_listener = LimitedListener::new(
        bind("http_addr", config.server.http_addr).await?,
        (connections, first_byte),
        "http",
    );
    // The bound addresses, not the asked ones: with port 0 these are where to connect.
    let bound = |l: &LimitedListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let (grpc_bound, http_bound) = (bound(&grpc_listener), bound(&http_listener));
    let gpus = GpuMonitor::open();
    let metrics = Arc::new(Metrics::new(gpus.is_some()));
    observe_codec(&metrics);
    let pipeline = Arc::new(Pipeline::start(pipeline_limits(&config), metrics));
    let draining = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<CrossEncoderServer<CrossEncoderService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crossenc_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Server {
            what: "reflection",
            message: e.to_string(),
        })?;
    let service = CrossEncoderServer::new(CrossEncoderService::new(
        Arc::clone(&pipeline),
        config.batching.max_client_batch_size,
        config.server.default_deadline,
    ))
    .max_decoding_message_size(max_request_bytes)
    .max_encoding_message_size(max_request_bytes);
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(config.server.http2_max_concurrent_streams)
            // A call whose message never finishes arriving gives its request slot back:
            // the client's deadline, or a little past the default one (which the handler
            // answers itself once the message is in).
            .timeout(config.server.default_deadline + STALLED_CALL_MARGIN)
            .layer(tower::util::MapRequestLayer::new(grpc::stamp_arrival))
            .layer(grpc::GateLayer(Arc::clone(&pipeline)))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(grpc_listener.into_stream(), stopped(stop_rx.clone())),
    );
    let model_name = Arc::new(std::sync::OnceLock::new());
    let router = http::router(HttpState {
        pipeline: Arc::clone(&pipeline),
        draining: Arc::clone(&draining),
        max_client_batch_size: config.batching.max_client_batch_size,
        max_request_bytes,
        request_timeout: config.server.http_request_timeout,
        model_name: Arc::clone(&model_name),
    });
    let http = tokio::spawn(http::serve(
        http_listener,
        router,
        stop_rx,
        config.server.http_header_read_timeout,
    ));
    tracing::info!(grpc = %grpc_bound, http = %http_bound, "listening; starting workers");

    let started = start_workers(&launcher, &config, &pipeline).await;
    let workers = match started {
        Ok(workers) => workers,
        Err((error, workers)) => {
            let _ = stop_tx.send(true);
            stop_workers(workers).await;
            return Err(error);
        }
    };
    tracing::info!(model = %workers[0].info.model_name, "ready");
    let _ = model_name.set(workers[0].info.model_name.clone());
    learn_model(&pipeline, &workers);
    record_build(&pipeline.metrics, &workers);
    let collector = tokio::spawn(
        Collector::new(Arc::clone(&pipeline), gpus)
            .run(config.metrics.collection_interval, stop_tx.subscribe()),
    );
    let (slots_stop, slots_stopped) = watch::channel(false);
    let (fatal_tx, mut fatal) = mpsc::channel(1);
    let slots: Vec<_> = workers
        .into_iter()
        .map(|worker| {
            let set = match worker.kind {
                WorkerKind::Tokenizer => &pipeline.tokenizers,
                WorkerKind::Model => &pipeline.models,
            };
            let slot = WorkerSlot {
                kind: worker.kind,
                id: worker.id,
                launcher: launcher.clone(),
                set: Arc::clone(set),
                metrics: Arc::clone(&pipeline.metrics),
                backoff: Backoff::new(
                    config.workers.respawn_backoff_initial,
                    config.workers.respawn_backoff_max,
                ),
                max_start_failures: config.workers.max_start_failures,
                fatal: fatal_tx.clone(),
            };
            tokio::spawn(slot.run(worker, slots_stopped.clone()))
        })
        .collect();
    let health_watch = tokio::spawn(report_health(
        health.clone(),
        Arc::clone(&pipeline),
        Arc::clone(&draining),
    ));

    drop(fatal_tx);
    let failed = tokio::select! {
        () = shutdown => None,
        Some(error) = fatal.recv() => Some(error),
    };
    match &failed {
        None => {
            tracing::info!(grace = ?config.server.shutdown_grace, "shutting down: draining requests in flight")
        }
        Some(error) => tracing::error!(%error, "a worker cannot be started; shutting down"),
    }
    draining.store(true, Ordering::Relaxed);
    health_watch.abort();
    // An update already under way must land before NOT_SERVING, not after.
    let _ = health_watch.await;
    health
        .set_not_serving::<CrossEncoderServer<CrossEncoderService>>()
        .await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(config.server.shutdown_grace, async {
        let _ = grpc.await;
        let _ = http.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still in flight after the shutdown grace; stopping anyway");
    }
    let _ = slots_stop.send(true);
    for slot in slots {
        let _ = slot.await;
    }
    let _ = collector.await;
    tracing::info!("stopped");
    match failed {
        None => Ok(()),
        Some(error) => Err(ServeError::Spawn(error)),
    }
}

fn bytes(size: u64) -> usize {
    usize::try_from(size).unwrap_or(usize::MAX)
}

/// Raises the soft limit on open files to the hard one: every connection costs one, and
/// the default soft limit (often 1024) is below `max_connections`.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Tells the pipeline what the workers learned at start: the model's longest pair, and
/// the model workers' warm-up throughput, admission's first estimate.
fn learn_model(pipeline: &Pipeline, workers: &[Arc<Worker>]) {
    let models = workers.iter().filter(|w| w.kind == WorkerKind::Model);
    let warmup = models
        .clone()
        .filter_map(|w| w.info.warmup_tokens_per_second)
        .reduce(f64::min);
    let info = &models.map(|w| &w.info).next().unwrap_or(&workers[0].info);
    pipeline.learn_model(info.max_length, info.sigmoid_by_default, warmup);
}

/// Times the gRPC codec into `metrics` (the first server of a process only: the codec
/// observer is process-wide).
fn observe_codec(metrics: &Arc<Metrics>) {
    struct CodecTimes(Arc<Metrics>);
    impl crossenc_proto::codec::CodecObserver for CodecTimes {
        fn encoded(&self, took: std::time::Duration) {
            self.0.grpc_serialize_latency.observe(took.as_secs_f64());
        }
        fn decoded(&self, took: std::time::Duration) {
            self.0.grpc_deserialize_latency.observe(took.as_secs_f64());
        }
    }
    crossenc_proto::codec::observe_codec(CodecTimes(Arc::clone(metrics)));
}

fn record_build(metrics: &Metrics, workers: &[Arc<Worker>]) {
    let model = workers.iter().find(|w| w.kind == WorkerKind::Model);
    let info = &model.unwrap_or(&workers[0]).info;
    metrics
        .build_info
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            model: info.model_name.clone(),
            architecture: info.architecture.clone(),
            device: info.device.clone(),
            dtype: info.dtype.clone(),
        })
        .set(1);
}

/// Keeps the gRPC health status in step with the workers: SERVING while at least one
/// worker of each kind is up, NOT_SERVING while one kind has none (during a restart).
async fn report_health(
    health: tonic_health::server::HealthReporter,
    pipeline: Arc<Pipeline>,
    draining: Arc<AtomicBool>,
) {
    let mut tokenizers = pipeline.tokenizers.changes();
    let mut models = pipeline.models.changes();
    loop {
        if draining.load(Ordering::Relaxed) {
            return;
        }
        if pipeline.is_ready() {
            health
                .set_serving::<CrossEncoderServer<CrossEncoderService>>()
                .await;
        } else {
            health
                .set_not_serving::<CrossEncoderServer<CrossEncoderService>>()
                .await;
        }
        tokio::select! {
            Ok(()) = tokenizers.changed() => {}
            Ok(()) = models.changed() => {}
            else => return,
        }
    }
}

fn pipeline_limits(config: &ServeConfig) -> PipelineLimits {
    let batching = &config.batching;
    PipelineLimits {
        scheduler: SchedulerLimits {
            max_batch_tokens: batching.max_batch_tokens,
            max_batch_size: batching.max_batch_size,
            max_batch_delay: batching.max_batch_delay,
        },
        dispatch: DispatchLimits {
            batches_per_worker: batching.batches_per_worker,
            batch_timeout: config.workers.batch_timeout,
            no_worker_patience: config.workers.no_worker_patience,
        },
        max_concurrent_requests: config.server.max_concurrent_requests,
        max_text_bytes: bytes(config.server.max_text_bytes.as_u64()),
        max_text_bytes_in_flight: bytes(config.server.max_text_bytes_in_flight.as_u64()),
        tokenizer_workers: config.workers.tokenizer,
        activation: config.model.activation,
        max_queued_pairs: batching.max_queued_pairs,
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}

/// Starts every worker at once; on the first failure, returns it with the workers that
/// did start, so that they can be stopped.
async fn start_workers(
    launcher: &WorkerLauncher,
    config: &ServeConfig,
    pipeline: &Pipeline,
) -> Result<Vec<Arc<Worker>>, (ServeError, Vec<Arc<Worker>>)> {
    let plan = [
        (
            WorkerKind::Tokenizer,
            config.workers.tokenizer,
            &pipeline.tokenizers,
        ),
        (WorkerKind::Model, config.workers.model, &pipeline.models),
    ];
    let mut handles = Vec::new();
    for (kind, count, set) in plan {
        for id in 0..count as u32 {
            let launcher = launcher.clone();
            let set: Arc<WorkerSet> = Arc::clone(set);
            let metrics = Arc::clone(&pipeline.metrics);
            handles.push(tokio::task::spawn_blocking(move || {
                launcher.spawn(kind, id, &metrics).map(|w| {
                    let worker = Arc::new(w);
                    set.add(Arc::clone(&worker));
                    worker
                })
            }));
        }
    }
    let mut workers = Vec::new();
    let mut first_error = None;
    for handle in handles {
        match handle.await {
            Ok(Ok(worker)) => workers.push(worker),
            Ok(Err(error)) => {
                first_error.get_or_insert(ServeError::Spawn(error));
            }
            Err(join) => {
                first_error.get_or_insert(ServeError::Server {
                    what: "worker start",
                    message: join.to_string(),
                });
            }
        }
    }
    match first_error {
        None => Ok(workers),
        Some(error) => Err((error, workers)),
    }
}

async fn stop_workers(workers: Vec<Arc<Worker>>) {
    let _ = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            for worker in &workers {
                scope.spawn(|| worker.stop(STOP_GRACE));
            }
        });
    })
    .await;
}
