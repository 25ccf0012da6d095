//! The Prometheus registry: every metric of the [`CATALOGUE`] registered once, the
//! windows the collection loop reads, and what the request path, the dispatch task and
//! the workers' stats readers record into it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossenc_ipc::{StatsReport, WorkerKind};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
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

/// Every metric the supervisor records.
pub struct Metrics {
    registry: Registry,
    pub request_count: Family<MethodLabels, Counter>,
    pub request_errors: Family<ErrorLabels, Counter>,
    pub auth_failures: Family<MethodLabels, Counter>,
    pub padded_tokens: Counter,
    pub total_tokens: Counter,
    pub worker_request_count: Family<WorkerLabels, Counter>,
    pub worker_restarts: Family<PoolLabels, Counter>,
    pub poison_search_runs: Counter,
    pub worker_stats_dropped: Family<PoolLabels, Counter>,
    pub request_latency: Family<MethodLabels, Histogram, Buckets>,
    pub tokenization_latency: Histogram,
    pub inference_latency: Histogram,
    pub queue_wait_latency: Histogram,
    pub tokenizer_queue_wait_latency: Histogram,
    pub model_queue_wait_latency: Histogram,
    pub mp_queue_send_latency: Histogram,
    pub mp_queue_receive_latency: Histogram,
    pub grpc_serialize_latency: Histogram,
    pub grpc_deserialize_latency: Histogram,
    pub scheduler_latency: Histogram,
    pub overhead_latency: Histogram,
    pub pipeline_overhead_latency: Histogram,
    pub batch_size: Histogram,
    pub gpu_memory_mb: Family<GpuLabels, FloatGauge>,
    pub gpu_memory_total_mb: Family<GpuLabels, FloatGauge>,
    pub gpu_utilization_pct: Family<GpuLabels, FloatGauge>,
    pub cpu_percent: FloatGauge,
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
    pub worker_latency_ms: Family<WorkerLabels, FloatGauge>,
    pub worker_throughput_qps: Family<WorkerLabels, FloatGauge>,
    pub tokenizer_throughput_qps: FloatGauge,
    pub inference_throughput_qps: FloatGauge,
    pub overall_throughput_qps: FloatGauge,
    pub worker_up: Family<WorkerLabels, Gauge>,
    pub resident_memory: Family<WorkerLabels, Gauge>,
    pub build_info: Family<BuildLabels, Gauge>,
    /// Batches since the collection loop last looked.
    pub batches: BatchWindow,
    /// Requests finished since start, for the per-interval request rate.
    pub finished_requests: AtomicU64,
    workers: Mutex<HashMap<(WorkerKind, u32), Arc<WorkerWindow>>>,
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
}

impl Metrics {
    /// Registers every metric of the [`CATALOGUE`]; the GPU gauges only with `gpu`.
    pub fn new(gpu: bool) -> Self {
        let mut r = Registrar {
            registry: Registry::default(),
            gpu,
        };
        let metrics = Self {
            request_count: r.add(REQUEST_COUNT, Family::default()),
            request_errors: r.add(REQUEST_ERRORS, Family::default()),
            auth_failures: r.add(AUTH_FAILURES, Family::default()),
            padded_tokens: r.add(PADDED_TOKENS, Counter::default()),
            total_tokens: r.add(TOTAL_TOKENS, Counter::default()),
            worker_request_count: r.add(WORKER_REQUEST_COUNT, Family::default()),
            worker_restarts: r.add(WORKER_RESTARTS, Family::default()),
            poison_search_runs: r.add(POISON_SEARCH_RUNS, Counter::default()),
            worker_stats_dropped: r.add(WORKER_STATS_DROPPED, Family::default()),
            request_latency: r.add(
                REQUEST_LATENCY,
                Family::new_with_constructor(Buckets::REQUEST),
            ),
            tokenization_latency: r.histogram(TOKENIZATION_LATENCY, Buckets::STAGE),
            inference_latency: r.histogram(INFERENCE_LATENCY, Buckets::STAGE),
            queue_wait_latency: r.histogram(QUEUE_WAIT_LATENCY, Buckets::STAGE),
            tokenizer_queue_wait_latency: r.histogram(TOKENIZER_QUEUE_WAIT_LATENCY, Buckets::STAGE),
            model_queue_wait_latency: r.histogram(MODEL_QUEUE_WAIT_LATENCY, Buckets::STAGE),
            mp_queue_send_latency: r.histogram(MP_QUEUE_SEND_LATENCY, Buckets::FAST),
            mp_queue_receive_latency: r.histogram(MP_QUEUE_RECEIVE_LATENCY, Buckets::FAST),
            grpc_serialize_latency: r.histogram(GRPC_SERIALIZE_LATENCY, Buckets::FAST),
            grpc_deserialize_latency: r.histogram(GRPC_DESERIALIZE_LATENCY, Buckets::FAST),
            scheduler_latency: r.histogram(SCHEDULER_LATENCY, Buckets::FAST),
            overhead_latency: r.histogram(OVERHEAD_LATENCY, Buckets::OVERHEAD),
            pipeline_overhead_latency: r.histogram(PIPELINE_OVERHEAD_LATENCY, Buckets::OVERHEAD),
            batch_size: r.histogram(BATCH_SIZE, Buckets::PAIRS),
            gpu_memory_mb: r.add(GPU_MEMORY, Family::default()),
            gpu_memory_total_mb: r.add(GPU_MEMORY_TOTAL, Family::default()),
            gpu_utilization_pct: r.add(GPU_UTILIZATION, Family::default()),
            cpu_percent: r.add(CPU_PERCENT, FloatGauge::default()),
            tokenizer_queue_size: r.add(TOKENIZER_QUEUE_SIZE, Gauge::default()),
            model_queue_size: r.add(MODEL_QUEUE_SIZE, Gauge::default()),
            batch_queue_size: r.add(BATCH_QUEUE_SIZE, Gauge::default()),
            queued_pairs: r.add(QUEUED_PAIRS, Gauge::default()),
            queued_pairs_limit: r.add(QUEUED_PAIRS_LIMIT, Gauge::default()),
            requests_in_flight: r.add(REQUESTS_IN_FLIGHT, Gauge::default()),
            requests_in_flight_limit: r.add(REQUESTS_IN_FLIGHT_LIMIT, Gauge::default()),
            padding_ratio: r.add(PADDING_RATIO, FloatGauge::default()),
            max_seq_length: r.add(MAX_SEQ_LENGTH, Gauge::default()),
            avg_seq_length: r.add(AVG_SEQ_LENGTH, FloatGauge::default()),
            worker_latency_ms: r.add(WORKER_LATENCY, Family::default()),
            worker_throughput_qps: r.add(WORKER_THROUGHPUT, Family::default()),
            tokenizer_throughput_qps: r.add(TOKENIZER_THROUGHPUT, FloatGauge::default()),
            inference_throughput_qps: r.add(INFERENCE_THROUGHPUT, FloatGauge::default()),
            overall_throughput_qps: r.add(OVERALL_THROUGHPUT, FloatGauge::default()),
            worker_up: r.add(WORKER_UP, Family::default()),
            resident_memory: r.add(RESIDENT_MEMORY, Family::default()),
            build_info: r.add(BUILD_INFO, Family::default()),
            batches: BatchWindow::default(),
            finished_requests: AtomicU64::new(0),
            workers: Mutex::default(),
            registry: r.registry,
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

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch_every_family(metrics: &Metrics) {
        let worker = WorkerLabels {
            worker_id: 0,
            worker_type: "model",
        };
        let window = metrics.worker_window(WorkerKind::Model, 0);
        metrics.record_worker_report(WorkerKind::Model, 0, &window, &StatsReport::default());
        metrics.record_request("grpc_infer", Duration::from_millis(3), Err("internal"));
        metrics
            .auth_failures
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
            &metrics.gpu_memory_mb,
            &metrics.gpu_memory_total_mb,
            &metrics.gpu_utilization_pct,
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
        metrics
            .build_info
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
    fn the_batch_window_resets_when_taken() {
        let metrics = Metrics::new(false);
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
        assert!(metrics.render().contains("padded_tokens_total 20"));
    }
}
