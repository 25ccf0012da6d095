//! A worker process's command line (`<binary> worker tokenizer|model ...`), shared by
//! the binaries that run workers: `crossenc`, and `crossenc-cuda-worker` for GPUs. The
//! supervisor starts workers itself; this is not for use by hand.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use crossenc_model::Dtype;

use crate::{WorkerArgs, WorkerError};

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
    /// A decoder reranker's prompt template: a built-in name or a template file.
    #[arg(long, value_name = "NAME|FILE")]
    template: Option<String>,
    /// Bytes of a decoder's prompt prefixes kept across batches.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    prefix_cache_bytes: u64,
    /// `cpu` or `cuda:N`.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,
    /// Number format of the products: `f32` or `bf16`.
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    dtype: Dtype,
    /// Skip the warm-up batch (a restarted worker: admission has learned the rate).
    #[arg(long)]
    no_warm_up: bool,
    /// The name the supervisor serves this model by, for the worker's log lines.
    #[arg(long, value_name = "NAME", default_value = "")]
    served_as: String,
}

/// Set to `1`: bf16 products run on AVX512-BF16 where the CPU has no AMX even where
/// they timed slower than f32 (normally f32 runs there), to test that path.
const BF16_WITHOUT_AMX: &str = "CROSSENC_BF16_WITHOUT_AMX";

/// Whether `CROSSENC_BF16_WITHOUT_AMX=1` asks for bf16 without AMX whatever it costs:
/// a test knob for the worker and `crossenc bench`, not part of the configuration.
pub fn bf16_without_amx() -> bool {
    std::env::var_os(BF16_WITHOUT_AMX).is_some_and(|v| v == "1")
}

/// Why a worker process could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerExit {
    #[error("cannot set the parent-death signal: {0}")]
    DeathSignal(nix::Error),
    #[error("the supervisor (pid {supervisor}) is gone; parent is now {parent}")]
    Orphaned { supervisor: i32, parent: i32 },
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// Runs the worker `command` names until its supervisor stops it.
pub fn run(command: WorkerCommand) -> Result<(), WorkerExit> {
    type WorkerMain = fn(&WorkerArgs) -> Result<(), WorkerError>;
    let (flags, run, kind): (_, WorkerMain, _) = match command.kind {
        WorkerKindArg::Tokenizer(flags) => (flags, crate::run_tokenizer, "tokenizer"),
        WorkerKindArg::Model(flags) => (flags, crate::run_model, "model"),
    };
    die_with_parent(flags.supervisor_pid)?;
    // Every line of this worker names it, and the model it serves.
    let span = tracing::info_span!("worker", kind, id = flags.worker_id, model = %flags.served_as);
    let _in_worker = span.enter();
    let args = WorkerArgs {
        server_name: flags.ipc_server,
        worker_id: flags.worker_id,
        model: flags.model,
        max_length: flags.max_length,
        template: flags.template,
        prefix_cache_bytes: flags.prefix_cache_bytes,
        device: flags.device,
        dtype: flags.dtype,
        bf16_without_amx: bf16_without_amx(),
        warm_up: !flags.no_warm_up,
    };
    run(&args)?;
    Ok(())
}

/// Asks the kernel to kill this worker when its supervisor dies, so that no worker
/// outlives the server; then checks that the supervisor did not die first.
fn die_with_parent(supervisor: i32) -> Result<(), WorkerExit> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(WorkerExit::DeathSignal)?;
    let parent = nix::unistd::getppid().as_raw();
    if parent != supervisor {
        return Err(WorkerExit::Orphaned { supervisor, parent });
    }
    Ok(())
}

/// The worker's log lines: in the format (`CROSSENC_LOG_FORMAT`: `text` or `json`) and
/// with the filter (`CROSSENC_LOG`) its supervisor gave it, on stderr, which the
/// supervisor forwards.
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = std::env::var("CROSSENC_LOG").unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A worker's stderr is a pipe to the supervisor: never colours.
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let lines = match std::env::var("CROSSENC_LOG_FORMAT").as_deref() {
        Ok("json") => lines
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
        _ => lines.boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .try_init();
}
