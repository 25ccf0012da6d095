//! The Prometheus registry: every metric of the [`CATALOGUE`] registered once, under
//! its families; each model records into its share through a [`ModelMetrics`].

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Duration;

use crossenc_ipc::WorkerKind;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};

use crate::catalogue::*;
use crate::model_metrics::{BatchWindow, ByModel, ByModelAnd, ModelLabel, ModelMetrics, Scoped};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_metrics::BatchFigures;
    use crossenc_ipc::StatsReport;

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
