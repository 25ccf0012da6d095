//! The configuration of a crossenc server: what the supervisor, its workers and its
//! batching need to know, with the defaults an operator gets when they say nothing.
//!
//! A [`ServeConfig`] is built in layers, lowest first: built-in defaults, a TOML file,
//! `CROSSENC_<SECTION>__<KEY>` environment variables, command-line flags ([`load`]).
//! `conf/crossenc.toml` documents every key. Durations take human units (`"250ms"`,
//! `"5s"`), sizes too (`"64MiB"`). Unknown keys are errors that suggest the nearest valid
//! one; [`ServeConfig::validate`] then checks what types cannot.
//!
//! [`command`] holds `crossenc serve`'s flags and `crossenc config show|check`. This crate
//! must never know models or processes: the model-folder check is passed in.

mod activation;
pub mod command;
mod load;
mod log;
mod secret;
mod show;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

pub use crate::load::{env_var, load, ConfigError, Layers, Loaded, Problem, Source};
pub use crate::log::{LogConfig, LogFormat};
use crate::secret::optional_addr;
pub use crate::secret::ApiKey;
pub use crate::show::render;
pub use crossenc_types::{Dtype, ScoreActivation};
/// A flag's value for [`Layers::flags`].
pub use figment::value::Value;

/// Everything `crossenc serve` needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    pub server: ServerConfig,
    pub model: ModelConfig,
    pub workers: WorkersConfig,
    pub batching: BatchingConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

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

/// The longest `model.max_length` a config may ask for; the model's own position
/// table bounds it further (Qwen3: 40960).
const MAX_LENGTH_LIMIT: usize = 131_072;

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
    /// The name answers and `build_info` give the model; empty: the folder's name.
    pub name: String,
}

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
            max_inflight_request_bytes: ByteSize::mib(512),
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
        }
    }
}

impl ModelConfig {
    /// The served model's name: as configured, or the folder's.
    pub fn served_name(&self) -> String {
        if !self.name.is_empty() {
            return self.name.clone();
        }
        let folder = self.path.file_name().unwrap_or(self.path.as_os_str());
        folder.to_string_lossy().into_owned()
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

    fn check_connections(&self, c: &mut Checks) {
        c.positive(
            "server.connection_idle_timeout",
            self.connection_idle_timeout,
        );
        c.positive("server.max_connection_age", self.max_connection_age);
        c.positive(
            "server.http2_keepalive_interval",
            self.http2_keepalive_interval,
        );
        c.positive(
            "server.http2_keepalive_timeout",
            self.http2_keepalive_timeout,
        );
        c.require(
            self.max_inflight_request_bytes.as_u64() >= self.max_request_bytes.as_u64(),
            "server.max_inflight_request_bytes",
            self.max_inflight_request_bytes.as_u64(),
            "must hold at least one request of server.max_request_bytes",
        );
    }

    fn check_security(&self, c: &mut Checks) {
        let given = |p: &PathBuf| !p.as_os_str().is_empty();
        c.require(
            given(&self.tls_cert_file) == given(&self.tls_key_file),
            "server.tls_key_file",
            self.tls_key_file.display(),
            "server.tls_cert_file and server.tls_key_file go together: set both or neither",
        );
        c.require(
            !given(&self.tls_client_ca_file) || given(&self.tls_cert_file),
            "server.tls_client_ca_file",
            self.tls_client_ca_file.display(),
            "client certificates need TLS: set server.tls_cert_file and server.tls_key_file",
        );
        for key in &self.api_keys {
            c.require(
                key.expose().chars().count() >= ApiKey::MIN_LEN,
                "server.api_keys",
                "<redacted>",
                "each key must be at least 16 characters",
            );
        }
        c.require(
            !given(&self.admin_api_key_file) || self.admin_addr.is_some(),
            "server.admin_api_key_file",
            self.admin_api_key_file.display(),
            "guards server.admin_addr: set it, or the admin routes share http_addr and its api keys",
        );
        if let Some(admin) = self.admin_addr {
            let clashes = admin == self.grpc_addr || admin == self.http_addr;
            c.require(
                !clashes || admin.port() == 0,
                "server.admin_addr",
                admin,
                "must differ from server.grpc_addr and server.http_addr (leave it empty to serve the admin routes on http_addr)",
            );
        }
    }
}

/// A setting that cannot work, named by its key.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{key} = {value}: {allowed}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub value: String,
    pub allowed: &'static str,
}

/// Collects the problems of one configuration.
#[derive(Default)]
struct Checks(Vec<InvalidSetting>);

impl Checks {
    fn require(
        &mut self,
        ok: bool,
        key: &'static str,
        value: impl ToString,
        allowed: &'static str,
    ) {
        if !ok {
            self.0.push(InvalidSetting {
                key,
                value: value.to_string(),
                allowed,
            });
        }
    }

    fn at_least_one(&mut self, key: &'static str, value: usize) {
        self.require(value >= 1, key, value, "must be at least 1");
    }

    fn positive(&mut self, key: &'static str, value: Duration) {
        let shown = humantime::format_duration(value);
        self.require(!value.is_zero(), key, shown, "must be longer than 0s");
    }
}

impl ServeConfig {
    /// Checks the values that no type can rule out; every problem is reported, not only the first.
    pub fn validate(&self) -> Result<(), Vec<InvalidSetting>> {
        let mut c = Checks::default();
        let (server, workers, batching) = (&self.server, &self.workers, &self.batching);
        c.require(
            server.grpc_addr != server.http_addr || server.grpc_addr.port() == 0,
            "server.http_addr",
            server.http_addr,
            "must differ from server.grpc_addr",
        );
        c.require(
            server.max_request_bytes.as_u64() >= 1024,
            "server.max_request_bytes",
            server.max_request_bytes.as_u64(),
            "must be at least 1KiB",
        );
        c.at_least_one(
            "server.max_concurrent_requests",
            server.max_concurrent_requests,
        );
        c.positive("server.http_request_timeout", server.http_request_timeout);
        c.positive("server.default_deadline", server.default_deadline);
        c.positive(
            "server.http_header_read_timeout",
            server.http_header_read_timeout,
        );
        c.at_least_one("server.max_connections", server.max_connections);
        server.check_connections(&mut c);
        server.check_security(&mut c);
        c.require(
            server.http2_max_concurrent_streams >= 1,
            "server.http2_max_concurrent_streams",
            server.http2_max_concurrent_streams,
            "must be at least 1",
        );
        c.require(
            server.max_text_bytes.as_u64() == 0 || server.max_text_bytes.as_u64() >= 64,
            "server.max_text_bytes",
            server.max_text_bytes.as_u64(),
            "must be 0 (max_length x 32) or at least 64 bytes",
        );
        c.require(
            server.max_text_bytes_in_flight.as_u64() >= server.max_request_bytes.as_u64(),
            "server.max_text_bytes_in_flight",
            server.max_text_bytes_in_flight.as_u64(),
            "must hold at least one request of server.max_request_bytes",
        );
        self.check_devices(&mut c);
        c.at_least_one("workers.tokenizer", workers.tokenizer);
        c.at_least_one("workers.model", workers.model);
        c.positive("workers.startup_timeout", workers.startup_timeout);
        c.positive("workers.batch_timeout", workers.batch_timeout);
        c.positive(
            "workers.respawn_backoff_initial",
            workers.respawn_backoff_initial,
        );
        c.require(
            workers.respawn_backoff_max >= workers.respawn_backoff_initial,
            "workers.respawn_backoff_max",
            humantime::format_duration(workers.respawn_backoff_max),
            "must not be shorter than workers.respawn_backoff_initial",
        );
        c.positive("workers.no_worker_patience", workers.no_worker_patience);
        c.require(
            workers.max_start_failures >= 1,
            "workers.max_start_failures",
            workers.max_start_failures,
            "must be at least 1",
        );
        c.at_least_one("batching.max_batch_size", batching.max_batch_size);
        c.at_least_one(
            "batching.max_client_batch_size",
            batching.max_client_batch_size,
        );
        c.at_least_one("batching.batches_per_worker", batching.batches_per_worker);
        c.require(
            batching.max_queued_pairs >= batching.max_client_batch_size,
            "batching.max_queued_pairs",
            batching.max_queued_pairs,
            "must hold at least one request of batching.max_client_batch_size pairs",
        );
        c.require(
            self.metrics.collection_interval >= Duration::from_millis(10),
            "metrics.collection_interval",
            humantime::format_duration(self.metrics.collection_interval),
            "must be at least 10ms",
        );
        self.check_lengths(&mut c);
        if c.0.is_empty() {
            Ok(())
        } else {
            Err(c.0)
        }
    }

    fn check_devices(&self, c: &mut Checks) {
        let model = &self.model;
        let devices = model.devices();
        if !devices.iter().all(|d| is_device(d)) {
            let allowed = "must be `cpu`, `cuda:N` or a list of GPUs (`cuda:0,cuda:1`)";
            return c.require(false, "model.device", &model.device, allowed);
        }
        if devices.len() == 1 {
            return;
        }
        let gpus = model.gpus();
        let distinct = gpus.iter().collect::<std::collections::HashSet<_>>().len();
        c.require(
            gpus.len() == devices.len() && distinct == gpus.len(),
            "model.device",
            &model.device,
            "a list of devices must name distinct GPUs only (`cpu` stands alone)",
        );
        // One worker per GPU at least, or a GPU would sit idle.
        c.require(
            self.workers.model >= devices.len(),
            "workers.model",
            self.workers.model,
            "must be at least the number of GPUs in model.device (one worker per GPU)",
        );
    }

    fn check_lengths(&self, c: &mut Checks) {
        let max_length = self.model.max_length;
        c.require(
            max_length == 0 || (2..=MAX_LENGTH_LIMIT).contains(&max_length),
            "model.max_length",
            max_length,
            "must be 0 (the model's limit) or between 2 and 131072 tokens",
        );
        // A pair of the longest length must fit one batch; 512 is the default limit.
        let longest = if max_length == 0 { 512 } else { max_length };
        c.require(
            self.batching.max_batch_tokens >= longest,
            "batching.max_batch_tokens",
            self.batching.max_batch_tokens,
            "must hold at least one pair of model.max_length tokens (512 when it is 0)",
        );
    }
}

fn is_device(device: &str) -> bool {
    device == "cpu"
        || device
            .strip_prefix("cuda:")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ServeConfig::default().validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let mut config = ServeConfig::default();
        config.workers.model = 0;
        config.model.max_length = 512;
        config.batching.max_batch_tokens = 100;
        config.model.device = "gpu0".into();
        config.server.http_addr = config.server.grpc_addr;
        config.workers.respawn_backoff_max = Duration::from_millis(10);
        let errors = config.validate().unwrap_err();
        let keys: Vec<_> = errors.iter().map(|e| e.key).collect();
        assert_eq!(
            keys,
            [
                "server.http_addr",
                "model.device",
                "workers.model",
                "workers.respawn_backoff_max",
                "batching.max_batch_tokens"
            ]
        );
        assert_eq!(
            errors[2].to_string(),
            "workers.model = 0: must be at least 1"
        );
        assert_eq!(
            errors[1].to_string(),
            "model.device = gpu0: must be `cpu`, `cuda:N` or a list of GPUs (`cuda:0,cuda:1`)"
        );
    }

    #[test]
    fn a_device_list_places_workers_on_distinct_gpus() {
        let mut config = ServeConfig::default();
        config.model.device = "cuda:0, cuda:1".into();
        config.workers.model = 4;
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.model.devices(), ["cuda:0", "cuda:1"]);
        assert_eq!(config.model.gpus(), [0, 1]);

        config.workers.model = 1;
        let errors = config.validate().unwrap_err();
        assert_eq!(errors[0].key, "workers.model", "{errors:?}");

        for device in ["cuda:0,cuda:0", "cpu,cuda:0", "cuda:0,", "cuda:0,gpu1"] {
            config.model.device = device.into();
            config.workers.model = 2;
            let errors = config.validate().unwrap_err();
            assert_eq!(errors[0].key, "model.device", "{device}: {errors:?}");
        }
        config.model.device = "cpu".into();
        assert!(config.model.gpus().is_empty());
    }

    #[test]
    fn model_threads_zero_shares_the_cores() {
        let mut workers = WorkersConfig::default();
        assert!(workers.threads_per_model_worker() >= 1);
        workers.model_threads = 3;
        assert_eq!(workers.threads_per_model_worker(), 3);
    }
}
