//! The two worker processes of crossenc, as library functions the binary calls.
//!
//! Each connects to its supervisor, loads what it needs, says Ready (or why it could
//! not start), then answers commands one at a time until told to stop or until the
//! supervisor goes away. No async runtime: a worker does one thing at a time.

pub mod command;
mod stats;

use std::path::PathBuf;
use std::time::Instant;

use crossenc_ipc::{
    connect_to_supervisor, IpcFailure, Job, JobTiming, ScoreBatch, Stamp, StatsReport, TextPairs,
    TextRef, TokenBatch, TokenBatchBuilder, Tokenized, Work, WorkerCommand, WorkerEvent,
    WorkerInfo,
};
use crossenc_model::{
    CrossEncoder, Dtype, ModelError, ModelFolder, PackedPairs, PairTokenizer, Products,
};
use crossenc_types::{LongDocuments, PairRefusal, TruncationDirection};

pub use crate::stats::StatsSender;

/// What a worker is told on its command line.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The supervisor's one-shot IPC server.
    pub server_name: String,
    pub worker_id: u32,
    pub model: PathBuf,
    pub max_length: Option<usize>,
    /// A decoder reranker's prompt template: a built-in name or a template file.
    pub template: Option<String>,
    /// Bytes of a decoder's prompt prefixes kept across batches.
    pub prefix_cache_bytes: u64,
    /// `cpu` or `cuda:N` (model workers only).
    pub device: String,
    /// The products' number format (model workers only).
    pub dtype: Dtype,
    /// Runs bf16 products on AVX512-BF16 even where they timed slower than f32 (a CPU
    /// without AMX), to test that path: [`command::bf16_without_amx`].
    pub bf16_without_amx: bool,
    /// Scores a small batch at start for admission's first throughput figure; a
    /// restarted worker skips it (the rate is known from real batches by then), which
    /// takes a third off its restart and leaves the cores to the workers serving.
    pub warm_up: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Ipc(#[from] IpcFailure),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Tokenizes pairs for the supervisor until stopped.
pub fn run_tokenizer(args: &WorkerArgs) -> Result<(), WorkerError> {
    serve(args, |args| {
        let folder = ModelFolder::open_with(&args.model, args.template.as_deref())?;
        let max_length = folder.max_length(args.max_length)?;
        let tokenizer = PairTokenizer::load(&folder, max_length)?;
        let mut info = worker_info(&folder, max_length, "cpu");
        info.takes_instruction = tokenizer.takes_instruction();
        let poison = TextPoison::from_env();
        let handle = move |work| match work {
            Work::Encode(pairs) => {
                poison.check(&pairs);
                match encode(&tokenizer, &pairs) {
                    Ok(tokenized) => Answer::Encoded(tokenized),
                    Err(e) => Answer::Failed(e),
                }
            }
            Work::Score(_) => Answer::Failed("a tokenizer worker cannot score".into()),
        };
        Ok((info, handle))
    })
}

/// Scores token batches for the supervisor until stopped.
pub fn run_model(args: &WorkerArgs) -> Result<(), WorkerError> {
    serve(args, |args| {
        let folder = ModelFolder::open_with(&args.model, args.template.as_deref())?;
        let max_length = folder.max_length(args.max_length)?;
        let device = crossenc_model::parse_device(&args.device)?;
        let model = CrossEncoder::load_with(&folder, device, args.dtype, args.bf16_without_amx)?;
        let products = model.products();
        match products {
            Products::F32Instead { .. } => {
                tracing::warn!(worker_id = args.worker_id, "products: {products}")
            }
            _ => tracing::info!(worker_id = args.worker_id, "products: {products}"),
        }
        let c = model.config();
        tracing::info!(
            worker_id = args.worker_id,
            "model: {} ({}), labels {:?}: the raw score is {}",
            c.name,
            c.architecture,
            c.labels,
            match c.num_labels() {
                1 => "the logit".to_string(),
                _ => format!("logit {:?} less logit {:?}", c.labels[1], c.labels[0]),
            }
        );
        if let Some(kernels) = model.kernels() {
            tracing::info!(worker_id = args.worker_id, "kernels: {kernels}");
        }
        model
            .set_prefix_cache_bytes(usize::try_from(args.prefix_cache_bytes).unwrap_or(usize::MAX));
        let mut info = worker_info(&folder, max_length, &args.device);
        info.dtype = products.dtype();
        info.kernels = model
            .kernels()
            .map_or_else(|| "candle".into(), |k| k.label());
        info.warmup_tokens_per_second = args.warm_up.then(|| warm_up(&model, max_length)).flatten();
        let poison = PoisonPill::from_env(&folder, max_length)?;
        let handle = move |work| match work {
            Work::Score(batch) => match poison
                .check(&batch)
                .and_then(|()| score(&model, &batch, max_length))
            {
                Ok(scores) => Answer::Scored {
                    scores,
                    tokens: batch.total_tokens() as u64,
                },
                Err(e) => Answer::Failed(e),
            },
            Work::Encode(_) => Answer::Failed("a model worker cannot tokenize".into()),
        };
        Ok((info, handle))
    })
}

/// A fault-injection hook for the crash tests, compiled into debug builds only: with
/// `CROSSENC_FAULT_ABORT_ON=WORD`, a model worker aborts on any batch holding WORD's
/// tokens, as a native crash on a bad input would; with `CROSSENC_FAULT_HANG_ON=WORD`,
/// it stops answering instead, as a hung kernel would.
struct PoisonPill {
    #[cfg(debug_assertions)]
    markers: Vec<(Vec<u32>, Fault)>,
}

#[cfg(debug_assertions)]
#[derive(Debug, Clone, Copy)]
enum Fault {
    Abort,
    Hang,
}

impl PoisonPill {
    #[cfg(debug_assertions)]
    fn from_env(folder: &ModelFolder, max_length: usize) -> Result<Self, ModelError> {
        let mut markers = Vec::new();
        for (var, fault) in [
            ("CROSSENC_FAULT_ABORT_ON", Fault::Abort),
            ("CROSSENC_FAULT_HANG_ON", Fault::Hang),
        ] {
            let Ok(word) = std::env::var(var) else {
                continue;
            };
            // The word's own tokens, wherever a template puts it.
            let tokenizer = PairTokenizer::load(folder, max_length)?;
            let marker = tokenizer.encode_text(&word)?.ids().to_vec();
            tracing::warn!(%word, ?fault, "fault injection on for batches holding the word");
            markers.push((marker, fault));
        }
        Ok(Self { markers })
    }

    #[cfg(not(debug_assertions))]
    fn from_env(_: &ModelFolder, _: usize) -> Result<Self, ModelError> {
        Ok(Self {})
    }

    #[cfg(debug_assertions)]
    fn check(&self, batch: &TokenBatch) -> Result<(), String> {
        for (marker, fault) in self.markers.iter().filter(|(m, _)| !m.is_empty()) {
            let marked = batch.iter().any(|pair| {
                let ids: Vec<u32> = pair.ids().collect();
                ids.windows(marker.len()).any(|w| w == marker.as_slice())
            });
            if !marked {
                continue;
            }
            eprintln!("fault injection: {fault:?} on a marked pair");
            match fault {
                Fault::Abort => {
                    // As a native crash would: a plain line on stderr, then gone.
                    eprintln!("fault injection: aborting on a marked batch");
                    std::process::abort()
                }
                Fault::Hang => loop {
                    std::thread::park();
                },
            }
        }
        Ok(())
    }

    #[cfg(not(debug_assertions))]
    fn check(&self, _: &TokenBatch) -> Result<(), String> {
        Ok(())
    }
}

/// The tokenizer's fault-injection hook, in debug builds only: with
/// `CROSSENC_FAULT_TOKENIZER_ABORT_ON=WORD`, a tokenizer worker aborts on any job whose
/// texts hold WORD, as a tokenizer crashing on a hostile text would.
struct TextPoison {
    #[cfg(debug_assertions)]
    word: Option<String>,
}

impl TextPoison {
    fn from_env() -> Self {
        #[cfg(debug_assertions)]
        {
            let word = std::env::var("CROSSENC_FAULT_TOKENIZER_ABORT_ON").ok();
            if let Some(word) = &word {
                tracing::warn!(%word, "fault injection on for jobs holding the word");
            }
            Self { word }
        }
        #[cfg(not(debug_assertions))]
        Self {}
    }

    fn check(&self, _pairs: &TextPairs) {
        #[cfg(debug_assertions)]
        if let Some(word) = &self.word {
            let texts = _pairs
                .queries
                .iter()
                .chain(_pairs.pairs.iter().map(|p| &p.1));
            if texts.into_iter().any(|t| t.text.contains(word.as_str())) {
                eprintln!("fault injection: abort on a marked text");
                eprintln!("fault injection: aborting on a marked job");
                std::process::abort();
            }
        }
    }
}

/// Scores a small batch at start: the first throughput figure the supervisor's
/// admission has, before any request was scored. The best of a few runs, since the other
/// workers are loading beside it; `None` if the batch fails.
fn warm_up(model: &CrossEncoder, max_length: usize) -> Option<f64> {
    const PAIRS: usize = 8;
    const RUNS: usize = 3;
    let len = 128.min(max_length).max(2);
    let mut pairs = PackedPairs::with_capacity(PAIRS, PAIRS * len);
    for pair in 0..PAIRS {
        // Ids 100.. are ordinary word pieces in BERT's and RoBERTa's vocabularies.
        let ids = (0..len).map(|i| 100 + ((pair * 31 + i * 7) % 900) as u32);
        let type_ids: Vec<u8> = (0..len).map(|i| u8::from(i >= len / 2)).collect();
        pairs.push(ids, &type_ids);
    }
    let mut best = f64::INFINITY;
    for _ in 0..RUNS {
        let started = Instant::now();
        model.score_pairs(&pairs).ok()?;
        best = best.min(started.elapsed().as_secs_f64().max(1e-6));
    }
    Some((PAIRS * len) as f64 / best)
}

/// What a job came to, before it is put on the wire.
enum Answer {
    Encoded(Tokenized),
    Scored { scores: Vec<f32>, tokens: u64 },
    Failed(String),
}

impl Answer {
    /// The event that answers job `job`, and the job's figures (none for a failed job:
    /// it processed no pairs).
    fn into_event(self, job: u64, timing: JobTiming) -> (WorkerEvent, Option<StatsReport>) {
        let report = |pairs: usize, tokens: u64| StatsReport {
            pairs: pairs as u32,
            tokens,
            compute: timing.compute,
            ..StatsReport::default()
        };
        match self {
            Answer::Encoded(tokenized) => {
                let batch = &tokenized.batch;
                let stats = report(batch.len(), batch.total_tokens() as u64);
                let event = WorkerEvent::Encoded {
                    job,
                    tokenized,
                    timing,
                };
                (event, Some(stats))
            }
            Answer::Scored { scores, tokens } => {
                let stats = report(scores.len(), tokens);
                let scores = ScoreBatch::new(&scores);
                let event = WorkerEvent::Scored {
                    job,
                    scores,
                    timing,
                };
                (event, Some(stats))
            }
            Answer::Failed(message) => (WorkerEvent::JobFailed { job, message }, None),
        }
    }
}

/// The loop both workers share: connect, load, say Ready, answer commands, and report
/// each job's figures on the stats channel.
fn serve<H>(
    args: &WorkerArgs,
    load: impl FnOnce(&WorkerArgs) -> Result<(WorkerInfo, H), ModelError>,
) -> Result<(), WorkerError>
where
    H: FnMut(Work) -> Answer,
{
    let link = connect_to_supervisor(&args.server_name)?;
    let events = link.events;
    let mut stats = StatsSender::start(link.stats);
    let (info, mut handle) = match load(args) {
        Ok(loaded) => loaded,
        Err(error) => {
            let _ = events.send(WorkerEvent::StartFailed {
                message: error.to_string(),
            });
            return Err(error.into());
        }
    };
    tracing::info!(worker_id = args.worker_id, model = %info.model_name, "worker ready");
    send(&events, WorkerEvent::Ready(info))?;
    // Shutdown, or a receive error (the supervisor is gone): nothing is left to do.
    while let Ok(WorkerCommand::Run(job)) = link.commands.recv() {
        let Job {
            id,
            work,
            requests,
            sent_at,
        } = job;
        // Every line about this job names the requests it serves.
        let span =
            tracing::info_span!("job", job = id, requests = %crossenc_ipc::joined(&requests));
        let _in_job = span.enter();
        let queued = sent_at.elapsed();
        let started = Instant::now();
        let answer = handle(work);
        let timing = JobTiming {
            queued,
            compute: started.elapsed(),
            sent_at: Stamp::now(),
        };
        tracing::debug!(
            queued_ms = timing.queued.as_secs_f64() * 1e3,
            compute_ms = timing.compute.as_secs_f64() * 1e3,
            "job done"
        );
        let (event, report) = answer.into_event(id, timing);
        let sending = Instant::now();
        send(&events, event)?;
        if let Some(mut report) = report {
            report.answer_send = sending.elapsed();
            stats.report(report);
        }
    }
    Ok(())
}

fn send(
    events: &crossenc_ipc::IpcSender<WorkerEvent>,
    event: WorkerEvent,
) -> Result<(), IpcFailure> {
    events.send(event).map_err(|e| IpcFailure::Channel {
        doing: "send an event to the supervisor",
        message: e.to_string(),
    })
}

fn worker_info(folder: &ModelFolder, max_length: usize, device: &str) -> WorkerInfo {
    WorkerInfo {
        max_length,
        model_name: folder.config.name.clone(),
        architecture: folder.config.architecture.to_string(),
        template: folder
            .config
            .template
            .as_ref()
            .map_or_else(String::new, |t| t.name.clone()),
        takes_instruction: false,
        default_activation: folder.config.activation,
        warmup_tokens_per_second: None,
        device: device.to_string(),
        dtype: Dtype::F32,
        kernels: String::new(),
    }
}

/// Tokenizes pairs as their request's reading asks (truncated, or in windows), as a
/// tokenizer worker does for each job, and names the cut texts whose cut changed the
/// tokens the model would read. A pair refused as the reading asked ends the job: its
/// request is refused whole.
pub fn encode(tokenizer: &PairTokenizer, texts: &TextPairs) -> Result<Tokenized, String> {
    let failed = |e: ModelError| e.to_string();
    let pairs = texts
        .resolve()
        .map_err(|i| format!("pair {i} names a query the job does not hold"))?;
    let mut batch = TokenBatchBuilder::with_capacity(pairs.len(), pairs.len() * 64);
    let mut windows = Vec::with_capacity(pairs.len());
    let mut type_ids = Vec::new();
    let (instruction, reading) = (texts.instruction.as_deref(), &texts.reading);
    for (i, (query, document)) in pairs.iter().enumerate() {
        let read = tokenizer
            .read(&query.text, &document.text, instruction, reading)
            .map_err(failed)?;
        let read = match read {
            Ok(read) => read,
            Err(refusal) => return Ok(refused(i, refusal)),
        };
        windows.push(read.len() as u32);
        for encoded in read {
            type_ids.clear();
            // Type ids are 0 or 1 for BERT; a u8 keeps the shared memory small.
            type_ids.extend(encoded.type_ids().iter().map(|&t| t as u8));
            let shared = encoded.shared() as u32;
            batch.push_shared(encoded.ids().iter().copied(), &type_ids, shared);
        }
    }
    if windows.iter().all(|&w| w == 1) {
        windows.clear();
    }
    let lossy = lossy_cuts(tokenizer, texts)?;
    // Inline: the supervisor maps no memory a worker holds.
    Ok(Tokenized {
        batch: batch.finish_inline(),
        windows,
        lossy,
        refused: None,
    })
}

fn refused(pair: usize, refusal: PairRefusal) -> Tokenized {
    Tokenized {
        batch: TokenBatchBuilder::default().finish_inline(),
        windows: Vec::new(),
        lossy: Vec::new(),
        refused: Some((pair as u32, refusal)),
    }
}

/// The texts that arrived cut (to max_text_bytes) and whose cut changed what the model
/// reads. Read from its end, or in windows to its end, a document loses what the cut
/// took: any cut one is lost.
fn lossy_cuts(tokenizer: &PairTokenizer, texts: &TextPairs) -> Result<Vec<TextRef>, String> {
    let failed = |e: ModelError| e.to_string();
    let reading = &texts.reading;
    let reads_to_the_end = reading.long_documents == LongDocuments::Chunk
        || reading.direction == TruncationDirection::Left;
    let cut = |text: &crossenc_ipc::Text| Cut::of(tokenizer, text);
    let queries = texts
        .queries
        .iter()
        .map(cut)
        .collect::<Result<Vec<_>, _>>()?;
    let mut lossy = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        if *query == Cut::Lost {
            lossy.push(TextRef::Query(i as u32));
        }
    }
    let length = |text: &crossenc_ipc::Text| -> Result<usize, String> {
        Ok(tokenizer.encode_text(&text.text).map_err(failed)?.len())
    };
    for (i, (q, document)) in texts.pairs.iter().enumerate() {
        let (query, q) = (&queries[*q as usize], *q);
        if reads_to_the_end && document.is_cut() {
            lossy.push(TextRef::Document(i as u32));
            continue;
        }
        let decided = match (*query, cut(document)?) {
            (_, Cut::Lost) => false,
            (Cut::Kept(_), Cut::Kept(kept)) => tokenizer.cut_splits_as_whole(kept, None),
            (Cut::Kept(kept), Cut::Whole) => {
                let other = length(document)?;
                if !tokenizer.cut_splits_as_whole(kept, Some(other)) {
                    lossy.push(TextRef::Query(q));
                }
                true
            }
            (Cut::Whole, Cut::Kept(kept)) => {
                let other = length(&texts.queries[q as usize])?;
                tokenizer.cut_splits_as_whole(kept, Some(other))
            }
            _ => true,
        };
        if !decided {
            lossy.push(TextRef::Document(i as u32));
        }
    }
    lossy.sort_by_key(|text| match text {
        TextRef::Query(i) => (0, *i),
        TextRef::Document(i) => (1, *i),
    });
    lossy.dedup();
    Ok(lossy)
}

/// What the check found for one text of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Not cut.
    Whole,
    /// Cut, every token kept; the tokens the whole surely has.
    Kept(usize),
    /// Cut, and the cut changed tokens the model reads.
    Lost,
}

impl Cut {
    fn of(tokenizer: &PairTokenizer, text: &crossenc_ipc::Text) -> Result<Self, String> {
        if !text.is_cut() {
            return Ok(Cut::Whole);
        }
        let encoded = tokenizer
            .encode_text(&text.text)
            .map_err(|e| e.to_string())?;
        let kept = tokenizer.tokens_before_the_cut(&encoded);
        Ok(match tokenizer.prefix_keeps_every_token(kept) {
            true => Cut::Kept(kept),
            false => Cut::Lost,
        })
    }
}

/// Scores one batch, as a model worker does for each job: raw logits, in batch order.
pub fn score(
    model: &CrossEncoder,
    batch: &TokenBatch,
    max_length: usize,
) -> Result<Vec<f32>, String> {
    batch.validate()?;
    let width = batch.lengths().iter().copied().max().unwrap_or(0) as usize;
    if width == 0 || width > max_length {
        return Err(format!(
            "batch holds a pair of {width} tokens; pairs must have 1 to {max_length}"
        ));
    }
    let mut pairs = PackedPairs::with_capacity(batch.len(), batch.total_tokens());
    for pair in batch.iter() {
        if pair.is_empty() {
            return Err("batch holds an empty pair".into());
        }
        pairs.push_shared(pair.ids(), pair.type_ids(), pair.shared());
    }
    model.score_pairs(&pairs).map_err(|e| e.to_string())
}
