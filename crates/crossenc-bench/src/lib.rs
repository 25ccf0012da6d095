//! Measuring a crossenc server from the outside: a gRPC load generator over a workload
//! file ([`run_load`], closed or open loop), the server's own figures from its
//! /metrics ([`ServerFigures`]), and configuration sweeps ([`sweep`]) that start a
//! server per grid point and write CSV, JSON, Markdown and SVG plots; and the model
//! alone on the same workload ([`model_alone`]), for the ceiling a server should reach.
//!
//! Speed is measured here, never asserted: the tests check that the tools run and
//! report what happened, not how fast it was.

mod load;
pub mod model_alone;
mod report;
mod scrape;
mod server;
mod stats;
pub mod sweep;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use crate::load::{run_load, Bound, LoadFigures, Loop};
pub use crate::report::{bench_server, Asking, BenchReport, Target};
pub use crate::scrape::{Scrape, ServerFigures};
pub use crate::server::{listening, without_caller_settings, SpawnedServer};
pub use crate::stats::Percentiles;
pub use crate::workload::{load_workload, Query};

/// What went wrong while measuring.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: not a workload row: {message}")]
    Workload {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot read the server's /metrics at {addr}: {message}")]
    Metrics { addr: SocketAddr, message: String },
    #[error("cannot reach the server's gRPC API at {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("the server for {point} did not start: {message}")]
    Server { point: String, message: String },
    #[error("invalid sweep configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    SweepConfig(Vec<String>),
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}
