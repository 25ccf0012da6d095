//! `crossenc-cuda-worker`: a crossenc model worker that runs on NVIDIA GPUs. The CPU
//! `crossenc` supervisor starts it for `--device cuda:N`, with the same command line as
//! its own workers (`crossenc-cuda-worker worker model --device cuda:0 ...`).
//!
//! It is a binary of its own so that only it links CUDA's libraries and the driver's
//! `libcuda.so.1`: the supervisor starts on any machine, and says plainly when a GPU is
//! asked for that is not there; this starts only where CUDA is.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use crossenc_worker::command::WorkerCommand;

#[derive(Parser)]
#[command(
    name = "crossenc-cuda-worker",
    version,
    about = "crossenc's GPU model worker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one worker process. The supervisor starts these itself; not for use by hand.
    Worker(WorkerCommand),
}

fn main() -> ExitCode {
    let Command::Worker(worker) = Cli::parse().command;
    crossenc_worker::command::init_logging();
    match crossenc_worker::command::run(worker) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
