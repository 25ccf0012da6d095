//! crossenc's observability: the catalogue of every metric (the names, types and labels
//! the seed document fixes), the Prometheus registry served at `GET /metrics`, the
//! recorder that times each request, and the collection loop that refreshes the gauges
//! read from outside the request path (/proc, NVML, admission levels).
//!
//! Where figures come from:
//! - the API faces record each request's latency and outcome ([`RequestRecorder`]);
//! - the core's dispatch task records batches and the waits of their pairs;
//! - workers report each job on their stats channel, read by
//!   [`Metrics::record_worker_report`];
//! - the collection loop ([`Collector`]) refreshes the per-interval gauges.
//!
//! Label values are bounded: methods and codes are fixed words, worker ids are slots
//! below the configured worker counts. No label carries anything from a request.
//!
//! This crate must never know how requests are batched or how workers are run: the
//! collection loop reads both through [`CollectorSources`].

pub mod catalogue;
pub mod collector;
pub mod model_metrics;
pub mod recorder;
pub mod registry;

pub use catalogue::{MetricSpec, MetricType, CATALOGUE};
pub use collector::{
    AdmissionLevels, Collector, CollectorSources, GpuMissing, GpuMonitor, ModelSource, Process,
};
pub use model_metrics::{BatchFigures, ModelLabel, ModelMetrics, Scoped, WorkerWindow};
pub use recorder::{RequestRecorder, RouteCell, StageTimes};
pub use registry::{
    BuildLabels, FloatGauge, GpuLabels, MethodLabels, Metrics, PoolLabels, WorkerLabels,
    CONTENT_TYPE,
};
