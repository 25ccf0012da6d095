//! `crossenc`: the supervisor (`crossenc serve`) and, re-executed by it, the worker
//! processes (`crossenc worker tokenizer|model`).

mod bench;
mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CROSSENC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
