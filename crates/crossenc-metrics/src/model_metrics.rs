//! What one model records: its series of every per-model family ([`ModelMetrics`]), the
//! `model` label, and the windows the collection loop reads of its batches and workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossenc_ipc::{StatsReport, WorkerKind};
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::recorder::StageTimes;
use crate::registry::{Buckets, ErrorLabels, FloatGauge, MethodLabels, PoolLabels, WorkerLabels};

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
pub(crate) type ByModel<M, C = fn() -> M> = Family<ModelLabel, M, C>;
pub(crate) type ByModelAnd<L, M, C = fn() -> M> = Family<(ModelLabel, L), M, C>;

/// One model's share of a family labelled by model and `L`: what the model's own
/// parts record into, without naming the model at each call.
pub struct Scoped<L, M, C = fn() -> M> {
    pub(crate) family: ByModelAnd<L, M, C>,
    pub(crate) model: ModelLabel,
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
    pub(crate) workers: Mutex<HashMap<(WorkerKind, u32), Arc<WorkerWindow>>>,
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
