//! `crossenc bench` and `crossenc sweep`, over the crossenc-bench library.
//!
//! Against a running server, the bench sends each workload query as a Rerank of its
//! documents, closed loop at each concurrency or open loop at each rate, and reports
//! requests/s, pairs/s, tokens/s, latency percentiles, errors by code and the server's
//! own figures (padding, batch size) from its /metrics. In-process, it also scores the
//! same pairs on the model alone, cut into batches by the same scheduler, for the
//! ceiling the server should come close to, and works out the padding of the naive
//! one-batch-per-request baseline.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use crossenc_bench::model_alone::ModelAloneRun;
use crossenc_bench::sweep::SweepPlan;
use crossenc_bench::{
    bench_server, load_workload, Asking, BenchReport, Bound, Loop, Query, Target,
};
use crossenc_config::ServeConfig;
use crossenc_model::Dtype;

#[derive(Args)]
pub struct BenchArgs {
    /// Workload: JSON lines of {"query": ..., "documents": [...]}; each line is one Rerank.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "bench/workload-public.jsonl"
    )]
    workload: PathBuf,
    /// The server's gRPC address; several (comma-separated) are replicas the clients
    /// balance over, as over a headless Service.
    #[arg(
        long,
        value_name = "ADDR,...",
        value_delimiter = ',',
        default_value = "127.0.0.1:50051"
    )]
    grpc_addr: Vec<SocketAddr>,
    /// Where the server serves /metrics, for its own figures: its HTTP address, or its
    /// admin address (plain HTTP) when TLS is on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    http_addr: SocketAddr,
    /// PEM CA certificate of a server with TLS on (its certificate must name localhost).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Closed loop: concurrent clients, each sending when its last answer came; one run per value.
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "1,16"
    )]
    concurrency: Vec<usize>,
    /// Open loop instead: requests per second, due on schedule (latency counts from when
    /// each was due); one run per value.
    #[arg(
        long,
        value_name = "R,...",
        value_delimiter = ',',
        conflicts_with = "concurrency",
        value_parser = parse_rate
    )]
    rate: Vec<f64>,
    /// Requests per run [default: one per workload query].
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    requests: Option<usize>,
    /// Run for this long instead of a number of requests (e.g. 30s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Also write the reports as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The served model to load, by its name (`GET /v1/models`) [default: the server's first].
    #[arg(long, value_name = "NAME", default_value = "")]
    served_model: String,
    /// Ask for long documents in windows (`long_documents: chunk`) instead of truncation.
    #[arg(long)]
    chunk: bool,
    /// Model folder: also measure the model alone and the naive padding baseline.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Batch budgets of the model-alone run: use the server's values.
    #[arg(long, value_name = "TOKENS", default_value_t = ServeConfig::default().batching.max_batch_tokens)]
    max_batch_tokens: usize,
    #[arg(long, value_name = "PAIRS", default_value_t = ServeConfig::default().batching.max_batch_size)]
    max_batch_size: usize,
    /// Cut the model-alone run's batches as for a padded pass (pairs x longest, 10%
    /// padding at most), not by the packed CPU pass's cost.
    #[arg(long)]
    padded_budget: bool,
    /// Skip the server runs (model alone only).
    #[arg(long)]
    no_server: bool,
    /// Products of the model-alone run: `f32`, or `bf16` (then also its max score error
    /// against f32 on the same pairs).
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    dtype: Dtype,
    /// Run the model-alone pass on these kernels (`gemm-f32`, `onednn-f32`,
    /// `onednn-bf16`) instead of those timed fastest at load: to compare them in one run.
    #[arg(long, value_name = "KERNELS")]
    kernels: Option<crossenc_model::Kernels>,
    /// The model-alone run's prompt template, for a decoder reranker: a built-in
    /// (`qwen3-reranker`) or a template file.
    #[arg(long, value_name = "NAME|FILE")]
    template: Option<String>,
    /// The model-alone run's longest pair in tokens [default: the model's limit, at
    /// most 512].
    #[arg(long, value_name = "TOKENS")]
    max_length: Option<usize>,
    /// Score only the workload's first N pairs in the model-alone run (a large model
    /// on a small machine).
    #[arg(long, value_name = "N")]
    pairs: Option<usize>,
}

pub fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let workload = load_workload(&args.workload)?;
    let pairs: usize = workload.iter().map(|q| q.documents.len()).sum();
    println!(
        "workload: {} queries, {pairs} pairs ({})",
        workload.len(),
        args.workload.display()
    );
    if let Some(model) = &args.model {
        let run = ModelAloneRun {
            model: model.clone(),
            dtype: args.dtype,
            bf16_without_amx: crossenc_worker::command::bf16_without_amx(),
            kernels: args.kernels,
            max_batch_tokens: args.max_batch_tokens,
            max_batch_size: args.max_batch_size,
            padded_budget: args.padded_budget,
            template: args.template.clone(),
            max_length: args.max_length,
            pairs: args.pairs,
        };
        crossenc_bench::model_alone::run(&run, &workload).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if !args.no_server {
        let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
        let reports = runtime.block_on(server_runs(&args, workload))?;
        if let Some(path) = &args.json {
            let json = serde_json::to_string_pretty(&reports)?;
            std::fs::write(path, json)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

/// A request rate: a finite number of requests per second, above 0 and at most a million.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
    if rate.is_finite() && rate > 0.0 && rate <= 1e6 {
        Ok(rate)
    } else {
        Err(format!(
            "{rate} requests/s: must be above 0 and at most 1000000"
        ))
    }
}

/// One run per concurrency (or rate), each reported as a table row.
async fn server_runs(args: &BenchArgs, workload: Vec<Query>) -> anyhow::Result<Vec<BenchReport>> {
    let bound = match (args.duration, args.requests) {
        (Some(duration), _) => Bound::Duration(duration),
        (None, requests) => Bound::Requests(requests.unwrap_or(workload.len())),
    };
    let modes: Vec<Loop> = if args.rate.is_empty() {
        args.concurrency
            .iter()
            .map(|&clients| Loop::Closed { clients })
            .collect()
    } else {
        args.rate.iter().map(|&rate| Loop::Open { rate }).collect()
    };
    let workload: Arc<[Query]> = workload.into();
    let progress = std::io::stderr().is_terminal();
    let tls_ca = match &args.tls_ca {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?)
        }
        None => None,
    };
    let target = Target {
        grpc_addrs: args.grpc_addr.clone(),
        http_addr: args.http_addr,
        tls_ca,
        asking: Asking {
            model: args.served_model.clone(),
            chunk: args.chunk,
        },
    };
    println!("{}", BenchReport::table_header());
    let mut reports = Vec::new();
    for mode in modes {
        let report = bench_server(&target, workload.clone(), mode, bound, progress).await?;
        println!("{}", report.table_row());
        reports.push(report);
    }
    Ok(reports)
}

#[derive(Args)]
pub struct SweepArgs {
    /// The sweep file: grid, run settings, output folder (see conf/sweep.toml).
    #[arg(long, value_name = "FILE", default_value = "conf/sweep.toml")]
    config: PathBuf,
    /// Write the results here instead of the file's output.dir.
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
}

/// Runs a configuration sweep: a server per grid point, a bench per concurrency.
pub fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let mut plan = SweepPlan::load(&args.config)?;
    if let Some(output) = args.output {
        plan.output = output;
    }
    let exe =
        std::env::current_exe().context("cannot find the crossenc binary to start servers")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let progress = std::io::stderr().is_terminal();
    let results = runtime.block_on(crossenc_bench::sweep::run_sweep(&exe, &plan, progress))?;
    let summary = std::fs::read_to_string(plan.output.join("summary.md")).unwrap_or_default();
    println!("{summary}");
    println!(
        "{} runs; results.csv, results.json, summary.md and plots in {}",
        results.len(),
        plan.output.display()
    );
    Ok(())
}
