//! The command line: flags, and what each subcommand runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use crossenc_config::ServeConfig;
use crossenc_server::{ServeError, WorkerLauncher};
use crossenc_worker::WorkerArgs;

/// Exit code for a configuration that cannot work, as sysexits' EX_USAGE-like tools do.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "crossenc",
    version,
    about = "Serve cross-encoder (reranker) models over gRPC and HTTP",
    long_about = "crossenc scores (query, document) pairs with a transformer cross-encoder. \
                  `crossenc serve` runs a supervisor that spawns tokenizer and model worker \
                  processes and answers gRPC Infer and Rerank calls."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server: the supervisor, its worker processes, gRPC and HTTP.
    Serve(ServeArgs),
    /// Run one worker process. The supervisor starts these itself; not for use by hand.
    Worker(WorkerCommand),
    /// Measure a running server (pairs/s, latency, padding) and the model alone on a workload.
    Bench(crate::bench::BenchArgs),
    /// List every metric served at /metrics: name, type, labels and meaning.
    Metrics,
}

fn defaults() -> ServeConfig {
    ServeConfig::default()
}

#[derive(Args)]
pub struct ServeArgs {
    /// Model folder holding config.json, tokenizer.json and model.safetensors.
    #[arg(long, value_name = "DIR", default_value = "models/default")]
    model: PathBuf,
    /// Address of the gRPC API (crossenc.v1.CrossEncoder, health, reflection).
    #[arg(long, value_name = "ADDR", default_value_t = defaults().server.grpc_addr)]
    grpc_addr: SocketAddr,
    /// Address of the HTTP endpoints: /health, /ready, /metrics, the JSON API (/rerank, /v1/rerank, /score) and /openapi.json.
    #[arg(long, value_name = "ADDR", default_value_t = defaults().server.http_addr)]
    http_addr: SocketAddr,
    /// Tokenizer worker processes.
    #[arg(long, value_name = "N", default_value_t = defaults().workers.tokenizer)]
    tokenizer_workers: usize,
    /// Model worker processes.
    #[arg(long, value_name = "M", default_value_t = defaults().workers.model)]
    model_workers: usize,
    /// Compute threads in each model worker [default: the cores, shared among model workers].
    #[arg(long, value_name = "T")]
    model_threads: Option<usize>,
    /// Where model workers compute: `cpu`, or `cuda:N` in a build with the `cuda` feature.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
    /// Longest pair in tokens; longer pairs are truncated longest-first [default: the model's limit, at most 512].
    #[arg(long, value_name = "TOKENS")]
    max_length: Option<usize>,
    /// Largest model batch in padded tokens (pairs x longest pair).
    #[arg(long, value_name = "TOKENS", default_value_t = defaults().batching.max_batch_tokens)]
    max_batch_tokens: usize,
    /// Largest model batch in pairs.
    #[arg(long, value_name = "PAIRS", default_value_t = defaults().batching.max_batch_size)]
    max_batch_size: usize,
    /// Largest request body in bytes, gRPC message or HTTP JSON.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().server.max_request_bytes)]
    max_request_bytes: usize,
    /// Longest an HTTP JSON request may take before it is answered 504 (e.g. 60s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "60s")]
    http_request_timeout: Duration,
    /// How long a model worker may hold one batch before it is killed as hung (e.g. 120s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "120s")]
    batch_timeout: Duration,
    /// How long a batch that is not full waits for more pairs (e.g. 2ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "2ms")]
    max_batch_delay: Duration,
    /// Batches in flight to one model worker: one computing, the rest ready in its queue.
    #[arg(long, value_name = "N", default_value_t = defaults().batching.batches_per_worker)]
    batches_per_worker: usize,
    /// Most documents (Rerank) or pairs (Infer) in one request.
    #[arg(long, value_name = "N", default_value_t = defaults().batching.max_client_batch_size)]
    max_client_batch_size: usize,
    /// Pairs admitted and not yet sent to a model worker; a request that would exceed it is refused with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "PAIRS", default_value_t = defaults().batching.max_queued_pairs)]
    max_queued_pairs: usize,
    /// Requests in flight; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, value_name = "N", default_value_t = defaults().batching.max_concurrent_requests)]
    max_concurrent_requests: usize,
    /// How long requests in flight may take to finish after SIGTERM or SIGINT (e.g. 30s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "30s")]
    shutdown_grace: Duration,
    /// How often the interval gauges (throughputs, CPU, memory, padding ratio, GPUs) are refreshed (e.g. 5s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "5s")]
    collection_interval: Duration,
}

impl ServeArgs {
    fn into_config(self) -> ServeConfig {
        let mut config = ServeConfig::default();
        config.model.path = self.model;
        config.model.max_length = self.max_length;
        config.server.grpc_addr = self.grpc_addr;
        config.server.http_addr = self.http_addr;
        config.server.shutdown_grace = self.shutdown_grace;
        config.workers.tokenizer = self.tokenizer_workers;
        config.workers.model = self.model_workers;
        config.workers.model_threads = self
            .model_threads
            .unwrap_or_else(|| (config.workers.model_threads / self.model_workers.max(1)).max(1));
        config.batching.max_batch_tokens = self.max_batch_tokens;
        config.batching.max_batch_size = self.max_batch_size;
        config.workers.batch_timeout = self.batch_timeout;
        config.server.max_request_bytes = self.max_request_bytes;
        config.server.http_request_timeout = self.http_request_timeout;
        config.batching.max_batch_delay = self.max_batch_delay;
        config.batching.batches_per_worker = self.batches_per_worker;
        config.batching.max_client_batch_size = self.max_client_batch_size;
        config.batching.max_queued_pairs = self.max_queued_pairs;
        config.batching.max_concurrent_requests = self.max_concurrent_requests;
        config.metrics.collection_interval = self.collection_interval;
        config
    }
}

#[derive(Args)]
pub struct WorkerCommand {
    #[command(subcommand)]
    kind: WorkerKindArg,
}

#[derive(Subcommand)]
enum WorkerKindArg {
    /// Tokenize pairs with the model's tokenizer.json.
    Tokenizer(WorkerFlags),
    /// Score token batches with the model.
    Model(WorkerFlags),
}

#[derive(Args)]
struct WorkerFlags {
    /// Name of the supervisor's IPC server to connect to.
    #[arg(long, value_name = "NAME")]
    ipc_server: String,
    /// This worker's number within its kind.
    #[arg(long, value_name = "N")]
    worker_id: u32,
    /// The supervisor's pid: the worker exits if its parent is not (or no longer) this.
    #[arg(long, value_name = "PID")]
    supervisor_pid: i32,
    /// Model folder.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Longest pair in tokens.
    #[arg(long, value_name = "TOKENS")]
    max_length: Option<usize>,
    /// `cpu` or `cuda:N`.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let device = args.device.clone();
    let config = args.into_config();
    let launcher = WorkerLauncher {
        exe: std::env::current_exe().context("cannot find the crossenc binary to start workers")?,
        model: config.model.path.clone(),
        max_length: config.model.max_length,
        device,
        model_threads: config.workers.model_threads,
        startup_timeout: config.workers.startup_timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crossenc-supervisor")
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot watch SIGTERM and SIGINT")?;
        anyhow::Ok(crossenc_server::serve(config, launcher, shutdown).await)
    })?;
    match served {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error @ ServeError::Config(_)) => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(EXIT_CONFIG))
        }
        Err(error) => Err(error.into()),
    }
}

/// A future that resolves on the first SIGTERM or SIGINT; a second one exits at once.
///
/// The handlers are installed here, before the server starts: installed lazily (on the
/// future's first poll), a signal arriving while the server starts would kill it outright.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            eprintln!("second signal: exiting now");
            // Workers follow through their parent-death signal.
            std::process::exit(130);
        });
    })
}

pub fn worker(command: WorkerCommand) -> anyhow::Result<ExitCode> {
    type WorkerMain = fn(&WorkerArgs) -> Result<(), crossenc_worker::WorkerError>;
    let (flags, run): (_, WorkerMain) = match command.kind {
        WorkerKindArg::Tokenizer(flags) => (flags, crossenc_worker::run_tokenizer),
        WorkerKindArg::Model(flags) => (flags, crossenc_worker::run_model),
    };
    die_with_parent(flags.supervisor_pid)?;
    let args = WorkerArgs {
        server_name: flags.ipc_server,
        worker_id: flags.worker_id,
        model: flags.model,
        max_length: flags.max_length,
        device: flags.device,
    };
    run(&args)?;
    Ok(ExitCode::SUCCESS)
}

/// Asks the kernel to kill this worker when its supervisor dies, so that no worker
/// outlives the server; then checks that the supervisor did not die first.
fn die_with_parent(supervisor: i32) -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("cannot set the parent-death signal")?;
    let parent = nix::unistd::getppid().as_raw();
    if parent != supervisor {
        bail!("the supervisor (pid {supervisor}) is gone; parent is now {parent}");
    }
    Ok(())
}

/// Prints the metric catalogue as a table (the registry itself registers exactly these).
pub fn metrics() -> ExitCode {
    use crossenc_server::metrics::CATALOGUE;
    println!("{:<40} {:<10} {:<30} help", "name", "type", "labels");
    for spec in CATALOGUE {
        let mut help = spec.help.to_string();
        if spec.gpu_only {
            help.push_str(" [only where NVML is present]");
        }
        println!(
            "{:<40} {:<10} {:<30} {help}",
            spec.sample_name(),
            spec.kind.as_str(),
            spec.labels.join(","),
        );
    }
    ExitCode::SUCCESS
}
