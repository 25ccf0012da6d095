//! The crossenc supervisor, assembled: it binds the faces (`crossenc-api`), starts the
//! core (`crossenc-core`) and the worker processes that join it (`crossenc-pool`),
//! refreshes the metrics (`crossenc-metrics`), and stops all of them in order. It never
//! runs the model itself, and holds no logic of the parts it joins: each is tested on
//! its own, this crate through the binary's end-to-end tests.

use std::future::Future;
use std::sync::Arc;

use crossenc_api::{ApiError, Faces, FacesState, Listeners};
use crossenc_config::{InvalidSetting, ServeConfig, ServedModel};
use crossenc_core::dispatch::DispatchLimits;
pub use crossenc_core::scheduler::BatchCost;
use crossenc_core::scheduler::SchedulerLimits;
use crossenc_core::{LearnedModel, ModelRoute, Models, Pipeline, PipelineLimits};
use crossenc_ipc::{WorkerInfo, WorkerKind};
use crossenc_metrics::{
    AdmissionLevels, BuildLabels, Collector, CollectorSources, GpuMissing, GpuMonitor, Metrics,
    ModelSource, Process,
};
use crossenc_pool::{Pool, PoolPlan, PoolSets, ProcessTable, Started};
pub use crossenc_pool::{SpawnError, WorkerLauncher};
use tokio::sync::watch;

/// Why the server could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {}", list(.0))]
    Config(Vec<InvalidSetting>),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("model {model}: {source}")]
    Spawn { model: String, source: SpawnError },
    #[error(transparent)]
    Gpu(#[from] GpuMissing),
}

fn list(errors: &[InvalidSetting]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One model to serve: its settings, how its workers start, and what a batch costs
/// its model workers' pass (the measure of its `max_batch_tokens`).
pub struct ModelPlan {
    pub served: ServedModel,
    pub launcher: WorkerLauncher,
    pub cost: BatchCost,
}

/// A model being served: its pipeline and its workers.
struct Running {
    plan: ModelPlan,
    pipeline: Arc<Pipeline>,
}

/// Runs the server until `shutdown` resolves, then drains in-flight requests (up to
/// `shutdown_grace`), stops the workers and returns.
pub async fn serve(
    config: ServeConfig,
    models: Vec<ModelPlan>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    config.validate().map_err(ServeError::Config)?;
    // Before anything listens: a server asked for GPUs it cannot have says so and exits.
    let gpus = GpuMonitor::open(&config.gpus())?;
    raise_open_file_limit();
    let listeners = Listeners::bind(&config).await?;
    let (grpc_bound, http_bound, admin_bound) = listeners.addresses();
    let metrics = Arc::new(Metrics::new(gpus.is_some()));
    observe_codec(&metrics);
    let running: Vec<Running> = models
        .into_iter()
        .map(|plan| {
            let model_metrics = Arc::new(metrics.model(&plan.served.name));
            let limits = pipeline_limits(&config, &plan);
            let pipeline = Arc::new(Pipeline::start(limits, model_metrics));
            Running { plan, pipeline }
        })
        .collect();
    let served = running.iter().map(|r| ModelRoute {
        name: r.plan.served.name.as_str().into(),
        pipeline: Arc::clone(&r.pipeline),
        max_client_batch_size: r.plan.served.batching.max_client_batch_size,
    });
    let routes = Arc::new(Models::new(
        served.collect(),
        config.server.max_concurrent_requests,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = FacesState {
        models: Arc::clone(&routes),
        metrics: Arc::clone(&metrics),
        stop: stop_rx,
    };
    let faces = Faces::start(&config, listeners, state).await;
    let mut faces = faces.inspect_err(|_| {
        let _ = stop_tx.send(true);
    })?;
    tracing::info!(grpc = %grpc_bound, http = %http_bound, admin = %admin_bound, tls = config.server.tls(), "listening; starting workers");

    let mut pools = match start_pools(&running).await {
        Ok(pools) => pools,
        Err(error) => {
            let _ = stop_tx.send(true);
            return Err(error);
        }
    };
    let mut sources = Vec::new();
    for (model, (pool, workers)) in running.iter().zip(&pools) {
        let name = &model.plan.served.name;
        tracing::info!(model = %name, "ready");
        learn_model(&model.pipeline, workers);
        record_build(&metrics, name, model_info(workers));
        set_admission_limits(&model.pipeline);
        sources.push(ModelSource {
            metrics: Arc::clone(&model.pipeline.metrics),
            sources: Box::new(Sources {
                processes: pool.processes(),
                pipeline: Arc::clone(&model.pipeline),
            }),
        });
    }
    let collector = tokio::spawn(
        Collector::new(Arc::clone(&metrics), sources, gpus)
            .run(config.metrics.collection_interval, stop_tx.subscribe()),
    );
    faces.follow_workers(Arc::clone(&routes));

    let failed = tokio::select! {
        () = shutdown => None,
        error = any_failed(&mut pools, &running) => Some(error),
    };
    match &failed {
        None => {
            tracing::info!(grace = ?config.server.shutdown_grace, "shutting down: draining requests in flight")
        }
        Some(error) => tracing::error!(%error, "a worker cannot be started; shutting down"),
    }
    faces.drain().await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(config.server.shutdown_grace, faces.stopped()).await;
    if drained.is_err() {
        tracing::warn!("requests still in flight after the shutdown grace; stopping anyway");
    }
    futures_util::future::join_all(pools.into_iter().map(|(pool, _)| pool.stop())).await;
    let _ = collector.await;
    tracing::info!("stopped");
    match failed {
        None => Ok(()),
        Some(error) => Err(error),
    }
}

/// Starts every model's workers at once. If one model's cannot start, the others'
/// are stopped: a server serves all its models or none.
async fn start_pools(running: &[Running]) -> Result<Vec<(Pool, Started)>, ServeError> {
    let starts = running.iter().map(|model| {
        let sets = PoolSets {
            tokenizers: Arc::clone(&model.pipeline.tokenizers),
            models: Arc::clone(&model.pipeline.models),
        };
        let launcher = model.plan.launcher.clone();
        let plan = pool_plan(&model.plan.served);
        Pool::start(launcher, plan, sets, Arc::clone(&model.pipeline.metrics))
    });
    let mut started = Vec::new();
    let mut failure = None;
    let results = futures_util::future::join_all(starts).await;
    for (model, result) in running.iter().zip(results) {
        match result {
            Ok(pool) => started.push(pool),
            Err(source) => {
                let model = model.plan.served.name.clone();
                failure = failure.or(Some(ServeError::Spawn { model, source }));
            }
        }
    }
    match failure {
        None => Ok(started),
        Some(error) => {
            futures_util::future::join_all(started.into_iter().map(|(pool, _)| pool.stop())).await;
            Err(error)
        }
    }
}

/// The first worker of any model that gives up starting.
async fn any_failed(pools: &mut [(Pool, Started)], running: &[Running]) -> ServeError {
    let failures = pools.iter_mut().map(|(pool, _)| Box::pin(pool.failed()));
    let (source, index, _) = futures_util::future::select_all(failures).await;
    let model = running[index].plan.served.name.clone();
    ServeError::Spawn { model, source }
}

/// What the collection loop reads of one model: its processes and its admission.
struct Sources {
    processes: ProcessTable,
    pipeline: Arc<Pipeline>,
}

impl CollectorSources for Sources {
    fn processes(&self) -> Vec<Process> {
        self.processes.processes()
    }

    fn admission(&self) -> AdmissionLevels {
        let admission = &self.pipeline.admission;
        AdmissionLevels {
            queued_pairs: admission.queued_pairs(),
            requests_in_flight: admission.requests_in_flight(),
        }
    }
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

/// What a model worker said at start (any worker's, were there none).
fn model_info(workers: &Started) -> &WorkerInfo {
    let model = workers.iter().find(|(kind, _)| *kind == WorkerKind::Model);
    &model.unwrap_or(&workers[0]).1
}

/// Tells the pipeline what the workers learned at start: the model's longest pair, and
/// the model workers' warm-up throughput, admission's first estimate.
fn learn_model(pipeline: &Pipeline, workers: &Started) {
    let warmup = workers
        .iter()
        .filter(|(kind, _)| *kind == WorkerKind::Model)
        .filter_map(|(_, info)| info.warmup_tokens_per_second)
        .reduce(f64::min);
    let info = model_info(workers);
    let takes_instruction = workers
        .iter()
        .any(|(kind, info)| *kind == WorkerKind::Tokenizer && info.takes_instruction);
    pipeline.learn_model(LearnedModel {
        max_length: info.max_length,
        default_activation: info.default_activation,
        takes_instruction,
        warmup_tokens_per_second: warmup,
    });
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

fn record_build(metrics: &Metrics, name: &str, info: &WorkerInfo) {
    metrics
        .build_info
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            model: name.to_string(),
            architecture: info.architecture.clone(),
            device: info.device.clone(),
            dtype: info.dtype.to_string(),
            kernels: info.kernels.clone(),
            template: info.template.clone(),
        })
        .set(1);
}

fn set_admission_limits(pipeline: &Pipeline) {
    let (metrics, admission) = (&pipeline.metrics, &pipeline.admission);
    metrics
        .queued_pairs_limit
        .set(admission.max_queued_pairs() as i64);
    metrics
        .requests_in_flight_limit
        .set(admission.max_requests() as i64);
}

fn pipeline_limits(config: &ServeConfig, plan: &ModelPlan) -> PipelineLimits {
    let (served, cost) = (&plan.served, plan.cost);
    let batching = &served.batching;
    let bytes = |size: u64| usize::try_from(size).unwrap_or(usize::MAX);
    PipelineLimits {
        scheduler: SchedulerLimits {
            max_batch_tokens: batching.max_batch_tokens,
            cost,
            max_batch_size: batching.max_batch_size,
            max_batch_delay: batching.max_batch_delay,
        },
        dispatch: DispatchLimits {
            batches_per_worker: batching.batches_per_worker,
            batch_timeout: served.workers.batch_timeout,
            no_worker_patience: served.workers.no_worker_patience,
        },
        max_concurrent_requests: config.server.max_concurrent_requests,
        max_text_bytes: bytes(config.server.max_text_bytes.as_u64()),
        max_text_bytes_in_flight: bytes(config.server.max_text_bytes_in_flight.as_u64()),
        tokenizer_workers: served.workers.tokenizer,
        activation: served.model.activation,
        long_documents: served.model.long_documents,
        max_chunks_per_doc: served.model.max_chunks_per_doc,
        chunk_overlap: served.model.chunk_overlap,
        max_queued_pairs: batching.max_queued_pairs,
    }
}

fn pool_plan(served: &ServedModel) -> PoolPlan {
    let workers = &served.workers;
    PoolPlan {
        tokenizers: workers.tokenizer,
        models: workers.model,
        respawn_backoff_initial: workers.respawn_backoff_initial,
        respawn_backoff_max: workers.respawn_backoff_max,
        max_start_failures: workers.max_start_failures,
    }
}
