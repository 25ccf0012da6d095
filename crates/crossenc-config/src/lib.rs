//! The configuration of a crossenc server: what the supervisor, its workers and its
//! batching need to know, with the defaults an operator gets when they say nothing.
//!
//! Values reach this model from command-line flags today; the file and environment
//! layers build the same [`ServeConfig`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `crossenc serve` needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServeConfig {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub workers: WorkersConfig,
    pub batching: BatchingConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsConfig {
    /// How often the collection loop refreshes the interval gauges (throughputs, CPU,
    /// memory, padding ratio, GPUs).
    pub collection_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            collection_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// Where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// Where /health, /ready and /metrics listen.
    pub http_addr: SocketAddr,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Largest request body, gRPC message or HTTP JSON, in bytes.
    pub max_request_bytes: usize,
    /// Longest an HTTP JSON request may take before it is answered 504 (gRPC clients
    /// bring their own deadline).
    pub http_request_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// A Hugging Face model folder: config.json, tokenizer.json, model.safetensors.
    pub path: PathBuf,
    /// Longest pair in tokens after truncation; `None` means the model's own limit (at most 512).
    pub max_length: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkersConfig {
    /// Tokenizer worker processes.
    pub tokenizer: usize,
    /// Model worker processes.
    pub model: usize,
    /// Compute threads in each model worker.
    pub model_threads: usize,
    /// How long a worker may take to load before it counts as failed.
    pub startup_timeout: Duration,
    /// How long a model worker may hold one batch before it is killed as hung.
    pub batch_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchingConfig {
    /// Largest batch in padded tokens (pairs x longest pair).
    pub max_batch_tokens: usize,
    /// Largest batch in pairs.
    pub max_batch_size: usize,
    /// How long a batch that is not full waits for more pairs once a worker could take it.
    pub max_batch_delay: Duration,
    /// Batches sent to one model worker and not yet answered: one running, one ready.
    pub batches_per_worker: usize,
    /// Most documents (Rerank) or pairs (Infer) in one client request.
    pub max_client_batch_size: usize,
    /// Pairs admitted and not yet sent to a model worker; more are refused.
    pub max_queued_pairs: usize,
    /// Requests in flight; more are refused.
    pub max_concurrent_requests: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            shutdown_grace: Duration::from_secs(30),
            // A 1024-document request of long texts fits.
            max_request_bytes: 64 << 20,
            http_request_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("models/default"),
            max_length: None,
        }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            tokenizer: 1,
            model: 1,
            model_threads: default_threads(),
            startup_timeout: Duration::from_secs(120),
            batch_timeout: Duration::from_secs(120),
        }
    }
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            // Measured on 2 CPU cores, model alone on the shared workload: 4096 scores
            // 8% more pairs/s than 16384 (less padding, smaller attention matrices) and
            // keeps one batch to about two seconds; 2048 gains nothing more.
            max_batch_tokens: 4096,
            max_batch_size: 64,
            max_batch_delay: Duration::from_millis(2),
            batches_per_worker: 2,
            max_client_batch_size: 1024,
            max_queued_pairs: 8192,
            max_concurrent_requests: 512,
        }
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A setting that cannot work, named by its key.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{key} = {value}: {allowed}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub value: String,
    pub allowed: &'static str,
}

impl ServeConfig {
    /// Checks the values that no type can rule out; every problem is reported, not only the first.
    pub fn validate(&self) -> Result<(), Vec<InvalidSetting>> {
        let mut errors = Vec::new();
        let mut at_least_one = |key, value: usize| {
            if value == 0 {
                errors.push(InvalidSetting {
                    key,
                    value: value.to_string(),
                    allowed: "must be at least 1",
                });
            }
        };
        at_least_one("server.max_request_bytes", self.server.max_request_bytes);
        at_least_one("workers.tokenizer", self.workers.tokenizer);
        at_least_one("workers.model", self.workers.model);
        at_least_one("workers.model_threads", self.workers.model_threads);
        at_least_one("batching.max_batch_size", self.batching.max_batch_size);
        at_least_one(
            "batching.max_client_batch_size",
            self.batching.max_client_batch_size,
        );
        at_least_one(
            "batching.batches_per_worker",
            self.batching.batches_per_worker,
        );
        at_least_one(
            "batching.max_concurrent_requests",
            self.batching.max_concurrent_requests,
        );
        if self.batching.max_queued_pairs < self.batching.max_client_batch_size {
            errors.push(InvalidSetting {
                key: "batching.max_queued_pairs",
                value: self.batching.max_queued_pairs.to_string(),
                allowed: "must hold at least one request of batching.max_client_batch_size pairs",
            });
        }
        if self.metrics.collection_interval < Duration::from_millis(10) {
            errors.push(InvalidSetting {
                key: "metrics.collection_interval",
                value: format!("{:?}", self.metrics.collection_interval),
                allowed: "must be at least 10ms",
            });
        }
        if let Some(max_length) = self.model.max_length {
            if !(2..=8192).contains(&max_length) {
                errors.push(InvalidSetting {
                    key: "model.max_length",
                    value: max_length.to_string(),
                    allowed: "must be between 2 and 8192 tokens",
                });
            }
            if self.batching.max_batch_tokens < max_length {
                errors.push(InvalidSetting {
                    key: "batching.max_batch_tokens",
                    value: self.batching.max_batch_tokens.to_string(),
                    allowed: "must hold at least one pair of model.max_length tokens",
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ServeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn zero_workers_and_a_budget_below_one_pair_are_named() {
        let mut config = ServeConfig::default();
        config.workers.model = 0;
        config.model.max_length = Some(512);
        config.batching.max_batch_tokens = 100;
        let errors = config.validate().unwrap_err();
        let keys: Vec<_> = errors.iter().map(|e| e.key).collect();
        assert_eq!(keys, ["workers.model", "batching.max_batch_tokens"]);
        assert_eq!(
            errors[0].to_string(),
            "workers.model = 0: must be at least 1"
        );
    }
}
