//! `crossenc`: the supervisor (`crossenc serve`) and, re-executed by it, the worker
//! processes (`crossenc worker tokenizer|model`); GPU model workers run from
//! `crossenc-cuda-worker` (crates/crossenc-cuda-worker) instead.

mod bench;
mod cli;
mod logging;
#[cfg(test)]
mod test_binaries;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` logs as its configuration says, once loaded; a worker as its supervisor says.
    match &cli.command {
        Command::Serve(_) => {}
        Command::Worker(_) => crossenc_worker::command::init_logging(),
        _ => logging::init_default(),
    }
    let result = match cli.command {
        Command::Serve(args) => cli::serve(args),
        Command::Worker(worker) => crossenc_worker::command::run(worker)
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Bench(args) => bench::bench(args).map(|()| ExitCode::SUCCESS),
        Command::Sweep(args) => bench::sweep(args).map(|()| ExitCode::SUCCESS),
        Command::Metrics => Ok(cli::metrics()),
        Command::Config(command) => Ok(crossenc_config::command::config(command, cli::check_model)),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
