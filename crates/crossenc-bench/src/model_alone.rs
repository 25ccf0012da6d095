//! The model alone on a workload: every pair tokenized and scored in-process by the
//! model worker's own code, cut into batches by the server's scheduler, for the ceiling
//! a server should come close to; and the padding of the naive one-batch-per-request
//! baseline. With bf16, the largest score error against f32 on the same pairs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossenc_core::scheduler::{BatchCost, Scheduler, SchedulerLimits};
use crossenc_ipc::{TokenBatch, TokenBatchBuilder};
use crossenc_model::{CrossEncoder, Dtype, Kernels, ModelFolder, PairTokenizer};

use crate::Query;

/// What to run the model alone on, and how the scheduler cuts batches.
#[derive(Debug, Clone)]
pub struct ModelAloneRun {
    pub model: PathBuf,
    pub dtype: Dtype,
    /// bf16 on AVX512-BF16 even where it timed slower than f32 (no AMX).
    pub bf16_without_amx: bool,
    /// Kernels to run on instead of those timed fastest at load.
    pub kernels: Option<Kernels>,
    pub max_batch_tokens: usize,
    pub max_batch_size: usize,
    /// Batches budgeted as for a padded pass instead of the packed pass's cost.
    pub padded_budget: bool,
    /// A decoder reranker's prompt template.
    pub template: Option<String>,
    /// The longest pair; `None`: the model's limit, at most 512.
    pub max_length: Option<usize>,
    /// Only the workload's first pairs, in file order.
    pub pairs: Option<usize>,
}

/// Scores every pair in-process: the model worker's own code, the scheduler's batches.
pub fn run(args: &ModelAloneRun, workload: &[Query]) -> Result<(), Box<dyn std::error::Error>> {
    let folder = ModelFolder::open_with(&args.model, args.template.as_deref())?;
    let max_length = folder.max_length(args.max_length)?;
    let tokenizer = PairTokenizer::load(&folder, max_length)?;
    let cpu = crossenc_model::parse_device("cpu")?;
    let model = match args.kernels {
        Some(kernels) => CrossEncoder::load_on(&folder, kernels)?,
        None => CrossEncoder::load_with(&folder, cpu, args.dtype, args.bf16_without_amx)?,
    };
    println!("model alone: products {}", model.products());
    if let Some(kernels) = model.kernels() {
        println!("model alone: kernels {kernels}");
    }
    let mut left = args.pairs.unwrap_or(usize::MAX);
    let requests: Vec<TokenBatch> = workload
        .iter()
        .map_while(|q| {
            let taken = q.documents.len().min(left);
            left -= taken;
            (taken > 0).then_some((q, taken))
        })
        .map(|(q, taken)| {
            let whole = |text: &str| crossenc_ipc::Text::cut(text, text.len());
            let pairs = crossenc_ipc::TextPairs {
                queries: vec![whole(&q.query)],
                pairs: q.documents[..taken].iter().map(|d| (0, whole(d))).collect(),
                ..Default::default()
            };
            crossenc_worker::encode(&tokenizer, &pairs).map(|tokenized| tokenized.batch)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let naive = naive_padding(&requests, args);
    let cost = match args.padded_budget {
        true => BatchCost::Padded,
        false => BatchCost::packed(folder.config.attention_span()),
    };
    let batches = scheduler_batches(&requests, args, cost);
    let real: usize = batches.iter().map(TokenBatch::total_tokens).sum();
    let padded: usize = batches
        .iter()
        .map(|b| b.len() * b.lengths().iter().copied().max().unwrap_or(0) as usize)
        .sum();
    let pairs: usize = batches.iter().map(TokenBatch::len).sum();
    let started = Instant::now();
    let mut scores = Vec::with_capacity(batches.len());
    for batch in &batches {
        scores.push(crossenc_worker::score(&model, batch, max_length).map_err(|e| e.to_string())?);
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "naive batch-per-request padding: {:.1}% of the padded shape",
        naive * 100.0
    );
    println!(
        "model alone, scheduler batches: {:.1} pairs/s, {:.0} tokens/s, {} batches of {:.1} pairs ({cost:?}), padding {:.1}% ({:.1} s)",
        pairs as f64 / seconds,
        real as f64 / seconds,
        batches.len(),
        pairs as f64 / batches.len().max(1) as f64,
        100.0 * (padded - real) as f64 / padded as f64,
        seconds
    );
    let flops: f64 = (batches.iter())
        .flat_map(|b| {
            b.lengths()
                .iter()
                .map(|&l| folder.config.pair_flops(l as usize))
        })
        .sum();
    println!(
        "model alone, work: {:.1} GFLOP a pair (every layer, every token: no shortcut \
         counted), {:.1} GFLOP/s",
        flops / 1e9 / pairs.max(1) as f64,
        flops / 1e9 / seconds
    );
    if args.dtype != Dtype::F32 || args.kernels.is_some() {
        let reference = CrossEncoder::load_on(&folder, Kernels::Gemm)?;
        let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
        let (mut raw, mut squashed) = (0.0f32, 0.0f32);
        for (batch, scores) in batches.iter().zip(&scores) {
            let exact =
                crossenc_worker::score(&reference, batch, max_length).map_err(|e| e.to_string())?;
            for (a, b) in scores.iter().zip(&exact) {
                raw = raw.max((a - b).abs());
                squashed = squashed.max((sigmoid(*a) - sigmoid(*b)).abs());
            }
        }
        println!(
            "max score error against f32 on gemm over {pairs} pairs: {raw:.2e} in raw \
             logits, {squashed:.2e} after sigmoid"
        );
    }
    Ok(())
}

/// Share of the padded shape that is padding when each request is its own batch (split
/// only where the budgets force it), as a server without a scheduler would run it.
fn naive_padding(requests: &[TokenBatch], args: &ModelAloneRun) -> f64 {
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
fn scheduler_batches(
    requests: &[TokenBatch],
    args: &ModelAloneRun,
    cost: BatchCost,
) -> Vec<TokenBatch> {
    let limits = SchedulerLimits {
        max_batch_tokens: args.max_batch_tokens,
        cost,
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
