//! The supervisor's Prometheus registry, served at `GET /metrics`.
//!
//! Names, types and meanings follow the seed document's metric list; this holds the
//! scheduler's share of it so far.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The media type of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a per-API-method metric: `grpc_infer`, `http_rerank`, ...
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
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

/// Every metric the supervisor records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Padding tokens computed: pairs x longest pair, less the real tokens.
    pub padded_tokens: Counter,
    /// Real tokens of the pairs sent to model workers.
    pub total_tokens: Counter,
    /// Pairs waiting in the scheduler for a batch.
    pub batch_queue_size: Gauge,
    /// Time the scheduler took to decide one batch.
    pub scheduler_latency: Histogram,
    /// Time each pair waited in the scheduler before its batch went to a model worker.
    pub model_queue_wait_latency: Histogram,
    /// Requests answered with scores, by API method.
    pub request_count: Family<MethodLabels, Counter>,
    /// Workers started again after one exited.
    pub worker_restarts: Family<PoolLabels, Counter>,
    /// 1 while a worker is running and ready, 0 while it is down.
    pub worker_up: Family<WorkerLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let padded_tokens = Counter::default();
        registry.register(
            "padded_tokens",
            "Padding tokens computed (pairs x longest pair, less real tokens)",
            padded_tokens.clone(),
        );
        let total_tokens = Counter::default();
        registry.register(
            "total_tokens",
            "Real tokens of the pairs sent to model workers",
            total_tokens.clone(),
        );
        let batch_queue_size = Gauge::default();
        registry.register(
            "batch_queue_size",
            "Pairs waiting in the scheduler for a batch",
            batch_queue_size.clone(),
        );
        // 1 µs to ~0.5 s: deciding a batch takes microseconds unless something is wrong.
        let scheduler_latency = Histogram::new(exponential_buckets(1e-6, 4.0, 10));
        registry.register(
            "scheduler_latency_seconds",
            "Time the scheduler took to decide one batch",
            scheduler_latency.clone(),
        );
        // 100 µs to ~100 s: from an idle server to a deep queue.
        let model_queue_wait_latency = Histogram::new(exponential_buckets(1e-4, 4.0, 11));
        registry.register(
            "model_queue_wait_latency_seconds",
            "Time a pair waited in the scheduler before a model worker took its batch",
            model_queue_wait_latency.clone(),
        );
        let request_count = Family::<MethodLabels, Counter>::default();
        registry.register(
            "request_count",
            "Requests answered with scores, by API method",
            request_count.clone(),
        );
        let worker_restarts = Family::<PoolLabels, Counter>::default();
        registry.register(
            "worker_restarts",
            "Workers started again after one exited",
            worker_restarts.clone(),
        );
        let worker_up = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_up",
            "1 while a worker is running and ready, 0 while it is down",
            worker_up.clone(),
        );
        Self {
            registry,
            request_count,
            worker_restarts,
            worker_up,
            padded_tokens,
            total_tokens,
            batch_queue_size,
            scheduler_latency,
            model_queue_wait_latency,
        }
    }

    /// Counts one answered request of `method`.
    pub fn count_request(&self, method: &'static str) {
        self.request_count
            .get_or_create(&MethodLabels { method })
            .inc();
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

    #[test]
    fn counters_render_with_their_total_suffix() {
        let metrics = Metrics::new();
        metrics.padded_tokens.inc_by(7);
        metrics.total_tokens.inc_by(70);
        metrics.scheduler_latency.observe(3e-6);
        let text = metrics.render();
        assert!(text.contains("padded_tokens_total 7"), "{text}");
        assert!(text.contains("total_tokens_total 70"), "{text}");
        assert!(text.contains("scheduler_latency_seconds_count 1"), "{text}");
        assert!(text.contains("# TYPE batch_queue_size gauge"), "{text}");
    }
}
