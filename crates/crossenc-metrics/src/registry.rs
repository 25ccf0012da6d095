//! The Prometheus registry: every metric of the [`CATALOGUE`] registered once, the
//! windows the collection loop reads, and what the request path, the dispatch task and
//! the workers' stats readers record into it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossenc_ipc::{StatsReport, WorkerKind};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

use crate::catalogue::*;
use crate::recorder::StageTimes;

/// The media type of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A gauge holding a fraction or a rate.
pub type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Labels of a per-API-method metric: `grpc_infer`, `http_rerank`, ...
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

/// Labels of a failed request: its method and a gRPC-style code word.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub method: &'static str,
    pub code: &'static str,
}

/// Labels of a per-pool metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub worker_type: &'static str,
}

/// Labels of a per-worker metric: bounded by the configured worker counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker_id: u32,
    pub worker_type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub gpu: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub model: String,
    pub architecture: String,
    pub device: String,
    pub dtype: String,
    /// The products' kernels, chosen by timing at load.
    pub kernels: String,
    /// A decoder reranker's prompt template; empty for an encoder.
    pub template: String,
}

/// Histogram buckets: `start` doubling `count` times.
#[derive(Debug, Clone, Copy)]
pub struct Buckets {
    start: f64,
    count: u16,
}

impl Buckets {
    /// Requests: 1 ms to ~65 s.
    const REQUEST: Buckets = Buckets {
        start: 1e-3,
        count: 17,
    };
    /// Stages and queue waits: 100 µs to ~100 s.
    const STAGE: Buckets = Buckets {
        start: 1e-4,
        count: 21,
    };
    /// IPC, codecs and the scheduler: 2 µs to ~1 s.
    const FAST: Buckets = Buckets {
        start: 2e-6,
        count: 20,
    };
    /// Overheads: 10 µs to ~80 s.
    const OVERHEAD: Buckets = Buckets {
        start: 1e-5,
        count: 24,
    };
    /// Pairs per batch: 1 to 1024.
    const PAIRS: Buckets = Buckets {
        start: 1.0,
        count: 11,
    };

    fn histogram(self) -> Histogram {
        Histogram::new(exponential_buckets(self.start, 2.0, self.count))
    }
}

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        self.histogram()
    }
}

/// Batches sent since the collection loop last looked, for the per-interval gauges.
#[derive(Debug, Default)]
pub struct BatchWindow {
    pairs: AtomicU64,
    real_tokens: AtomicU64,
    computed_tokens: AtomicU64,
    longest: AtomicU64,
}

/// What [`BatchWindow::take`] returns.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchFigures {
    pub pairs: u64,
    pub real_tokens: u64,
    pub computed_tokens: u64,
    pub longest: u64,
}

impl BatchWindow {
    fn add(&self, pairs: u64, real: u64, computed: u64, longest: u64) {
        self.pairs.fetch_add(pairs, Ordering::Relaxed);
        self.real_tokens.fetch_add(real, Ordering::Relaxed);
        self.computed_tokens.fetch_add(computed, Ordering::Relaxed);
        self.longest.fetch_max(longest, Ordering::Relaxed);
    }

    /// The figures since the last call, and a fresh start.
    pub fn take(&self) -> BatchFigures {
        BatchFigures {
            pairs: self.pairs.swap(0, Ordering::Relaxed),
            real_tokens: self.real_tokens.swap(0, Ordering::Relaxed),
            computed_tokens: self.computed_tokens.swap(0, Ordering::Relaxed),
            longest: self.longest.swap(0, Ordering::Relaxed),
        }
    }
}

/// One worker's jobs since the collection loop last looked.
#[derive(Debug, Default)]
pub struct WorkerWindow {
    jobs: AtomicU64,
    pairs: AtomicU64,
    busy_nanos: AtomicU64,
}

impl WorkerWindow {
    /// (jobs, pairs, time busy) since the last call.
    pub fn take(&self) -> (u64, u64, Duration) {
        (
            self.jobs.swap(0, Ordering::Relaxed),
            self.pairs.swap(0, Ordering::Relaxed),
            Duration::from_nanos(self.busy_nanos.swap(0, Ordering::Relaxed)),
        )
    }
}

/// The `model` label: the served model's name, or empty for what no model owns (the
/// supervisor's own memory, a request refused before its model was known).
#[derive(Debug, Clone, Hash, PartialEq, Eq, Default)]
pub struct ModelLabel(Arc<str>);

impl ModelLabel {
    pub fn new(name: &str) -> Self {
        Self(Arc::from(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl EncodeLabelSet for ModelLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("model", self.as_str()).encode(encoder.encode_label())
    }
}

/// A family of per-model metrics: one series per model, or per model and `L`.
type ByModel<M, C = fn() -> M> = Family<ModelLabel, M, C>;
type ByModelAnd<L, M, C = fn() -> M> = Family<(ModelLabel, L), M, C>;

/// One model's share of a family labelled by model and `L`: what the model's own
/// parts record into, without naming the model at each call.
pub struct Scoped<L, M, C = fn() -> M> {
    family: ByModelAnd<L, M, C>,
    model: ModelLabel,
}

impl<L, M, C> Scoped<L, M, C>
where
    L: Clone + std::hash::Hash + Eq,
    C: MetricConstructor<M>,
{
    pub fn get_or_create(&self, labels: &L) -> impl std::ops::Deref<Target = M> + '_ {
        self.family
            .get_or_create(&(self.model.clone(), labels.clone()))
    }

    pub fn remove(&self, labels: &L) -> bool {
        self.family.remove(&(self.model.clone(), labels.clone()))
    }
}

/// Every metric the supervisor records: the families, and the process-wide metrics.
/// Each model records through its [`ModelMetrics`].
pub struct Metrics {
    registry: Registry,
    request_count: ByModelAnd<MethodLabels, Counter>,
    request_errors: ByModelAnd<ErrorLabels, Counter>,
    request_latency: ByModelAnd<MethodLabels, Histogram, Buckets>,
    pub auth_failures: Family<MethodLabels, Counter>,
    padded_tokens: ByModel<Counter>,
    total_tokens: ByModel<Counter>,
    worker_request_count: ByModelAnd<WorkerLabels, Counter>,
    worker_restarts: ByModelAnd<PoolLabels, Counter>,
    poison_search_runs: ByModel<Counter>,
    worker_stats_dropped: ByModelAnd<PoolLabels, Counter>,
    tokenization_latency: ByModel<Histogram, Buckets>,
    inference_latency: ByModel<Histogram, Buckets>,
    queue_wait_latency: ByModel<Histogram, Buckets>,
    tokenizer_queue_wait_latency: ByModel<Histogram, Buckets>,
    model_queue_wait_latency: ByModel<Histogram, Buckets>,
    mp_queue_send_latency: ByModel<Histogram, Buckets>,
    mp_queue_receive_latency: ByModel<Histogram, Buckets>,
    pub grpc_serialize_latency: Histogram,
    pub grpc_deserialize_latency: Histogram,
    scheduler_latency: ByModel<Histogram, Buckets>,
    overhead_latency: ByModel<Histogram, Buckets>,
    pipeline_overhead_latency: ByModel<Histogram, Buckets>,
    batch_size: ByModel<Histogram, Buckets>,
    pub gpu_memory_mb: Family<GpuLabels, FloatGauge>,
    pub gpu_memory_total_mb: Family<GpuLabels, FloatGauge>,
    pub gpu_utilization_pct: Family<GpuLabels, FloatGauge>,
    pub cpu_percent: FloatGauge,
    tokenizer_queue_size: ByModel<Gauge>,
    model_queue_size: ByModel<Gauge>,
    batch_queue_size: ByModel<Gauge>,
    queued_pairs: ByModel<Gauge>,
    queued_pairs_limit: ByModel<Gauge>,
    requests_in_flight: ByModel<Gauge>,
    requests_in_flight_limit: ByModel<Gauge>,
    padding_ratio: ByModel<FloatGauge>,
    max_seq_length: ByModel<Gauge>,
    avg_seq_length: ByModel<FloatGauge>,
    worker_latency_ms: ByModelAnd<WorkerLabels, FloatGauge>,
    worker_throughput_qps: ByModelAnd<WorkerLabels, FloatGauge>,
    tokenizer_throughput_qps: ByModel<FloatGauge>,
    inference_throughput_qps: ByModel<FloatGauge>,
    overall_throughput_qps: ByModel<FloatGauge>,
    worker_up: ByModelAnd<WorkerLabels, Gauge>,
    resident_memory: ByModelAnd<WorkerLabels, Gauge>,
    pub build_info: Family<BuildLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(false)
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers metrics under their catalogue entries.
struct Registrar {
    registry: Registry,
    gpu: bool,
}

impl Registrar {
    fn add<M: Metric + Clone>(&mut self, spec: MetricSpec, metric: M) -> M {
        if !spec.gpu_only || self.gpu {
            self.registry.register(spec.name, spec.help, metric.clone());
        }
        metric
    }

    fn histogram(&mut self, spec: MetricSpec, buckets: Buckets) -> Histogram {
        self.add(spec, buckets.histogram())
    }

    fn histograms<S>(&mut self, spec: MetricSpec, buckets: Buckets) -> Family<S, Histogram, Buckets>
    where
        S: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    {
        self.add(spec, Family::new_with_constructor(buckets))
    }
}

impl Metrics {
    /// Registers every metric of the [`CATALOGUE`]; the GPU gauges only with `gpu`.
    pub fn new(gpu: bool) -> Self {
        let mut r = Registrar {
            registry: Registry::default(),
            gpu,
        };
        Self {
            request_count: r.add(REQUEST_COUNT, Family::default()),
            request_errors: r.add(REQUEST_ERRORS, Family::default()),
            auth_failures: r.add(AUTH_FAILURES, Family::default()),
            padded_tokens: r.add(PADDED_TOKENS, Family::default()),
            total_tokens: r.add(TOTAL_TOKENS, Family::default()),
            worker_request_count: r.add(WORKER_REQUEST_COUNT, Family::default()),
            worker_restarts: r.add(WORKER_RESTARTS, Family::default()),
            poison_search_runs: r.add(POISON_SEARCH_RUNS, Family::default()),
            worker_stats_dropped: r.add(WORKER_STATS_DROPPED, Family::default()),
            request_latency: r.histograms(REQUEST_LATENCY, Buckets::REQUEST),
            tokenization_latency: r.histograms(TOKENIZATION_LATENCY, Buckets::STAGE),
            inference_latency: r.histograms(INFERENCE_LATENCY, Buckets::STAGE),
            queue_wait_latency: r.histograms(QUEUE_WAIT_LATENCY, Buckets::STAGE),
            tokenizer_queue_wait_latency: r
                .histograms(TOKENIZER_QUEUE_WAIT_LATENCY, Buckets::STAGE),
            model_queue_wait_latency: r.histograms(MODEL_QUEUE_WAIT_LATENCY, Buckets::STAGE),
            mp_queue_send_latency: r.histograms(MP_QUEUE_SEND_LATENCY, Buckets::FAST),
            mp_queue_receive_latency: r.histograms(MP_QUEUE_RECEIVE_LATENCY, Buckets::FAST),
            grpc_serialize_latency: r.histogram(GRPC_SERIALIZE_LATENCY, Buckets::FAST),
            grpc_deserialize_latency: r.histogram(GRPC_DESERIALIZE_LATENCY, Buckets::FAST),
            scheduler_latency: r.histograms(SCHEDULER_LATENCY, Buckets::FAST),
            overhead_latency: r.histograms(OVERHEAD_LATENCY, Buckets::OVERHEAD),
            pipeline_overhead_latency: r.histograms(PIPELINE_OVERHEAD_LATENCY, Buckets::OVERHEAD),
            batch_size: r.histograms(BATCH_SIZE, Buckets::PAIRS),
            gpu_memory_mb: r.add(GPU_MEMORY, Family::default()),
            gpu_memory_total_mb: r.add(GPU_MEMORY_TOTAL, Family::default()),
            gpu_utilization_pct: r.add(GPU_UTILIZATION, Family::default()),
            cpu_percent: r.add(CPU_PERCENT, FloatGauge::default()),
            tokenizer_queue_size: r.add(TOKENIZER_QUEUE_SIZE, Family::default()),
            model_queue_size: r.add(MODEL_QUEUE_SIZE, Family::default()),
            batch_queue_size: r.add(BATCH_QUEUE_SIZE, Family::default()),
            queued_pairs: r.add(QUEUED_PAIRS, Family::default()),
            queued_pairs_limit: r.add(QUEUED_PAIRS_LIMIT, Family::default()),
            requests_in_flight: r.add(REQUESTS_IN_FLIGHT, Family::default()),
            requests_in_flight_limit: r.add(REQUESTS_IN_FLIGHT_LIMIT, Family::default()),
            padding_ratio: r.add(PADDING_RATIO, Family::default()),
            max_seq_length: r.add(MAX_SEQ_LENGTH, Family::default()),
            avg_seq_length: r.add(AVG_SEQ_LENGTH, Family::default()),
            worker_latency_ms: r.add(WORKER_LATENCY, Family::default()),
            worker_throughput_qps: r.add(WORKER_THROUGHPUT, Family::default()),
            tokenizer_throughput_qps: r.add(TOKENIZER_THROUGHPUT, Family::default()),
            inference_throughput_qps: r.add(INFERENCE_THROUGHPUT, Family::default()),
            overall_throughput_qps: r.add(OVERALL_THROUGHPUT, Family::default()),
            worker_up: r.add(WORKER_UP, Family::default()),
            resident_memory: r.add(RESIDENT_MEMORY, Family::default()),
            build_info: r.add(BUILD_INFO, Family::default()),
            registry: r.registry,
        }
    }

    /// What model `name` records into: its series of every per-model family.
    pub fn model(&self, name: &str) -> ModelMetrics {
        let model = ModelLabel::new(name);
        let one = |family: &ByModel<Counter>| family.get_or_create(&model).clone();
        let histogram = |family: &ByModel<Histogram, Buckets>| family.get_or_create(&model).clone();
        let gauge = |family: &ByModel<Gauge>| family.get_or_create(&model).clone();
        let float = |family: &ByModel<FloatGauge>| family.get_or_create(&model).clone();
        let metrics = ModelMetrics {
            request_count: self.scoped(&self.request_count, &model),
            request_errors: self.scoped(&self.request_errors, &model),
            request_latency: self.scoped(&self.request_latency, &model),
            padded_tokens: one(&self.padded_tokens),
            total_tokens: one(&self.total_tokens),
            worker_request_count: self.scoped(&self.worker_request_count, &model),
            worker_restarts: self.scoped(&self.worker_restarts, &model),
            poison_search_runs: one(&self.poison_search_runs),
            worker_stats_dropped: self.scoped(&self.worker_stats_dropped, &model),
            tokenization_latency: histogram(&self.tokenization_latency),
            inference_latency: histogram(&self.inference_latency),
            queue_wait_latency: histogram(&self.queue_wait_latency),
            tokenizer_queue_wait_latency: histogram(&self.tokenizer_queue_wait_latency),
            model_queue_wait_latency: histogram(&self.model_queue_wait_latency),
            mp_queue_send_latency: histogram(&self.mp_queue_send_latency),
            mp_queue_receive_latency: histogram(&self.mp_queue_receive_latency),
            scheduler_latency: histogram(&self.scheduler_latency),
            overhead_latency: histogram(&self.overhead_latency),
            pipeline_overhead_latency: histogram(&self.pipeline_overhead_latency),
            batch_size: histogram(&self.batch_size),
            tokenizer_queue_size: gauge(&self.tokenizer_queue_size),
            model_queue_size: gauge(&self.model_queue_size),
            batch_queue_size: gauge(&self.batch_queue_size),
            queued_pairs: gauge(&self.queued_pairs),
            queued_pairs_limit: gauge(&self.queued_pairs_limit),
            requests_in_flight: gauge(&self.requests_in_flight),
            requests_in_flight_limit: gauge(&self.requests_in_flight_limit),
            padding_ratio: float(&self.padding_ratio),
            max_seq_length: gauge(&self.max_seq_length),
            avg_seq_length: float(&self.avg_seq_length),
            worker_latency_ms: self.scoped(&self.worker_latency_ms, &model),
            worker_throughput_qps: self.scoped(&self.worker_throughput_qps, &model),
            tokenizer_throughput_qps: float(&self.tokenizer_throughput_qps),
            inference_throughput_qps: float(&self.inference_throughput_qps),
            overall_throughput_qps: float(&self.overall_throughput_qps),
            worker_up: self.scoped(&self.worker_up, &model),
            resident_memory: self.scoped(&self.resident_memory, &model),
            batches: BatchWindow::default(),
            finished_requests: AtomicU64::new(0),
            workers: Mutex::default(),
            model,
        };
        // Present at 0 from the start, so that increase() sees the first restart.
        for kind in [WorkerKind::Tokenizer, WorkerKind::Model] {
            let labels = PoolLabels {
                worker_type: kind.as_str(),
            };
            let _ = metrics.worker_restarts.get_or_create(&labels);
            let _ = metrics.worker_stats_dropped.get_or_create(&labels);
        }
        metrics
    }

    fn scoped<L: Clone, M, C: Clone>(
        &self,
        family: &ByModelAnd<L, M, C>,
        model: &ModelLabel,
    ) -> Scoped<L, M, C> {
        Scoped {
            family: family.clone(),
            model: model.clone(),
        }
    }

    /// Records a request refused before its model was known (an unknown model, an
    /// unreadable body): its series carry an empty `model`, so that no name a client
    /// sends becomes a label value.
    pub fn record_unrouted_request(
        &self,
        method: &'static str,
        latency: Duration,
        outcome: Result<(), &'static str>,
    ) {
        let model = ModelLabel::default();
        let labels = (model.clone(), MethodLabels { method });
        self.request_count.get_or_create(&labels).inc();
        self.request_latency
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
        if let Err(code) = outcome {
            self.request_errors
                .get_or_create(&(model, ErrorLabels { method, code }))
                .inc();
        }
    }

    /// Sets the supervisor's own resident memory (it belongs to no model).
    pub fn set_supervisor_memory(&self, bytes: i64) {
        let labels = WorkerLabels {
            worker_id: 0,
            worker_type: "supervisor",
        };
        self.resident_memory
            .get_or_create(&(ModelLabel::default(), labels))
            .set(bytes);
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// What one model's parts (its pipeline, its workers, the collection loop) record: its
/// series of every per-model family, and the windows the collection loop reads.
pub struct ModelMetrics {
    pub model: ModelLabel,
    pub request_count: Scoped<MethodLabels, Counter>,
    pub request_errors: Scoped<ErrorLabels, Counter>,
    pub request_latency: Scoped<MethodLabels, Histogram, Buckets>,
    pub padded_tokens: Counter,
    pub total_tokens: Counter,
    pub worker_request_count: Scoped<WorkerLabels, Counter>,
    pub worker_restarts: Scoped<PoolLabels, Counter>,
    pub poison_search_runs: Counter,
    pub worker_stats_dropped: Scoped<PoolLabels, Counter>,
    pub tokenization_latency: Histogram,
    pub inference_latency: Histogram,
    pub queue_wait_latency: Histogram,
    pub tokenizer_queue_wait_latency: Histogram,
    pub model_queue_wait_latency: Histogram,
    pub mp_queue_send_latency: Histogram,
    pub mp_queue_receive_latency: Histogram,
    pub scheduler_latency: Histogram,
    pub overhead_latency: Histogram,
    pub pipeline_overhead_latency: Histogram,
    pub batch_size: Histogram,
    pub tokenizer_queue_size: Gauge,
    pub model_queue_size: Gauge,
    pub batch_queue_size: Gauge,
    pub queued_pairs: Gauge,
    pub queued_pairs_limit: Gauge,
    pub requests_in_flight: Gauge,
    pub requests_in_flight_limit: Gauge,
    pub padding_ratio: FloatGauge,
    pub max_seq_length: Gauge,
    pub avg_seq_length: FloatGauge,
    pub worker_latency_ms: Scoped<WorkerLabels, FloatGauge>,
    pub worker_throughput_qps: Scoped<WorkerLabels, FloatGauge>,
    pub tokenizer_throughput_qps: FloatGauge,
    pub inference_throughput_qps: FloatGauge,
    pub overall_throughput_qps: FloatGauge,
    pub worker_up: Scoped<WorkerLabels, Gauge>,
    pub resident_memory: Scoped<WorkerLabels, Gauge>,
    /// Batches since the collection loop last looked.
    pub batches: BatchWindow,
    /// Requests finished since start, for the per-interval request rate.
    pub finished_requests: AtomicU64,
    workers: Mutex<HashMap<(WorkerKind, u32), Arc<WorkerWindow>>>,
}

impl std::fmt::Debug for ModelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelMetrics")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl ModelMetrics {
    /// Records one batch sent to a model worker.
    pub fn record_batch(
        &self,
        pairs: usize,
        real_tokens: usize,
        computed_tokens: usize,
        longest: usize,
    ) {
        self.total_tokens.inc_by(real_tokens as u64);
        self.padded_tokens
            .inc_by(computed_tokens.saturating_sub(real_tokens) as u64);
        self.batch_size.observe(pairs as f64);
        self.batches.add(
            pairs as u64,
            real_tokens as u64,
            computed_tokens as u64,
            longest as u64,
        );
    }

    /// The window the stats reader of worker `id` of `kind` adds to.
    pub fn worker_window(&self, kind: WorkerKind, id: u32) -> Arc<WorkerWindow> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(workers.entry((kind, id)).or_default())
    }

    /// Every worker's window, for the collection loop.
    pub fn worker_windows(&self) -> Vec<((WorkerKind, u32), Arc<WorkerWindow>)> {
        let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.iter().map(|(k, w)| (*k, Arc::clone(w))).collect()
    }

    /// Folds in one job a worker reported on its stats channel.
    pub fn record_worker_report(
        &self,
        kind: WorkerKind,
        id: u32,
        window: &WorkerWindow,
        report: &StatsReport,
    ) {
        let labels = WorkerLabels {
            worker_id: id,
            worker_type: kind.as_str(),
        };
        self.worker_request_count
            .get_or_create(&labels)
            .inc_by(u64::from(report.pairs));
        let compute = report.compute.as_secs_f64();
        match kind {
            WorkerKind::Tokenizer => self.tokenization_latency.observe(compute),
            WorkerKind::Model => self.inference_latency.observe(compute),
        }
        self.mp_queue_send_latency
            .observe(report.answer_send.as_secs_f64());
        if report.dropped > 0 {
            self.worker_stats_dropped
                .get_or_create(&PoolLabels {
                    worker_type: kind.as_str(),
                })
                .inc_by(report.dropped);
        }
        window.jobs.fetch_add(1, Ordering::Relaxed);
        window
            .pairs
            .fetch_add(u64::from(report.pairs), Ordering::Relaxed);
        window
            .busy_nanos
            .fetch_add(report.compute.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Records a finished request: its latency, its outcome and, for one answered
    /// with scores, how its time divides into stages.
    pub fn record_request(
        &self,
        method: &'static str,
        latency: Duration,
        outcome: Result<Option<StageTimes>, &'static str>,
    ) {
        let labels = MethodLabels { method };
        self.request_count.get_or_create(&labels).inc();
        self.finished_requests.fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        self.request_latency.get_or_create(&labels).observe(seconds);
        match outcome {
            Err(code) => {
                self.request_errors
                    .get_or_create(&ErrorLabels { method, code })
                    .inc();
            }
            Ok(Some(stages)) => self.record_stages(seconds, &stages),
            Ok(None) => {}
        }
    }

    fn record_stages(&self, latency: f64, stages: &StageTimes) {
        let compute = (stages.tokenization + stages.inference).as_secs_f64();
        let waits = (stages.tokenizer_wait + stages.model_wait).as_secs_f64();
        self.queue_wait_latency.observe(waits);
        self.overhead_latency.observe((latency - compute).max(0.0));
        self.pipeline_overhead_latency
            .observe((latency - compute - waits).max(0.0));
    }

    /// Marks a worker up or down.
    pub fn set_worker_up(&self, kind: WorkerKind, id: u32, up: bool) {
        self.worker_up
            .get_or_create(&WorkerLabels {
                worker_id: id,
                worker_type: kind.as_str(),
            })
            .set(i64::from(up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch_every_family(root: &Metrics) {
        let metrics = root.model("m");
        let worker = WorkerLabels {
            worker_id: 0,
            worker_type: "model",
        };
        let window = metrics.worker_window(WorkerKind::Model, 0);
        metrics.record_worker_report(WorkerKind::Model, 0, &window, &StatsReport::default());
        metrics.record_request("grpc_infer", Duration::from_millis(3), Err("internal"));
        root.set_supervisor_memory(1);
        root.auth_failures
            .get_or_create(&MethodLabels {
                method: "grpc_infer",
            })
            .inc();
        metrics
            .worker_restarts
            .get_or_create(&PoolLabels {
                worker_type: "model",
            })
            .inc();
        metrics
            .worker_stats_dropped
            .get_or_create(&PoolLabels {
                worker_type: "model",
            })
            .inc();
        for family in [
            &root.gpu_memory_mb,
            &root.gpu_memory_total_mb,
            &root.gpu_utilization_pct,
        ] {
            family.get_or_create(&GpuLabels { gpu: 0 }).set(1.0);
        }
        metrics.worker_latency_ms.get_or_create(&worker).set(1.0);
        metrics
            .worker_throughput_qps
            .get_or_create(&worker)
            .set(1.0);
        metrics.set_worker_up(WorkerKind::Model, 0, true);
        metrics.resident_memory.get_or_create(&worker).set(1);
        root.build_info
            .get_or_create(&BuildLabels {
                version: "0",
                model: "m".into(),
                architecture: "bert".into(),
                device: "cpu".into(),
                dtype: "f32".into(),
                kernels: "gemm-f32:gemm".into(),
                template: String::new(),
            })
            .set(1);
    }

    #[test]
    fn every_catalogue_entry_renders_with_its_type_and_labels() {
        let metrics = Metrics::new(true);
        touch_every_family(&metrics);
        let text = metrics.render();
        for spec in CATALOGUE {
            let type_line = format!("# TYPE {} {}", spec.name, spec.kind.as_str());
            assert!(
                text.contains(&type_line),
                "missing {type_line:?} in\n{text}"
            );
            let sample = text
                .lines()
                .find(|l| l.starts_with(&spec.sample_name()) && !l.starts_with('#'))
                .unwrap_or_else(|| panic!("no sample of {}", spec.name));
            for label in spec.labels {
                assert!(
                    sample.contains(&format!("{label}=")),
                    "{sample} lacks {label}"
                );
            }
            // And the other way: every label on /metrics is in the catalogue (so that
            // `crossenc metrics` shows it), a histogram's `le` aside.
            for label in label_names(sample) {
                assert!(
                    label == "le" || spec.labels.contains(&label),
                    "{} has label {label}, which the catalogue does not list",
                    spec.name
                );
            }
        }
    }

    /// The label names of one sample line: `name{a="x",b="y"} 1` gives `a`, `b`.
    fn label_names(sample: &str) -> Vec<&str> {
        let Some((_, rest)) = sample.split_once('{') else {
            return Vec::new();
        };
        let Some((labels, _)) = rest.rsplit_once('}') else {
            return Vec::new();
        };
        labels
            .split("\",")
            .filter_map(|pair| pair.split_once('=').map(|(name, _)| name))
            .collect()
    }

    #[test]
    fn gpu_gauges_are_absent_without_a_gpu() {
        let metrics = Metrics::new(false);
        touch_every_family(&metrics);
        let text = metrics.render();
        assert!(!text.contains("gpu_"), "{text}");
        assert!(text.contains("# TYPE cpu_percent gauge"));
    }

    #[test]
    fn two_models_record_apart_and_unrouted_requests_name_none() {
        let root = Metrics::new(false);
        let (small, large) = (root.model("small"), root.model("large"));
        small.record_request("http_rerank", Duration::from_millis(3), Ok(None));
        large.record_request("http_rerank", Duration::from_millis(3), Ok(None));
        large.record_request("http_rerank", Duration::from_millis(3), Ok(None));
        root.record_unrouted_request("http_rerank", Duration::from_millis(1), Err("not_found"));
        let text = root.render();
        for line in [
            r#"request_count_total{model="small",method="http_rerank"} 1"#,
            r#"request_count_total{model="large",method="http_rerank"} 2"#,
            r#"request_count_total{model="",method="http_rerank"} 1"#,
            r#"request_errors_total{model="",method="http_rerank",code="not_found"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        // One TYPE line per family, however many models: Prometheus refuses repeats.
        assert_eq!(text.matches("# TYPE request_count counter").count(), 1);
    }

    #[test]
    fn the_batch_window_resets_when_taken() {
        let root = Metrics::new(false);
        let metrics = root.model("m");
        metrics.record_batch(4, 100, 120, 30);
        metrics.record_batch(2, 50, 50, 25);
        assert_eq!(
            metrics.batches.take(),
            BatchFigures {
                pairs: 6,
                real_tokens: 150,
                computed_tokens: 170,
                longest: 30
            }
        );
        assert_eq!(metrics.batches.take(), BatchFigures::default());
        assert!(root
            .render()
            .contains("padded_tokens_total{model=\"m\"} 20"));
    }
}
