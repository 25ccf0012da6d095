//! `crossenc bench`: the scheduler's figures on a real workload.
//!
//! Against a running server, clients send each workload query as a Rerank of its
//! documents, at each concurrency asked, and the bench reports pairs/s, latency
//! percentiles and the padding the server computed (from its /metrics). In-process, it
//! also scores the same pairs on the model alone, cut into batches by the same
//! scheduler, for the ceiling the server should come close to, and works out the
//! padding of the naive one-batch-per-request baseline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use crossenc_config::ServeConfig;
use crossenc_ipc::{TokenBatch, TokenBatchBuilder};
use crossenc_model::{CrossEncoder, ModelFolder, PairTokenizer};
use crossenc_proto::v1::cross_encoder_client::CrossEncoderClient;
use crossenc_proto::v1::RerankRequest;
use crossenc_server::scheduler::{Scheduler, SchedulerLimits};
use serde::Deserialize;

#[derive(Args)]
pub struct BenchArgs {
    /// Workload: JSON lines of {"query": ..., "documents": [...]}.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "../shared/bench/workload-public.jsonl"
    )]
    workload: PathBuf,
    /// The server's gRPC address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// The server's HTTP address, for the padding it reports on /metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8000")]
    http_addr: SocketAddr,
    /// Concurrent clients; one run per value.
    #[arg(
        long,
        value_name = "N,...",
        value_delimiter = ',',
        default_value = "1,16"
    )]
    concurrency: Vec<usize>,
    /// Requests per run [default: one per workload query].
    #[arg(long, value_name = "N")]
    requests: Option<usize>,
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
}

#[derive(Debug, Clone, Deserialize)]
struct Query {
    query: String,
    documents: Vec<String>,
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
        for &clients in &args.concurrency {
            runtime.block_on(server_run(&args, &workload, clients))?;
        }
    }
    Ok(())
}

fn load_workload(path: &PathBuf) -> anyhow::Result<Vec<Query>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the workload {}", path.display()))?;
    let queries = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a query row", path.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<Query>>>()?;
    if queries.is_empty() {
        bail!("{} holds no queries", path.display());
    }
    Ok(queries)
}

/// Scores every pair in-process: the model worker's own code, the scheduler's batches.
fn model_alone(dir: &PathBuf, workload: &[Query], args: &BenchArgs) -> anyhow::Result<()> {
    let folder = ModelFolder::open(dir)?;
    let max_length = folder.max_length(None)?;
    let tokenizer = PairTokenizer::load(&folder, max_length)?;
    let model = CrossEncoder::load(&folder, crossenc_model::parse_device("cpu")?)?;
    let requests: Vec<TokenBatch> = workload
        .iter()
        .map(|q| {
            let pairs: Vec<_> = q
                .documents
                .iter()
                .map(|d| (q.query.clone(), d.clone()))
                .collect();
            crossenc_worker::encode(&tokenizer, &pairs)
        })
        .collect::<Result<_, _>>()?;
    let naive = naive_padding(&requests, args);
    let batches = scheduler_batches(&requests, args);
    let real: usize = batches.iter().map(TokenBatch::total_tokens).sum();
    let padded: usize = batches
        .iter()
        .map(|b| b.len() * b.lengths().iter().copied().max().unwrap_or(0) as usize)
        .sum();
    let pairs: usize = batches.iter().map(TokenBatch::len).sum();
    let started = Instant::now();
    for batch in &batches {
        crossenc_worker::score(&model, batch, max_length).map_err(anyhow::Error::msg)?;
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

/// What one server run measured.
struct RunFigures {
    latencies: Vec<Duration>,
    pairs: usize,
    failures: usize,
    elapsed: Duration,
}

async fn server_run(args: &BenchArgs, workload: &[Query], clients: usize) -> anyhow::Result<()> {
    let endpoint = format!("http://{}", args.grpc_addr);
    let client = CrossEncoderClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("cannot reach the server at {endpoint}"))?
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let before = scrape_tokens(args.http_addr)?;
    let figures = drive(
        client,
        workload,
        clients,
        args.requests.unwrap_or(workload.len()),
    )
    .await;
    let after = scrape_tokens(args.http_addr)?;
    let padded = after.0 - before.0;
    let real = after.1 - before.1;
    let mut latencies = figures.latencies;
    latencies.sort_unstable();
    println!(
        "server, {clients} clients: {:.1} pairs/s, Rerank p50 {:.0} ms, p99 {:.0} ms, padding {:.1}% of computed tokens, {} requests, {} failed ({:.1} s)",
        figures.pairs as f64 / figures.elapsed.as_secs_f64(),
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        100.0 * padded / (padded + real).max(1.0),
        latencies.len(),
        figures.failures,
        figures.elapsed.as_secs_f64(),
    );
    Ok(())
}

/// `clients` tasks send `requests` Reranks between them, each query in workload order.
async fn drive(
    client: CrossEncoderClient<tonic::transport::Channel>,
    workload: &[Query],
    clients: usize,
    requests: usize,
) -> RunFigures {
    let next = Arc::new(AtomicUsize::new(0));
    let workload: Arc<[Query]> = workload.into();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients.max(1))
        .map(|_| {
            let (mut client, next, workload) = (client.clone(), next.clone(), workload.clone());
            tokio::spawn(async move {
                let mut figures = (Vec::new(), 0usize, 0usize);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        return figures;
                    }
                    let query = &workload[i % workload.len()];
                    let sent = Instant::now();
                    let reply = client
                        .rerank(RerankRequest {
                            query: query.query.clone(),
                            documents: query.documents.clone(),
                            ..Default::default()
                        })
                        .await;
                    match reply {
                        Ok(_) => {
                            figures.0.push(sent.elapsed());
                            figures.1 += query.documents.len();
                        }
                        Err(status) => {
                            eprintln!("request {i} failed: {status}");
                            figures.2 += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let mut all = RunFigures {
        latencies: Vec::new(),
        pairs: 0,
        failures: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        if let Ok((latencies, pairs, failures)) = task.await {
            all.latencies.extend(latencies);
            all.pairs += pairs;
            all.failures += failures;
        }
    }
    all.elapsed = started.elapsed();
    all
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// (padded_tokens_total, total_tokens_total) from the server's /metrics.
fn scrape_tokens(addr: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let mut stream = TcpStream::connect(addr)
        .with_context(|| format!("cannot reach the server's /metrics at {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let value = |name: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("/metrics at {addr} has no {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("{name} on /metrics is not a number"))
    };
    Ok((value("padded_tokens_total")?, value("total_tokens_total")?))
}
