//! The one list of crossenc's metrics: name, type, labels and help. The registry
//! registers exactly these, and nothing else in the code names a metric. The names,
//! types and meanings follow the seed document's list (a contract with the Prometheus
//! configuration and the dashboard); the ones beyond it (errors, restarts, workers up,
//! batch size, memory, build info, admission) are what an operator needs to act on the
//! others.

/// What kind of metric a catalogue entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    /// As the `# TYPE` line says it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
        }
    }
}

/// One metric as operators see it.
#[derive(Debug, Clone, Copy)]
pub struct MetricSpec {
    /// The name as registered; a counter's samples carry `_total` after it.
    pub name: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// Only exported where NVIDIA's management library is present.
    pub gpu_only: bool,
}

impl MetricSpec {
    /// The name of its samples on `/metrics` (a counter's, with `_total`).
    pub fn sample_name(&self) -> String {
        match self.kind {
            MetricType::Counter => format!("{}_total", self.name),
            _ => self.name.to_string(),
        }
    }
}

const fn spec(
    name: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricSpec {
    MetricSpec {
        name,
        kind,
        labels,
        help,
        gpu_only: false,
    }
}

const fn gpu_spec(name: &'static str, help: &'static str) -> MetricSpec {
    MetricSpec {
        name,
        kind: MetricType::Gauge,
        labels: &["gpu"],
        help,
        gpu_only: true,
    }
}

use MetricType::{Counter as C, Gauge as G, Histogram as H};

const MODEL_WORKER: &[&str] = &["model", "worker_id", "worker_type"];

pub const REQUEST_COUNT: MetricSpec = spec(
    "request_count",
    C,
    &["model", "method"],
    "Requests finished (answered with scores or an error), by API method",
);
pub const REQUEST_ERRORS: MetricSpec = spec(
    "request_errors",
    C,
    &["model", "method", "code"],
    "Requests that ended in an error, by API method and gRPC-style code",
);
pub const PADDED_TOKENS: MetricSpec = spec(
    "padded_tokens",
    C,
    &["model"],
    "Padding in the batches' padded shape: pairs x longest pair, less the real tokens (a padded GPU pass computes it; the packed CPU pass does not, in its dense layers)",
);
pub const TOTAL_TOKENS: MetricSpec = spec(
    "total_tokens",
    C,
    &["model"],
    "Real tokens of the pairs sent to model workers",
);
pub const AUTH_FAILURES: MetricSpec = spec(
    "auth_failures",
    C,
    &["method"],
    "Requests refused for a missing or wrong API key, by method (never by key)",
);
pub const WORKER_REQUEST_COUNT: MetricSpec = spec(
    "worker_request_count",
    C,
    MODEL_WORKER,
    "Pairs a worker processed",
);
pub const WORKER_RESTARTS: MetricSpec = spec(
    "worker_restarts",
    C,
    &["model", "worker_type"],
    "Workers started again after one exited",
);
pub const POISON_SEARCH_RUNS: MetricSpec = spec(
    "poison_search_runs",
    C,
    &["model"],
    "Groups of pairs run alone on a model worker to find the pair that crashed one",
);
pub const WORKER_STATS_DROPPED: MetricSpec = spec(
    "worker_stats_dropped",
    C,
    &["model", "worker_type"],
    "Worker stats reports dropped because the supervisor read them too slowly",
);
pub const REQUEST_LATENCY: MetricSpec = spec(
    "request_latency_seconds",
    H,
    &["model", "method"],
    "End-to-end request latency, from arrival to answer",
);
pub const TOKENIZATION_LATENCY: MetricSpec = spec(
    "tokenization_latency_seconds",
    H,
    &["model"],
    "Tokenizing one job in a tokenizer worker",
);
pub const INFERENCE_LATENCY: MetricSpec = spec(
    "inference_latency_seconds",
    H,
    &["model"],
    "One batch's forward pass in a model worker",
);
pub const QUEUE_WAIT_LATENCY: MetricSpec = spec(
    "queue_wait_latency_seconds",
    H,
    &["model"],
    "All queue waits of a request: tokenizer queue plus model queue, on its slowest path",
);
pub const TOKENIZER_QUEUE_WAIT_LATENCY: MetricSpec = spec(
    "tokenizer_queue_wait_latency_seconds",
    H,
    &["model"],
    "Time a tokenizer job waited for its worker",
);
pub const MODEL_QUEUE_WAIT_LATENCY: MetricSpec = spec(
    "model_queue_wait_latency_seconds",
    H,
    &["model"],
    "Time a pair waited from tokenized to its batch's forward pass (scheduler and worker queue)",
);
pub const MP_QUEUE_SEND_LATENCY: MetricSpec = spec(
    "mp_queue_send_latency_seconds",
    H,
    &["model"],
    "One send on a worker IPC channel (jobs from the supervisor, answers from workers)",
);
pub const MP_QUEUE_RECEIVE_LATENCY: MetricSpec = spec(
    "mp_queue_receive_latency_seconds",
    H,
    &["model"],
    "A worker's answer from its send to the supervisor having it",
);
pub const GRPC_SERIALIZE_LATENCY: MetricSpec = spec(
    "grpc_serialize_latency_seconds",
    H,
    &[],
    "Protobuf encoding of one gRPC response",
);
pub const GRPC_DESERIALIZE_LATENCY: MetricSpec = spec(
    "grpc_deserialize_latency_seconds",
    H,
    &[],
    "Protobuf decoding of one gRPC request",
);
pub const SCHEDULER_LATENCY: MetricSpec = spec(
    "scheduler_latency_seconds",
    H,
    &["model"],
    "Time the scheduler took to decide one batch",
);
pub const OVERHEAD_LATENCY: MetricSpec = spec(
    "overhead_latency_seconds",
    H,
    &["model"],
    "Request latency less its tokenization and inference",
);
pub const PIPELINE_OVERHEAD_LATENCY: MetricSpec = spec(
    "pipeline_overhead_latency_seconds",
    H,
    &["model"],
    "Request latency less its tokenization, queue waits and inference",
);
pub const BATCH_SIZE: MetricSpec = spec(
    "batch_size",
    H,
    &["model"],
    "Pairs per batch sent to a model worker",
);
pub const GPU_MEMORY: MetricSpec = gpu_spec("gpu_memory_mb", "GPU memory in use, MiB");
pub const GPU_MEMORY_TOTAL: MetricSpec = gpu_spec("gpu_memory_total_mb", "GPU memory in all, MiB");
pub const GPU_UTILIZATION: MetricSpec = gpu_spec(
    "gpu_utilization_pct",
    "GPU busy over the last sample period, percent",
);
pub const CPU_PERCENT: MetricSpec = spec(
    "cpu_percent",
    G,
    &[],
    "CPU used by the supervisor and its workers over the last interval, percent of one core",
);
pub const TOKENIZER_QUEUE_SIZE: MetricSpec = spec(
    "tokenizer_queue_size",
    G,
    &["model"],
    "Pairs sent to tokenizer workers and not yet tokenized",
);
pub const MODEL_QUEUE_SIZE: MetricSpec = spec(
    "model_queue_size",
    G,
    &["model"],
    "Pairs sent to model workers and not yet scored",
);
pub const BATCH_QUEUE_SIZE: MetricSpec = spec(
    "batch_queue_size",
    G,
    &["model"],
    "Pairs waiting in the scheduler for a batch",
);
pub const QUEUED_PAIRS: MetricSpec = spec(
    "queued_pairs",
    G,
    &["model"],
    "Pairs admitted and not yet sent to a model worker (bounded by max_queued_pairs)",
);
pub const QUEUED_PAIRS_LIMIT: MetricSpec = spec(
    "queued_pairs_limit",
    G,
    &["model"],
    "max_queued_pairs: requests beyond it are refused",
);
pub const REQUESTS_IN_FLIGHT: MetricSpec = spec(
    "requests_in_flight",
    G,
    &["model"],
    "Requests admitted and not yet answered (bounded by max_concurrent_requests)",
);
pub const REQUESTS_IN_FLIGHT_LIMIT: MetricSpec = spec(
    "requests_in_flight_limit",
    G,
    &["model"],
    "max_concurrent_requests: requests beyond it are refused",
);
pub const PADDING_RATIO: MetricSpec = spec(
    "padding_ratio",
    G,
    &["model"],
    "Padding over the batches' padded shape (pairs x longest pair), last interval (0-1): waste on a padded GPU pass, batch shape on the packed CPU pass",
);
pub const MAX_SEQ_LENGTH: MetricSpec = spec(
    "max_seq_length",
    G,
    &["model"],
    "Longest pair sent to a model worker, last interval, tokens",
);
pub const AVG_SEQ_LENGTH: MetricSpec = spec(
    "avg_seq_length",
    G,
    &["model"],
    "Mean pair length sent to model workers, last interval, tokens",
);
pub const WORKER_LATENCY: MetricSpec = spec(
    "worker_latency_ms",
    G,
    MODEL_WORKER,
    "Mean time a worker spent on one job, last interval, milliseconds",
);
pub const WORKER_THROUGHPUT: MetricSpec = spec(
    "worker_throughput_qps",
    G,
    MODEL_WORKER,
    "Pairs per second a worker processed, last interval",
);
pub const TOKENIZER_THROUGHPUT: MetricSpec = spec(
    "tokenizer_throughput_qps",
    G,
    &["model"],
    "Pairs per second the tokenizer workers processed, last interval",
);
pub const INFERENCE_THROUGHPUT: MetricSpec = spec(
    "inference_throughput_qps",
    G,
    &["model"],
    "Pairs per second the model workers scored, last interval",
);
pub const OVERALL_THROUGHPUT: MetricSpec = spec(
    "overall_throughput_qps",
    G,
    &["model"],
    "Requests per second finished, last interval",
);
pub const WORKER_UP: MetricSpec = spec(
    "worker_up",
    G,
    MODEL_WORKER,
    "1 while a worker is running and ready, 0 while it is down",
);
pub const RESIDENT_MEMORY: MetricSpec = spec(
    "process_resident_memory_bytes",
    G,
    MODEL_WORKER,
    "Resident memory of the supervisor (worker_type=\"supervisor\") and of each worker",
);
pub const BUILD_INFO: MetricSpec = spec(
    "build_info",
    G,
    &[
        "version",
        "model",
        "architecture",
        "device",
        "dtype",
        "kernels",
        "template",
    ],
    "Always 1; the labels say what is running: crossenc's version, the model's name, the \
     architecture serving it, the model workers' device, the dtype their products run in \
     after any fallback, their kernels (the set timed fastest at load and its \
     implementation, as SET:IMPLEMENTATION, e.g. onednn-f32:brg:avx512_core; candle on a \
     GPU) and the decoder's prompt template (a built-in name or file; empty for an encoder)",
);

/// Every metric crossenc exports.
pub const CATALOGUE: &[MetricSpec] = &[
    REQUEST_COUNT,
    REQUEST_ERRORS,
    AUTH_FAILURES,
    PADDED_TOKENS,
    TOTAL_TOKENS,
    WORKER_REQUEST_COUNT,
    WORKER_RESTARTS,
    POISON_SEARCH_RUNS,
    WORKER_STATS_DROPPED,
    REQUEST_LATENCY,
    TOKENIZATION_LATENCY,
    INFERENCE_LATENCY,
    QUEUE_WAIT_LATENCY,
    TOKENIZER_QUEUE_WAIT_LATENCY,
    MODEL_QUEUE_WAIT_LATENCY,
    MP_QUEUE_SEND_LATENCY,
    MP_QUEUE_RECEIVE_LATENCY,
    GRPC_SERIALIZE_LATENCY,
    GRPC_DESERIALIZE_LATENCY,
    SCHEDULER_LATENCY,
    OVERHEAD_LATENCY,
    PIPELINE_OVERHEAD_LATENCY,
    BATCH_SIZE,
    GPU_MEMORY,
    GPU_MEMORY_TOTAL,
    GPU_UTILIZATION,
    CPU_PERCENT,
    TOKENIZER_QUEUE_SIZE,
    MODEL_QUEUE_SIZE,
    BATCH_QUEUE_SIZE,
    QUEUED_PAIRS,
    QUEUED_PAIRS_LIMIT,
    REQUESTS_IN_FLIGHT,
    REQUESTS_IN_FLIGHT_LIMIT,
    PADDING_RATIO,
    MAX_SEQ_LENGTH,
    AVG_SEQ_LENGTH,
    WORKER_LATENCY,
    WORKER_THROUGHPUT,
    TOKENIZER_THROUGHPUT,
    INFERENCE_THROUGHPUT,
    OVERALL_THROUGHPUT,
    WORKER_UP,
    RESIDENT_MEMORY,
    BUILD_INFO,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = CATALOGUE.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
    }
}
