//! `crossenc serve`'s configuration flags, the layers under them, and `crossenc config`.
//!
//! Checking the model folder a configuration names takes knowing models, which this
//! crate must not: the binary passes that check in as a [`ModelCheck`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::{ConfigError, Layers, Loaded, Problem, ServeConfig, Value};
use clap::{Args, Subcommand};

/// Exit code for a configuration that cannot work, as sysexits' EX_USAGE-like tools do.
pub const EXIT_CONFIG: u8 = 2;

/// The configuration file and the flags that override it. Every flag sets one key of
/// conf/crossenc.toml; a flag not given leaves the key to the layers below (file,
/// then CROSSENC_<SECTION>__<KEY> variables, then the defaults).
#[derive(Args, Debug, Default)]
pub struct ConfigArgs {
    /// TOML configuration file; conf/crossenc.toml documents every key.
    #[arg(long, value_name = "PATH", env = "CROSSENC_CONFIG")]
    pub config: Option<PathBuf>,
    /// model.path: folder holding config.json, tokenizer.json and model.safetensors, or a Hugging Face id (`ORG/NAME`), found in the hub's cache or downloaded [default: models/default].
    #[arg(long, value_name = "DIR|ORG/NAME")]
    model: Option<PathBuf>,
    /// model.revision: a Hugging Face id's branch, tag or commit [default: main].
    #[arg(long, value_name = "REV")]
    revision: Option<String>,
    /// model.long_documents: `truncate` or `chunk` (score windows, keep the best) for documents too long for the model [default: truncate].
    #[arg(long, value_name = "MODE")]
    long_documents: Option<String>,
    /// model.prefix_cache_bytes: a decoder's prompt prefixes each model worker keeps across requests, e.g. `256MiB`; 0 keeps none [default: 256MiB].
    #[arg(long, value_name = "BYTES")]
    prefix_cache_bytes: Option<String>,
    /// server.grpc_addr: the gRPC API (crossenc.v1.CrossEncoder, health, reflection) [default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// server.http_addr: /health, /ready, /metrics, the JSON API and /openapi.json [default: 127.0.0.1:8000].
    #[arg(long, value_name = "ADDR")]
    http_addr: Option<SocketAddr>,
    /// server.admin_addr: /metrics, /health, /ready and /openapi.json apart from the API, plain HTTP [default: on --http-addr].
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<SocketAddr>,
    /// server.tls_cert_file: PEM certificate chain; with --tls-key-file, serves gRPC and HTTP over TLS.
    #[arg(long, value_name = "PATH")]
    tls_cert_file: Option<PathBuf>,
    /// server.tls_key_file: PEM private key of --tls-cert-file.
    #[arg(long, value_name = "PATH")]
    tls_key_file: Option<PathBuf>,
    /// server.tls_client_ca_file: PEM CA certificates; clients must present a certificate signed by one (mTLS).
    #[arg(long, value_name = "PATH")]
    tls_client_ca_file: Option<PathBuf>,
    /// server.api_key_file: keys clients must send, one per line (a key on the command line would show in `ps`).
    #[arg(long, value_name = "PATH")]
    api_key_file: Option<PathBuf>,
    /// log.format: `text` or `json` (one object per line, workers' lines included) [default: text].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// log.filter: what is logged, as RUST_LOG says it (e.g. `info,crossenc_worker=debug`) [default: info].
    #[arg(long, value_name = "FILTER")]
    log_filter: Option<String>,
    /// log.otlp_endpoint: an OpenTelemetry collector (OTLP/gRPC, e.g. http://127.0.0.1:4317) to export spans to [default: none].
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// log.access: one line per finished request at info [default: true].
    #[arg(long, value_name = "BOOL")]
    access_log: Option<bool>,
    /// model.name: the model's name in answers and build_info [default: the folder's name].
    #[arg(long, value_name = "NAME")]
    model_name: Option<String>,
    /// workers.tokenizer: tokenizer worker processes [default: 1].
    #[arg(long, value_name = "N")]
    tokenizer_workers: Option<usize>,
    /// workers.model: model worker processes [default: 1].
    #[arg(long, value_name = "M")]
    model_workers: Option<usize>,
    /// workers.model_threads: compute threads per model worker; 0 shares the cores among them [default: 0].
    #[arg(long, value_name = "T")]
    model_threads: Option<usize>,
    /// model.device: `cpu`, `cuda:N`, or GPUs `cuda:0,cuda:1` (workers placed in turn) [default: cpu].
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// model.dtype: `f32`, or `bf16` products (AMX; AVX512-BF16 where faster) [default: f32].
    #[arg(long, value_name = "DTYPE")]
    dtype: Option<String>,
    /// model.max_length: longest pair in tokens, truncated longest-first; 0 is the model's limit [default: 0].
    #[arg(long, value_name = "TOKENS")]
    max_length: Option<usize>,
    /// model.template: a decoder reranker's prompt template, a built-in (`qwen3-reranker`) or a TOML/JSON file [default: none].
    #[arg(long, value_name = "NAME|FILE")]
    template: Option<String>,
    /// model.activation: `model` (the model's own default), `sigmoid` or `identity` (raw scores) [default: model].
    #[arg(long, value_name = "NAME")]
    activation: Option<String>,
    /// batching.max_batch_tokens: largest model batch in tokens (CPU: real tokens + attention's share; GPU: pairs x longest) [default: 4096].
    #[arg(long, value_name = "TOKENS")]
    max_batch_tokens: Option<usize>,
    /// batching.max_batch_size: largest model batch in pairs [default: 64].
    #[arg(long, value_name = "PAIRS")]
    max_batch_size: Option<usize>,
    /// batching.max_batch_delay: how long a batch that is not full waits for more pairs [default: 2ms].
    #[arg(long, value_name = "DURATION")]
    max_batch_delay: Option<String>,
    /// batching.batches_per_worker: batches in flight per model worker [default: 2].
    #[arg(long, value_name = "N")]
    batches_per_worker: Option<usize>,
    /// batching.max_client_batch_size: most documents or pairs in one request [default: 1024].
    #[arg(long, value_name = "N")]
    max_client_batch_size: Option<usize>,
    /// batching.max_queued_pairs: pairs admitted and not yet sent to a model worker [default: 8192].
    #[arg(long, value_name = "PAIRS")]
    max_queued_pairs: Option<usize>,
    /// server.max_concurrent_requests: requests in flight; more are refused [default: 512].
    #[arg(long, value_name = "N")]
    max_concurrent_requests: Option<usize>,
    /// server.max_request_bytes: largest gRPC message or HTTP body, e.g. 64MiB [default: 64MiB].
    #[arg(long, value_name = "SIZE")]
    max_request_bytes: Option<String>,
    /// server.http_request_timeout: HTTP JSON requests answer 504 past it [default: 60s].
    #[arg(long, value_name = "DURATION")]
    http_request_timeout: Option<String>,
    /// server.shutdown_grace: time for requests in flight after SIGTERM or SIGINT [default: 30s].
    #[arg(long, value_name = "DURATION")]
    shutdown_grace: Option<String>,
    /// server.default_deadline: the deadline of a gRPC request without grpc-timeout [default: 60s].
    #[arg(long, value_name = "DURATION")]
    default_deadline: Option<String>,
    /// server.max_text_bytes: longest query or document; longer ones are cut, or refused if the cut loses tokens; 0 is max_length x 32 [default: 0].
    #[arg(long, value_name = "SIZE")]
    max_text_bytes: Option<String>,
    /// server.max_connections: open connections per listener; more are closed at once [default: 4096].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// workers.batch_timeout: a model worker holding one batch longer is killed as hung [default: 120s].
    #[arg(long, value_name = "DURATION")]
    batch_timeout: Option<String>,
    /// metrics.collection_interval: how often the interval gauges are refreshed [default: 5s].
    #[arg(long, value_name = "DURATION")]
    collection_interval: Option<String>,
}

impl ConfigArgs {
    /// The flags given, by the key each sets.
    fn overrides(&self) -> BTreeMap<&'static str, Value> {
        let mut set = BTreeMap::new();
        let text = |v: &dyn ToString| Value::from(v.to_string());
        let count = |n: &usize| Value::from(*n as u64);
        let mut put = |key, value: Option<Value>| {
            if let Some(value) = value {
                set.insert(key, value);
            }
        };
        put(
            "model.path",
            self.model
                .as_ref()
                .map(|p| Value::from(p.display().to_string())),
        );
        put("server.grpc_addr", self.grpc_addr.as_ref().map(|a| text(a)));
        put("server.http_addr", self.http_addr.as_ref().map(|a| text(a)));
        put(
            "server.admin_addr",
            self.admin_addr.as_ref().map(|a| text(a)),
        );
        let path = |p: &PathBuf| Value::from(p.display().to_string());
        put(
            "server.tls_cert_file",
            self.tls_cert_file.as_ref().map(path),
        );
        put("server.tls_key_file", self.tls_key_file.as_ref().map(path));
        put(
            "server.tls_client_ca_file",
            self.tls_client_ca_file.as_ref().map(path),
        );
        put("server.api_key_file", self.api_key_file.as_ref().map(path));
        put("model.name", self.model_name.as_ref().map(|n| text(n)));
        put("model.revision", self.revision.as_ref().map(|r| text(r)));
        put(
            "model.long_documents",
            self.long_documents.as_ref().map(|m| text(m)),
        );
        put(
            "model.prefix_cache_bytes",
            self.prefix_cache_bytes.as_ref().map(|b| text(b)),
        );
        put("log.format", self.log_format.as_ref().map(|f| text(f)));
        put("log.filter", self.log_filter.as_ref().map(|f| text(f)));
        put("log.access", self.access_log.map(Value::from));
        put(
            "log.otlp_endpoint",
            self.otlp_endpoint.as_ref().map(|e| text(e)),
        );
        put(
            "workers.tokenizer",
            self.tokenizer_workers.as_ref().map(count),
        );
        put("workers.model", self.model_workers.as_ref().map(count));
        put(
            "workers.model_threads",
            self.model_threads.as_ref().map(count),
        );
        put("model.device", self.device.as_ref().map(|d| text(d)));
        put("model.dtype", self.dtype.as_ref().map(|d| text(d)));
        put("model.max_length", self.max_length.as_ref().map(count));
        put("model.template", self.template.as_ref().map(|t| text(t)));
        put(
            "model.activation",
            self.activation.as_ref().map(|a| text(a)),
        );
        put(
            "batching.max_batch_tokens",
            self.max_batch_tokens.as_ref().map(count),
        );
        put(
            "batching.max_batch_size",
            self.max_batch_size.as_ref().map(count),
        );
        put(
            "batching.max_batch_delay",
            self.max_batch_delay.as_ref().map(|d| text(d)),
        );
        put(
            "batching.batches_per_worker",
            self.batches_per_worker.as_ref().map(count),
        );
        put(
            "batching.max_client_batch_size",
            self.max_client_batch_size.as_ref().map(count),
        );
        put(
            "batching.max_queued_pairs",
            self.max_queued_pairs.as_ref().map(count),
        );
        put(
            "server.max_concurrent_requests",
            self.max_concurrent_requests.as_ref().map(count),
        );
        put(
            "server.max_request_bytes",
            self.max_request_bytes.as_ref().map(|s| size(s)),
        );
        put(
            "server.http_request_timeout",
            self.http_request_timeout.as_ref().map(|d| text(d)),
        );
        put(
            "server.shutdown_grace",
            self.shutdown_grace.as_ref().map(|d| text(d)),
        );
        put(
            "server.default_deadline",
            self.default_deadline.as_ref().map(|d| text(d)),
        );
        put(
            "server.max_text_bytes",
            self.max_text_bytes.as_ref().map(|s| size(s)),
        );
        put(
            "server.max_connections",
            self.max_connections.as_ref().map(count),
        );
        put(
            "workers.batch_timeout",
            self.batch_timeout.as_ref().map(|d| text(d)),
        );
        put(
            "metrics.collection_interval",
            self.collection_interval.as_ref().map(|d| text(d)),
        );
        set
    }

    /// Builds the configuration from every layer and checks the model folder against it.
    pub fn load(&self, check_model: ModelCheck) -> Result<Loaded, ConfigError> {
        let layers = Layers {
            file: self.config.clone(),
            env: true,
            flags: self.overrides(),
        };
        let loaded = crate::load(&layers)?;
        check_model(&loaded.config, TokenizerCheck::InWorkers)
            .map_err(|problem| ConfigError(vec![problem]))?;
        Ok(loaded)
    }
}

/// A size flag: a plain number of bytes, or a string with a unit for the config to parse.
fn size(text: &str) -> Value {
    match text.parse::<u64>() {
        Ok(bytes) => Value::from(bytes),
        Err(_) => Value::from(text.to_string()),
    }
}

/// Where the tokenizer's own checks (vocabulary, pair template) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerCheck {
    /// In `config check`, a process that ends at once.
    Here,
    /// In the tokenizer workers as they load, for `serve`: parsing a large tokenizer.json
    /// costs hundreds of MB (386 MB peak for a 250k-piece Unigram one), which the
    /// supervisor must not hold.
    InWorkers,
}

/// Checks that the model folder exists, holds a supported model and allows
/// `model.max_length`; with [`TokenizerCheck::Here`], that its tokenizer fits too.
pub type ModelCheck = fn(&ServeConfig, TokenizerCheck) -> Result<(), Problem>;

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration (defaults, file, environment and flags) and where each value came from.
    Show(Box<ConfigArgs>),
    /// Validate a configuration file, with the model folder it names; exit 2 on errors.
    Check {
        /// The TOML file to check.
        path: PathBuf,
    },
}

pub fn config(command: ConfigCommand, check_model: ModelCheck) -> ExitCode {
    match command {
        ConfigCommand::Show(args) => report(args.load(check_model), |loaded| {
            print!("{}", crate::render(loaded));
        }),
        ConfigCommand::Check { path } => {
            // The file alone over the defaults: the environment does not blur the verdict.
            let layers = Layers {
                file: Some(path.clone()),
                ..Layers::default()
            };
            let loaded = crate::load(&layers).and_then(|loaded| {
                check_model(&loaded.config, TokenizerCheck::Here)
                    .map_err(|problem| ConfigError(vec![problem]))?;
                Ok(loaded)
            });
            report(loaded, |_| println!("{}: ok", path.display()))
        }
    }
}

fn report(loaded: Result<Loaded, ConfigError>, ok: impl FnOnce(&Loaded)) -> ExitCode {
    match loaded {
        Ok(loaded) => {
            ok(&loaded);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
