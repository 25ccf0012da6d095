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
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use crossenc_bench::sweep::SweepPlan;
use crossenc_bench::{bench_server, load_workload, BenchReport, Bound, Loop, Query};
use crossenc_config::ServeConfig;
use crossenc_ipc::{TokenBatch, TokenBatchBuilder};
use crossenc_model::{CrossEncoder, ModelFolder, PairTokenizer, Precision};
use crossenc_server::scheduler::{Scheduler, SchedulerLimits};

#[derive(Args)]
pub struct BenchArgs {
    /// Workload: JSON lines of {"query": ..., "documents": [...]}; each line is one Rerank.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "bench/workload-public.jsonl"
    )]
    workload: PathBuf,
    /// The server's gRPC address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// The server's HTTP address, for its own figures on /metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    http_addr: SocketAddr,
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
    /// Model folder: also measure the model alone and the naive padding baseline.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Batch budgets of the model-alone run: use the server's values.
    #[arg(long, value_name = "TOKENS", default_value_t = ServeConfig::default().batching.max_batch_tokens)]
    max_batch_tokens: usize,
    #[arg(long, value_name = "PAIRS", default_value_t = ServeConfig::default().batching.max_batch_size)]
    max_batch_size: usize,
    /// Skip the server runs (model alone only).
    #[arg(long)]
    no_server: bool,
    /// Products of the model-alone run: `f32`, or `bf16` (then also its max score error
    /// against f32 on the same pairs).
    #[arg(long, value_name = "DTYPE", default_value = "f32", value_parser = crate::cli::parse_precision)]
    dtype: Precision,
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
        model_alone(model, &workload, &args)?;
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
    println!("{}", BenchReport::table_header());
    let mut reports = Vec::new();
    for mode in modes {
        let report = bench_server(
            args.grpc_addr,
            args.http_addr,
            workload.clone(),
            mode,
            bound,
            progress,
        )
        .await?;
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

/// Scores every pair in-process: the model worker's own code, the scheduler's batches.
fn model_alone(dir: &PathBuf, workload: &[Query], args: &BenchArgs) -> anyhow::Result<()> {
    let folder = ModelFolder::open(dir)?;
    let max_length = folder.max_length(None)?;
    let tokenizer = PairTokenizer::load(&folder, max_length)?;
    let cpu = crossenc_model::parse_device("cpu")?;
    let model = CrossEncoder::load(&folder, cpu.clone(), args.dtype)?;
    println!("model alone: products {}", model.products());
    let requests: Vec<TokenBatch> = workload
        .iter()
        .map(|q| {
            let whole = |text: &str| crossenc_ipc::Text::cut(text, text.len());
            let pairs = crossenc_ipc::TextPairs {
                queries: vec![whole(&q.query)],
                pairs: q.documents.iter().map(|d| (0, whole(d))).collect(),
            };
            crossenc_worker::encode(&tokenizer, &pairs).map(|(batch, _)| batch)
        })
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let naive = naive_padding(&requests, args);
    let batches = scheduler_batches(&requests, args);
    let real: usize = batches.iter().map(TokenBatch::total_tokens).sum();
    let padded: usize = batches
        .iter()
        .map(|b| b.len() * b.lengths().iter().copied().max().unwrap_or(0) as usize)
        .sum();
    let pairs: usize = batches.iter().map(TokenBatch::len).sum();
    let started = Instant::now();
    let mut scores = Vec::with_capacity(batches.len());
    for batch in &batches {
        scores.push(crossenc_worker::score(&model, batch, max_length).map_err(anyhow::Error::msg)?);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "naive batch-per-request padding: {:.1}% of computed tokens",
        naive * 100.0
    );
    println!(
        "model alone, scheduler batches: {:.1} pairs/s, {:.0} tokens/s, {} batches, padding {:.1}% ({:.1} s)",
        pairs as f64 / seconds,
        real as f64 / seconds,
        batches.len(),
        100.0 * (padded - real) as f64 / padded as f64,
        seconds
    );
    if args.dtype != Precision::F32 {
        let reference = CrossEncoder::load(&folder, cpu, Precision::F32)?;
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let (mut raw, mut squashed) = (0.0f32, 0.0f32);
        for (batch, scores) in batches.iter().zip(&scores) {
            let exact = crossenc_worker::score(&reference, batch, max_length)
                .map_err(anyhow::Error::msg)?;
            for (a, b) in scores.iter().zip(&exact) {
                raw = raw.max((a - b).abs());
                squashed = squashed.max((sigmoid(*a) - sigmoid(*b)).abs());
            }
        }
        println!(
            "max score error against f32 over {pairs} pairs: {raw:.2e} in raw logits, \
             {squashed:.2e} after sigmoid"
        );
    }
    Ok(())
}

/// Share of computed tokens that are padding when each request is its own batch (split
/// only where the budgets force it), as a server without a scheduler would run it.
fn naive_padding(requests: &[TokenBatch], args: &BenchArgs) -> f64 {
    let (mut real, mut padded) = (0usize, 0usize);
    for request in requests {
        let lengths = request.lengths();
        let mut start = 0;
        while start < lengths.len() {
            let mut end = start;
            let mut longest = 0;
            while end < lengths.len() {
                let candidate = longest.max(lengths[end] as usize);
                let size = end - start + 1;
                if end > start
                    && (size > args.max_batch_size || size * candidate > args.max_batch_tokens)
                {
                    break;
                }
                longest = candidate;
                end += 1;
            }
            real += lengths[start..end]
                .iter()
                .map(|&l| l as usize)
                .sum::<usize>();
            padded += (end - start) * longest;
            start = end;
        }
    }
    (padded - real) as f64 / padded as f64
}

/// The batches the scheduler cuts when every pair of the workload waits at once.
fn scheduler_batches(requests: &[TokenBatch], args: &BenchArgs) -> Vec<TokenBatch> {
    let limits = SchedulerLimits {
        max_batch_tokens: args.max_batch_tokens,
        max_batch_size: args.max_batch_size,
        max_batch_delay: Duration::ZERO,
    };
    let mut scheduler = Scheduler::new(limits);
    let now = Instant::now();
    for (r, request) in requests.iter().enumerate() {
        for pair in request.iter() {
            scheduler.push(r as u64, pair.len(), pair.to_pair_tokens(), now);
        }
    }
    let mut batches = Vec::new();
    while let Some(batch) = scheduler.next_batch(now) {
        let mut builder = TokenBatchBuilder::with_capacity(batch.pairs.len(), batch.real_tokens);
        for (pair, _) in &batch.pairs {
            builder.push_pair(pair);
        }
        batches.push(builder.finish());
    }
    batches
}
