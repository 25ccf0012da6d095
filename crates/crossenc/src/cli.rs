//! The command line: flags, and what each subcommand runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use crossenc_config::command::{ConfigArgs, ConfigCommand, TokenizerCheck, EXIT_CONFIG};
use crossenc_config::{Problem, ServeConfig};
use crossenc_model::{Dtype, ModelFolder, PairTokenizer};
use crossenc_server::{ServeError, WorkerLauncher};
use crossenc_worker::WorkerArgs;

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
    Serve(Box<ConfigArgs>),
    /// Show the effective configuration, or check a configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run one worker process. The supervisor starts these itself; not for use by hand.
    Worker(WorkerCommand),
    /// Measure a running server (pairs/s, latency, padding) and the model alone on a workload.
    Bench(crate::bench::BenchArgs),
    /// Run the server over a grid of configurations under load; write CSV, JSON, Markdown and plots.
    Sweep(crate::bench::SweepArgs),
    /// List every metric served at /metrics: name, type, labels and meaning.
    Metrics,
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
    /// Number format of the products: `f32` or `bf16`.
    #[arg(long, value_name = "DTYPE", default_value = "f32", value_parser = parse_dtype)]
    dtype: Dtype,
}

/// Runs bf16 products on AVX512-BF16 where the CPU has no AMX (normally f32 runs there).
const BF16_WITHOUT_AMX: &str = "CROSSENC_BF16_WITHOUT_AMX";

pub(crate) fn parse_dtype(name: &str) -> Result<Dtype, String> {
    match name {
        "f32" => Ok(Dtype::F32),
        "bf16" => Ok(Dtype::Bf16 {
            without_amx: std::env::var_os(BF16_WITHOUT_AMX).is_some_and(|v| v == "1"),
        }),
        _ => Err(format!("`{name}` is not one of `f32`, `bf16`")),
    }
}

pub fn serve(args: Box<ConfigArgs>) -> anyhow::Result<ExitCode> {
    let config = match args.load(check_model) {
        Ok(loaded) => loaded.config,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    let launcher = WorkerLauncher {
        exe: std::env::current_exe().context("cannot find the crossenc binary to start workers")?,
        model: config.model.path.clone(),
        max_length: config.model.requested_max_length(),
        device: config.model.device.clone(),
        dtype: config.model.dtype,
        model_threads: config.workers.threads_per_model_worker(),
        startup_timeout: config.workers.startup_timeout,
        log_format: config.log.format,
        log_filter: config.log.effective_filter(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crossenc-supervisor")
        .build()
        .context("cannot start the async runtime")?;
    // The span exporter's channel lives on the runtime.
    let model = config.model.served_name();
    let endpoint = &config.log.otlp_endpoint;
    let otlp = (!endpoint.is_empty()).then_some(crate::logging::Otlp {
        endpoint,
        model: &model,
    });
    let _tracing = {
        let _in_runtime = runtime.enter();
        crate::logging::init(config.log.format, &config.log.effective_filter(), otlp)?
    };
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

/// The model folder exists, holds a supported model, and allows `model.max_length`;
/// with [`TokenizerCheck::Here`], its tokenizer fits it too.
pub fn check_model(config: &ServeConfig, tokenizer: TokenizerCheck) -> Result<(), Problem> {
    let path = &config.model.path;
    let problem = |message: String| Problem {
        key: "model.path".into(),
        source: None,
        message: format!("{}: {message}", path.display()),
    };
    let folder = ModelFolder::open(path).map_err(|e| problem(e.to_string()))?;
    let max_length = folder
        .max_length(config.model.requested_max_length())
        .map_err(|e| Problem {
            key: "model.max_length".into(),
            source: None,
            message: e.to_string(),
        })?;
    if tokenizer == TokenizerCheck::Here {
        PairTokenizer::load(&folder, max_length).map_err(|e| problem(e.to_string()))?;
    }
    Ok(())
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
    let (flags, run, kind): (_, WorkerMain, _) = match command.kind {
        WorkerKindArg::Tokenizer(flags) => (flags, crossenc_worker::run_tokenizer, "tokenizer"),
        WorkerKindArg::Model(flags) => (flags, crossenc_worker::run_model, "model"),
    };
    die_with_parent(flags.supervisor_pid)?;
    // Every line of this worker names it.
    let span = tracing::info_span!("worker", kind, id = flags.worker_id);
    let _in_worker = span.enter();
    let args = WorkerArgs {
        server_name: flags.ipc_server,
        worker_id: flags.worker_id,
        model: flags.model,
        max_length: flags.max_length,
        device: flags.device,
        dtype: flags.dtype,
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
    use crossenc_metrics::CATALOGUE;
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
