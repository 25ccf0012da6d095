//! Timing one request from its arrival to its answer, and recording it even when its
//! handler is dropped unfinished.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::model_metrics::ModelMetrics;
use crate::registry::Metrics;

/// How a finished request's time was spent, on its slowest path: the tokenizer job
/// that finished last and the batch that completed it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    pub tokenization: Duration,
    pub tokenizer_wait: Duration,
    pub model_wait: Duration,
    pub inference: Duration,
}

/// Where a request's model is said once it is known, by whoever reads the request: the
/// recorder reads it whenever it records, a request dropped unfinished included.
#[derive(Clone, Default)]
pub struct RouteCell(Arc<OnceLock<Arc<ModelMetrics>>>);

impl RouteCell {
    /// The request is for this model (the first model said counts).
    pub fn set(&self, model: &Arc<ModelMetrics>) {
        let _ = self.0.set(Arc::clone(model));
    }
}

/// Records a request when it finishes, or as `cancelled` if it is dropped unfinished
/// (the client went away, or its deadline dropped the handler). Until the request names
/// a model it serves ([`RequestRecorder::route`]), it is recorded with none.
pub struct RequestRecorder {
    metrics: Arc<Metrics>,
    route: RouteCell,
    method: &'static str,
    started: Instant,
    finished: bool,
}

impl RequestRecorder {
    pub fn start(metrics: Arc<Metrics>, method: &'static str, started: Instant) -> Self {
        Self {
            metrics,
            route: RouteCell::default(),
            method,
            started,
            finished: false,
        }
    }

    /// The request is for this model: it is recorded in the model's series.
    pub fn route(&self, model: &Arc<ModelMetrics>) {
        self.route.set(model);
    }

    /// Where a handler that runs apart from the recorder says the request's model.
    pub fn route_cell(&self) -> RouteCell {
        self.route.clone()
    }

    fn record(&self, latency: Duration, outcome: Result<Option<StageTimes>, &'static str>) {
        match self.route.0.get() {
            Some(model) => model.record_request(self.method, latency, outcome),
            None => {
                let outcome = outcome.map(|_| ());
                self.metrics
                    .record_unrouted_request(self.method, latency, outcome)
            }
        }
    }

    /// Records the outcome: stage times for an answer, or the error's code word. Returns
    /// the request's latency.
    pub fn finish(mut self, outcome: Result<Option<StageTimes>, &'static str>) -> Duration {
        self.finished = true;
        let latency = self.started.elapsed();
        self.record(latency, outcome);
        latency
    }
}

impl Drop for RequestRecorder {
    fn drop(&mut self) {
        if !self.finished {
            self.record(self.started.elapsed(), Err("cancelled"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_splits_into_stages_and_overheads() {
        let root = Metrics::new(false);
        let metrics = root.model("m");
        let stages = StageTimes {
            tokenization: Duration::from_millis(10),
            tokenizer_wait: Duration::from_millis(5),
            model_wait: Duration::from_millis(20),
            inference: Duration::from_millis(100),
        };
        metrics.record_request("http_score", Duration::from_millis(150), Ok(Some(stages)));
        let text = root.render();
        let sum = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name}_sum{{model=\"m\"}} ")))
                .unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        // 150 - 110 = 40 ms of overhead; 40 - 25 = 15 ms outside every stage and queue.
        assert!(
            (sum("overhead_latency_seconds") - 0.040).abs() < 1e-9,
            "{text}"
        );
        assert!(
            (sum("pipeline_overhead_latency_seconds") - 0.015).abs() < 1e-9,
            "{text}"
        );
        assert!(
            (sum("queue_wait_latency_seconds") - 0.025).abs() < 1e-9,
            "{text}"
        );
        assert!(
            text.contains("request_count_total{model=\"m\",method=\"http_score\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_request_dropped_after_naming_its_model_counts_as_that_models() {
        let root = Arc::new(Metrics::new(false));
        let model = Arc::new(root.model("m"));
        let recorder = RequestRecorder::start(Arc::clone(&root), "http_score", Instant::now());
        // As a handler does, apart from the recorder, before its client goes away.
        recorder.route_cell().set(&model);
        drop(recorder);
        let text = root.render();
        assert!(
            text.contains(
                "request_errors_total{model=\"m\",method=\"http_score\",code=\"cancelled\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_dropped_recorder_counts_a_cancelled_request() {
        let metrics = Arc::new(Metrics::new(false));
        drop(RequestRecorder::start(
            Arc::clone(&metrics),
            "grpc_rerank",
            Instant::now(),
        ));
        let text = metrics.render();
        assert!(
            text.contains(
                "request_errors_total{model=\"\",method=\"grpc_rerank\",code=\"cancelled\"} 1"
            ),
            "{text}"
        );
    }
}
