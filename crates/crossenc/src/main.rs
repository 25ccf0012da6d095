//! `crossenc`: the supervisor (`crossenc serve`) and, re-executed by it, the worker
//! processes (`crossenc worker tokenizer|model`).

mod bench;
mod cli;
mod logging;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` logs as its configuration says, once loaded; a worker as its supervisor says.
    match &cli.command {
        Command::Serve(_) => {}
        Command::Worker(_) => logging::init_worker(),
        _ => logging::init_default(),
    }
    let result = match cli.command {
        Command::Serve(args) => cli::serve(args),
        Command::Worker(worker) => cli::worker(worker),
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
