//! Timing one request from its arrival to its answer, and recording it even when its
//! handler is dropped unfinished.

use std::sync::Arc;
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

/// Records a request when it finishes, or as `cancelled` if it is dropped unfinished
/// (the client went away, or its deadline dropped the handler). Until the request names
/// a model it serves ([`RequestRecorder::route`]), it is recorded with none.
pub struct RequestRecorder {
    metrics: Arc<Metrics>,
    model: Option<Arc<ModelMetrics>>,
    method: &'static str,
    started: Instant,
    finished: bool,
}

impl RequestRecorder {
    pub fn start(metrics: Arc<Metrics>, method: &'static str, started: Instant) -> Self {
        Self {
            metrics,
            model: None,
            method,
            started,
            finished: false,
        }
    }

    /// The request is for this model: it is recorded in the model's series.
    pub fn route(&mut self, model: &Arc<ModelMetrics>) {
        self.model = Some(Arc::clone(model));
    }

    fn record(&self, latency: Duration, outcome: Result<Option<StageTimes>, &'static str>) {
        match &self.model {
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
