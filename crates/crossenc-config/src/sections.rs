//! The sections of a [`ServeConfig`](crate::ServeConfig), one struct each, with the
//! defaults an operator gets when they say nothing and the accessors that read them.
//! What no type can rule out is checked in `validate`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::activation;
use crate::secret::optional_addr;
use crate::{ApiKey, Dtype, LongDocuments, ScoreActivation};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the gRPC API listens.
    pub grpc_addr: SocketAddr,
    /// Where /health, /ready, /metrics and the JSON API listen.
    pub http_addr: SocketAddr,
    /// How long in-flight requests may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest request body, gRPC message or HTTP JSON.
    pub max_request_bytes: ByteSize,
    /// Longest an HTTP JSON request may take before it is answered 504 (gRPC clients
    /// bring their own deadline).
    #[serde(with = "humantime_serde")]
    pub http_request_timeout: Duration,
    /// Requests in flight, counted from before their bodies are read; more are refused.
    pub max_concurrent_requests: usize,
    /// Longest query or document the tokenizers see; 0 is the model's max_length x 32
    /// bytes. A longer text is cut at a char boundary; if the cut changes the tokens the
    /// model reads, the request is refused naming the text.
    pub max_text_bytes: ByteSize,
    /// Text of admitted requests held at once (after cutting); more is refused.
    pub max_text_bytes_in_flight: ByteSize,
    /// The deadline of a gRPC request that brings none (no grpc-timeout).
    #[serde(with = "humantime_serde")]
    pub default_deadline: Duration,
    /// Open connections per listener (gRPC, HTTP); a connection past it is closed at once.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (requests) on one gRPC connection.
    pub http2_max_concurrent_streams: u32,
    /// How long an HTTP client may take to send a request's head (and may stay idle
    /// between requests) before its connection is closed.
    #[serde(with = "humantime_serde")]
    pub http_header_read_timeout: Duration,
    /// An HTTP/2 connection (gRPC, or HTTP/2 on the HTTP port) with no request in flight
    /// for this long is closed.
    #[serde(with = "humantime_serde")]
    pub connection_idle_timeout: Duration,
    /// Every connection is asked to close (HTTP/2 GOAWAY; HTTP/1.1 after its request)
    /// once it is this old, so that no client holds one for ever.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// How long requests in flight on a connection past its age may take before it is cut.
    #[serde(with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
    /// How often the server pings an HTTP/2 connection's client.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// A connection whose client does not answer a ping within this is closed.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// Request bodies being received, decoded and served at once, in bytes; a body past
    /// it waits briefly for room, then its request is refused (429 / RESOURCE_EXHAUSTED).
    pub max_inflight_request_bytes: ByteSize,
    /// Where /metrics, /health, /ready and /openapi.json listen, apart from the API, in
    /// plain HTTP; `None` (`""`): on `http_addr`, beside the API.
    #[serde(with = "optional_addr")]
    pub admin_addr: Option<SocketAddr>,
    /// PEM certificate chain served on the gRPC and HTTP listeners; with `tls_key_file`,
    /// turns TLS on. Empty: plaintext.
    pub tls_cert_file: PathBuf,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate signed by one
    /// (mutual TLS).
    pub tls_client_ca_file: PathBuf,
    /// Keys a client must send (`Authorization: Bearer KEY`, gRPC `authorization`
    /// metadata). Empty, with no `api_key_file`: no key needed.
    pub api_keys: Vec<ApiKey>,
    /// A file of keys, one per line (blank lines and `#` comments skipped), read at start
    /// and again on SIGHUP or when it changes.
    pub api_key_file: PathBuf,
    /// A file of keys (as `api_key_file`) for the admin port's /metrics and /openapi.json;
    /// empty: the admin port is open (guard it with a network policy).
    pub admin_api_key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// A Hugging Face model folder: config.json, tokenizer.json, model.safetensors.
    pub path: PathBuf,
    /// `cpu`, or NVIDIA GPUs: `cuda:N`, or several as `cuda:0,cuda:1` (model workers
    /// are placed on them in turn).
    pub device: String,
    pub dtype: Dtype,
    /// Longest pair in tokens after truncation; 0 means the model's own limit (at most 512).
    pub max_length: usize,
    /// A decoder reranker's prompt template: a built-in (`qwen3-reranker`) or a TOML
    /// or JSON template file; empty for an encoder.
    pub template: String,
    /// Applied to the logits unless a request asks for raw scores; `None` (`"model"`):
    /// what sentence-transformers' CrossEncoder applies for this model (sigmoid, unless
    /// its config.json names Identity).
    #[serde(with = "activation")]
    pub activation: Option<ScoreActivation>,
    /// The name requests route by (`model`), and answers, `/v1/models` and the metrics'
    /// `model` label give; empty: the folder's name, or the id as given.
    pub name: String,
    /// A Hugging Face id's revision (a branch, tag or commit); empty: `main`.
    pub revision: String,
    /// What happens to a document too long to fit beside the query: `truncate` cuts it,
    /// `chunk` scores it in windows and answers the best window's score. Requests may
    /// choose for themselves.
    pub long_documents: LongDocuments,
    /// Most windows one document may be cut into under `chunk`; a document that needs
    /// more is refused. Requests may ask for fewer.
    pub max_chunks_per_doc: usize,
    /// Tokens each window repeats of the one before it, so that a passage cut at a
    /// window's edge is whole in the next.
    pub chunk_overlap: usize,
    /// A decoder's prompt prefixes (keys and values of the text before the document)
    /// each model worker keeps across requests, at most; 0 keeps none (a request's
    /// pairs still share theirs).
    pub prefix_cache_bytes: ByteSize,
    /// This model's tokenizer worker processes; unset: `workers.tokenizer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer_workers: Option<usize>,
    /// This model's model worker processes; unset: `workers.model`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_workers: Option<usize>,
    /// Compute threads in each of this model's workers; unset: `workers.model_threads`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_threads: Option<usize>,
    /// This model's batching, in place of `[batching]` (keys it omits take their
    /// defaults, not `[batching]`'s); unset: `[batching]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingConfig>,
}

/// Windows a document may be cut into at most, whatever the configuration says: each
/// window costs a pair's compute, so this bounds what one document can cost.
pub const CHUNKS_PER_DOC_LIMIT: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersConfig {
    /// Tokenizer worker processes.
    pub tokenizer: usize,
    /// Model worker processes.
    pub model: usize,
    /// Compute threads in each model worker; 0 shares the machine's cores among them.
    pub model_threads: usize,
    /// How long a worker may take to load before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// How long a model worker may hold one batch before it is killed as hung.
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
    /// Pause before restarting a worker that exited; doubles while restarts fail.
    #[serde(with = "humantime_serde")]
    pub respawn_backoff_initial: Duration,
    /// Longest pause between restarts.
    #[serde(with = "humantime_serde")]
    pub respawn_backoff_max: Duration,
    /// How long work waits for a worker of a kind that has none up before it fails.
    #[serde(with = "humantime_serde")]
    pub no_worker_patience: Duration,
    /// A worker that fails to start this many times in a row (a broken model folder)
    /// stops the server with the reason, so that its orchestrator sees it.
    pub max_start_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    /// Largest batch in tokens, as the pass that runs it pays: on the CPU each pair's
    /// tokens plus its attention's share (length² / 6 x hidden size); on GPUs padded
    /// tokens (pairs x longest pair).
    pub max_batch_tokens: usize,
    /// Largest batch in pairs.
    pub max_batch_size: usize,
    /// How long a batch that is not full waits for more pairs once a worker could take it.
    #[serde(with = "humantime_serde")]
    pub max_batch_delay: Duration,
    /// Batches sent to one model worker and not yet answered: one running, one ready.
    pub batches_per_worker: usize,
    /// Most documents (Rerank) or pairs (Infer) in one client request.
    pub max_client_batch_size: usize,
    /// Pairs admitted and not yet sent to a model worker; more are refused.
    pub max_queued_pairs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// How often the collection loop refreshes the interval gauges (throughputs, CPU,
    /// memory, padding ratio, GPUs).
    #[serde(with = "humantime_serde")]
    pub collection_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            shutdown_grace: Duration::from_secs(30),
            // A 1024-document request of long texts fits.
            max_request_bytes: ByteSize::mib(64),
            http_request_timeout: Duration::from_secs(60),
            max_concurrent_requests: 512,
            max_text_bytes: ByteSize::b(0),
            max_text_bytes_in_flight: ByteSize::mib(256),
            default_deadline: Duration::from_secs(60),
            max_connections: 4096,
            http2_max_concurrent_streams: 256,
            http_header_read_timeout: Duration::from_secs(30),
            connection_idle_timeout: Duration::from_secs(120),
            max_connection_age: Duration::from_secs(30 * 60),
            max_connection_age_grace: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            max_inflight_request_bytes: ByteSize::mib(256),
            admin_addr: None,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
            tls_client_ca_file: PathBuf::new(),
            api_keys: Vec::new(),
            api_key_file: PathBuf::new(),
            admin_api_key_file: PathBuf::new(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("models/default"),
            device: "cpu".into(),
            dtype: Dtype::F32,
            max_length: 0,
            template: String::new(),
            activation: None,
            name: String::new(),
            revision: String::new(),
            long_documents: LongDocuments::Truncate,
            max_chunks_per_doc: 8,
            chunk_overlap: 32,
            prefix_cache_bytes: ByteSize::mib(256),
            tokenizer_workers: None,
            model_workers: None,
            model_threads: None,
            batching: None,
        }
    }
}

impl ModelConfig {
    /// The served model's name: as configured, the Hugging Face id as given, or the
    /// folder's name.
    pub fn served_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        if self.names_a_hub_id() {
            return self.path.to_string_lossy().into_owned();
        }
        let folder = self.path.file_name().unwrap_or(self.path.as_os_str());
        folder.to_string_lossy().into_owned()
    }

    /// Whether `path` spells a Hugging Face id (`ORG/NAME`, no such folder here) rather
    /// than a folder.
    pub fn names_a_hub_id(&self) -> bool {
        let text = self.path.to_string_lossy();
        let parts: Vec<&str> = text.split('/').collect();
        parts.len() == 2
            && parts.iter().all(|p| !p.is_empty())
            && !text.starts_with(['.', '~'])
            && !self.path.is_dir()
    }

    /// The revision asked for, if any.
    pub fn requested_revision(&self) -> Option<&str> {
        (!self.revision.is_empty()).then_some(self.revision.as_str())
    }

    /// The prompt template, if the operator named one.
    pub fn requested_template(&self) -> Option<&str> {
        (!self.template.is_empty()).then_some(self.template.as_str())
    }

    /// The operator's truncation length, if they chose one.
    pub fn requested_max_length(&self) -> Option<usize> {
        (self.max_length > 0).then_some(self.max_length)
    }

    /// The devices model workers run on, in placement order: worker `i` runs on
    /// `devices()[i % len]`.
    pub fn devices(&self) -> Vec<&str> {
        self.device.split(',').map(str::trim).collect()
    }

    /// The CUDA ordinals in `device`; empty when the model runs on the CPU.
    pub fn gpus(&self) -> Vec<u32> {
        let ordinal = |d: &str| d.strip_prefix("cuda:").and_then(|n| n.parse().ok());
        self.devices().into_iter().filter_map(ordinal).collect()
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            tokenizer: 1,
            model: 1,
            model_threads: 0,
            startup_timeout: Duration::from_secs(120),
            batch_timeout: Duration::from_secs(120),
            respawn_backoff_initial: Duration::from_millis(50),
            respawn_backoff_max: Duration::from_secs(10),
            no_worker_patience: Duration::from_secs(10),
            max_start_failures: 5,
        }
    }
}

impl WorkersConfig {
    /// Threads per model worker: as configured, or the cores shared among them.
    pub fn threads_per_model_worker(&self) -> usize {
        if self.model_threads > 0 {
            return self.model_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores / self.model.max(1)).max(1)
    }
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            // Measured on 2 CPU cores, model alone on the shared workload: 4096 scores
            // 8% more pairs/s than 16384 (less padding, smaller attention matrices) and
            // keeps one batch to about two seconds; 2048 gains nothing more. Counted as
            // the packed pass pays, it keeps a Rerank of ~30 documents in one batch; 2560
            // split them in two and was no faster.
            max_batch_tokens: 4096,
            max_batch_size: 64,
            max_batch_delay: Duration::from_millis(2),
            batches_per_worker: 2,
            max_client_batch_size: 1024,
            max_queued_pairs: 8192,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            collection_interval: Duration::from_secs(5),
        }
    }
}

impl ServerConfig {
    /// Serving TLS: both files given.
    pub fn tls(&self) -> bool {
        !self.tls_cert_file.as_os_str().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_threads_zero_shares_the_cores() {
        let mut workers = WorkersConfig::default();
        assert!(workers.threads_per_model_worker() >= 1);
        workers.model_threads = 3;
        assert_eq!(workers.threads_per_model_worker(), 3);
    }
}
