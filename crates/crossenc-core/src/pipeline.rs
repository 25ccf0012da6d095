//! A request's path through the workers: tokenize on the tokenizer workers, cut into
//! batches, score on the model workers, and put the scores back in request order.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossenc_ipc::{JobTiming, RequestId, Tokenized, Work, WorkerKind};
use crossenc_types::{LongDocuments, Reading, TruncationDirection};
use futures_util::future::try_join_all;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crossenc_config::ScoreActivation;
use crossenc_metrics::{ModelMetrics, StageTimes};

use crate::admission::{computed_tokens, Admission};
use crate::dispatch::{DispatchLimits, ModelDispatch};
use crate::error::{InvalidRequest, PipelineError};
use crate::scheduler::SchedulerLimits;
use crate::texts::{Chunk, RequestTexts, TextLimits};
use crate::workers::{JobError, Member, Reply, WorkerSet};

/// Pairs sent to one tokenizer job: large requests spread over the tokenizer workers.
const TOKENIZE_CHUNK: usize = 64;
/// Tokenizer jobs in each worker's queue at most: one running, one ready. The rest wait
/// in the supervisor, where a request that goes away withdraws them.
const TOKENIZER_JOBS_PER_WORKER: usize = 2;
/// Bytes of text per token of max_length that `max_text_bytes = 0` allows.
const AUTO_TEXT_BYTES_PER_TOKEN: usize = 32;
/// The share of the warm-up's throughput admission counts on until batches are measured:
/// the warm-up runs the model alone on short pairs, while a server also tokenizes and
/// batches on the same cores, and long pairs cost more per token (attention).
const WARMUP_DISCOUNT: f64 = 0.5;
/// The longest pair assumed until a worker says the model's own (BERT's 512).
const ASSUMED_MAX_LENGTH: usize = 512;

/// A request's raw scores in request order, the real tokens they cost, and where the
/// time went on its slowest path.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scores {
    pub scores: Vec<f32>,
    pub tokens: u64,
    pub stages: StageTimes,
}

/// How the pipeline batches and how much it holds.
#[derive(Debug, Clone, Copy)]
pub struct PipelineLimits {
    pub scheduler: SchedulerLimits,
    pub dispatch: DispatchLimits,
    pub max_concurrent_requests: usize,
    pub max_queued_pairs: usize,
    /// Longest text the tokenizers see; 0 for the model's max_length x 32 bytes.
    pub max_text_bytes: usize,
    pub max_text_bytes_in_flight: usize,
    /// Tokenizer worker processes configured.
    pub tokenizer_workers: usize,
    /// What turns logits into scores unless a request asks for raw ones; `None`: the
    /// model's own default.
    pub activation: Option<ScoreActivation>,
    /// How documents too long for the window are read unless a request says.
    pub long_documents: LongDocuments,
    /// Most windows a chunked document may make.
    pub max_chunks_per_doc: usize,
    /// Tokens each window repeats of the one before.
    pub chunk_overlap: usize,
}

/// How a request asks its pairs to be read; `None`: the model's configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    pub long_documents: Option<LongDocuments>,
    pub max_chunks_per_doc: Option<u32>,
    /// `Some(false)`: refuse a pair that would be cut.
    pub truncate: Option<bool>,
    pub truncation_direction: Option<TruncationDirection>,
}

/// What the workers said of the model at start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedModel {
    /// The longest pair in tokens.
    pub max_length: usize,
    /// The model's own default activation.
    pub default_activation: ScoreActivation,
    /// Whether requests may give an instruction (a decoder's template reads one).
    pub takes_instruction: bool,
    /// The model workers' warm-up throughput, admission's first estimate.
    pub warmup_tokens_per_second: Option<f64>,
}

/// The workers a request passes through, and the scheduler between them.
pub struct Pipeline {
    pub tokenizers: Arc<WorkerSet>,
    pub models: Arc<WorkerSet>,
    pub admission: Admission,
    pub dispatch: ModelDispatch,
    pub metrics: Arc<ModelMetrics>,
    /// A tokenizer worker holding one job longer is killed as hung.
    job_timeout: Duration,
    /// How long a chunk waits for a tokenizer worker while none is up.
    patience: Duration,
    activation: Option<ScoreActivation>,
    /// The configured reading: long documents, windows, overlap.
    reading: Reading,
    /// Tokenizer jobs that may be in the workers' queues at once.
    tokenizer_slots: Semaphore,
    /// `max_text_bytes` as configured (0: from the model's max_length).
    configured_text_bytes: usize,
    /// The longest pair in tokens, once a worker has said it.
    max_length: OnceLock<usize>,
    /// The model's default activation, once a worker has said it.
    default_activation: OnceLock<ScoreActivation>,
    /// Whether the model reads a request's instruction, once a worker has said it.
    takes_instruction: OnceLock<bool>,
}

impl Pipeline {
    /// Starts the model dispatch task: call within the runtime.
    pub fn start(limits: PipelineLimits, metrics: Arc<ModelMetrics>) -> Self {
        let models = Arc::<WorkerSet>::default();
        let admission = Admission::new(
            limits.max_concurrent_requests,
            limits.max_queued_pairs,
            limits.max_text_bytes_in_flight,
        );
        let dispatch = ModelDispatch::start(
            limits.scheduler,
            Arc::clone(&models),
            limits.dispatch,
            Arc::clone(&metrics),
            Arc::clone(&admission.backlog),
        );
        Self {
            tokenizers: Arc::default(),
            models,
            admission,
            dispatch,
            metrics,
            job_timeout: limits.dispatch.batch_timeout,
            patience: limits.dispatch.no_worker_patience,
            activation: limits.activation,
            reading: Reading {
                long_documents: limits.long_documents,
                max_windows: u32::try_from(limits.max_chunks_per_doc).unwrap_or(u32::MAX),
                overlap: u32::try_from(limits.chunk_overlap).unwrap_or(u32::MAX),
                ..Reading::default()
            },
            tokenizer_slots: Semaphore::new(
                limits.tokenizer_workers.max(1) * TOKENIZER_JOBS_PER_WORKER,
            ),
            configured_text_bytes: limits.max_text_bytes,
            max_length: OnceLock::new(),
            default_activation: OnceLock::new(),
            takes_instruction: OnceLock::new(),
        }
    }

    /// What the workers said at start: the model's longest pair, and the throughput of
    /// their warm-up, admission's first estimate.
    pub fn learn_model(&self, model: LearnedModel) {
        let LearnedModel {
            max_length,
            default_activation,
            takes_instruction,
            warmup_tokens_per_second,
        } = model;
        let _ = self.max_length.set(max_length);
        let _ = self.default_activation.set(default_activation);
        let _ = self.takes_instruction.set(takes_instruction);
        if let Some(rate) = warmup_tokens_per_second {
            self.admission
                .backlog
                .seed(rate * WARMUP_DISCOUNT * self.models.alive_count().max(1) as f64);
        }
    }

    fn max_length(&self) -> usize {
        self.max_length.get().copied().unwrap_or(ASSUMED_MAX_LENGTH)
    }

    /// The longest pair in tokens, once a worker has said it.
    pub fn learned_max_length(&self) -> Option<usize> {
        self.max_length.get().copied()
    }

    /// The longest text the tokenizers see; longer ones are cut.
    pub fn max_text_bytes(&self) -> usize {
        match self.configured_text_bytes {
            0 => self.max_length() * AUTO_TEXT_BYTES_PER_TOKEN,
            configured => configured,
        }
    }

    /// How a request's pairs are read: its options over the model's configuration. A
    /// request may ask for fewer windows than configured, never more.
    pub fn reading(&self, options: &ReadOptions) -> Result<Reading, InvalidRequest> {
        let mut reading = self.reading;
        if let Some(asked) = options.max_chunks_per_doc {
            if asked == 0 || asked > reading.max_windows {
                return Err(InvalidRequest::Field(format!(
                    "max_chunks_per_doc is {asked}: it must be between 1 and this model's max_chunks_per_doc ({})",
                    reading.max_windows
                )));
            }
            reading.max_windows = asked;
        }
        reading.long_documents = options.long_documents.unwrap_or(reading.long_documents);
        reading.refuse_cut = options.truncate == Some(false);
        reading.direction = options.truncation_direction.unwrap_or_default();
        Ok(reading)
    }

    fn limits(&self, reading: Reading) -> TextLimits {
        TextLimits {
            max_text_bytes: self.max_text_bytes(),
            reading,
        }
    }

    /// A Rerank's texts, each cut to `max_text_bytes` (a document to that per window it
    /// may make); `documents_field` names them in errors.
    pub fn rerank_texts(
        &self,
        query: &str,
        documents: &[String],
        documents_field: &'static str,
        reading: Reading,
    ) -> RequestTexts {
        let documents = documents.iter().map(String::as_str);
        RequestTexts::rerank(query, documents, documents_field, self.limits(reading))
    }

    /// `texts` with a request's instruction, `field` naming it in errors: refused
    /// where the model reads none, or past `max_text_bytes`.
    pub fn instructed(
        &self,
        texts: RequestTexts,
        instruction: Option<&str>,
        field: &str,
    ) -> Result<RequestTexts, InvalidRequest> {
        let accepted = self.takes_instruction.get().copied().unwrap_or(false);
        texts.with_instruction(instruction, field, accepted)
    }

    /// An Infer's (or `/score`'s) (query, document) pairs, each text cut to
    /// `max_text_bytes`.
    pub fn pair_texts<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        reading: Reading,
    ) -> RequestTexts {
        RequestTexts::pairs(pairs, "pairs", self.limits(reading))
    }

    /// The scores a client gets: raw scores through the configured activation (by
    /// default the model's own), or raw when the request asks for them.
    pub fn activate(&self, scores: Vec<f32>, raw: bool) -> Vec<f32> {
        // Before any worker has said the model's default: sentence-transformers' own.
        let activation = (self.activation)
            .or_else(|| self.default_activation.get().copied())
            .unwrap_or(ScoreActivation::Sigmoid);
        if raw || activation == ScoreActivation::Identity {
            return scores;
        }
        scores.into_iter().map(sigmoid_of).collect()
    }

    /// Both kinds of worker have at least one live member.
    pub fn is_ready(&self) -> bool {
        self.tokenizers.any_alive() && self.models.any_alive()
    }

    /// Scores `texts` in order by `deadline`, or refuses them at once: when the server
    /// is full, when the deadline cannot be met, or when a text was cut with loss.
    pub async fn score(
        &self,
        texts: RequestTexts,
        deadline: Instant,
        request: &RequestId,
    ) -> Result<Scores, PipelineError> {
        let estimate = texts.estimated_tokens(self.max_length());
        let mut ticket = {
            let _admission = tracing::info_span!("admission", pairs = texts.len()).entered();
            self.admission
                .admit(texts.len(), texts.text_bytes(), estimate, deadline)?
        };
        let chunks = texts.chunks(TOKENIZE_CHUNK);
        let encode = |chunk| self.encode(chunk, request);
        let tokenization = tracing::info_span!("tokenization", chunks = chunks.len());
        let encoded = try_join_all(chunks.iter().map(encode))
            .instrument(tokenization)
            .await?;
        let mut owners = Vec::new();
        for (chunk, (tokenized, _, chunk_owners)) in chunks.iter().zip(&encoded) {
            if let Some((pair, refusal)) = tokenized.refused {
                let field = texts.document_field(chunk.offset + pair as usize);
                return Err(InvalidRequest::Unreadable { field, refusal }.into());
            }
            if let Some(&text) = tokenized.lossy.first() {
                return Err(texts.lossy_cut(chunk, text).into());
            }
            owners.extend(chunk_owners.iter().map(|&o| chunk.offset + o as usize));
        }
        let pairs = texts.len();
        drop(chunks);
        drop(texts);
        let tokenized: Vec<_> = encoded
            .iter()
            .flat_map(|(tokenized, _, _)| tokenized.batch.iter())
            .map(|pair| pair.to_pair_tokens())
            .collect();
        // A decoder's prompt prefix is computed once for the request's pairs.
        let work = computed_tokens(tokenized.iter().map(|p| (0, p))) as u64;
        let tokens = tokenized.iter().map(|p| p.len() as u64).sum();
        // Every window is a pair the model scores: they count before any is queued.
        self.admission.widen(&mut ticket, tokenized.len() - pairs)?;
        self.admission.confirm(&mut ticket, work, deadline)?;
        ticket.release_text();
        let scoring = tracing::info_span!("scoring", pairs = tokenized.len(), tokens);
        let mut scores = (self.dispatch.score(tokenized, ticket, request))
            .instrument(scoring)
            .await?;
        if owners.len() > pairs {
            scores.scores = best_window(&scores.scores, &owners, pairs);
        }
        // Chunks run side by side: the slowest one is what the request waited for.
        let slowest = encoded
            .iter()
            .map(|(_, t, _)| *t)
            .max_by_key(|t| t.queued + t.compute)
            .unwrap_or_default();
        scores.stages.tokenization = slowest.compute;
        scores.stages.tokenizer_wait = slowest.queued;
        scores.tokens = tokens;
        Ok(scores)
    }

    /// Tokenizes one chunk: its windows, and each window's pair within the chunk. It
    /// waits for a place in a worker's queue (dropping the request withdraws it from
    /// there). A tokenizer worker that dies holding it (or hangs past the job timeout
    /// and is killed) costs the chunk one retry, alone on an idle worker: a chunk that
    /// kills that one too fails its request, and no other request's job dies with it.
    async fn encode(
        &self,
        chunk: &Chunk,
        request: &RequestId,
    ) -> Result<(Tokenized, JobTiming, Vec<u32>), PipelineError> {
        let kind = WorkerKind::Tokenizer;
        let expected = chunk.texts.len();
        let _queued = GaugeShare::add(&self.metrics.tokenizer_queue_size, expected);
        let first = {
            let _slot = self
                .tokenizer_slots
                .acquire()
                .await
                .map_err(|_| PipelineError::Stopping)?;
            submit_once(
                &self.tokenizers,
                kind,
                (Work::Encode(chunk.texts.clone()), request),
                (self.job_timeout, self.patience),
            )
            .await
        };
        let reply = match first {
            Err(PipelineError::Job(
                JobError::WorkerGone { .. } | JobError::NotDelivered { .. },
            )) => self.encode_alone(chunk, request).await?,
            answered => answered?,
        };
        match reply {
            // A batch that does not hold one valid pair per input is refused here, where
            // it would otherwise put scores at the wrong places; one in shared memory, lest
            // a worker shrink the segment under the supervisor's reads (SIGBUS).
            Reply::Encoded(tokenized, timing) => {
                let batch = &tokenized.batch;
                let owners = match tokenized.refused {
                    Some(_) => Some(Vec::new()),
                    None => tokenized.owners(expected),
                };
                match owners {
                    Some(owners) if batch.is_inline() && batch.validate().is_ok() => {
                        self.metrics
                            .tokenizer_queue_wait_latency
                            .observe(timing.queued.as_secs_f64());
                        Ok((tokenized, timing, owners))
                    }
                    _ => Err(PipelineError::WrongReply { kind }),
                }
            }
            Reply::Scored(..) => Err(PipelineError::WrongReply { kind }),
        }
    }

    /// The retry of a chunk whose worker died: alone on an idle worker.
    async fn encode_alone(
        &self,
        chunk: &Chunk,
        request: &RequestId,
    ) -> Result<Reply, PipelineError> {
        let kind = WorkerKind::Tokenizer;
        // A worker that had already died never saw the chunk: that is no second crash.
        for _ in 0..3 {
            let alone = self
                .tokenizers
                .isolate_within(self.patience)
                .await
                .ok_or(PipelineError::NoWorker(kind))?;
            let alone = alone.member();
            let pending = alone.submit(Work::Encode(chunk.texts.clone()), vec![request.clone()]);
            match alone.reply_within(pending, self.job_timeout).await {
                Err(JobError::NotDelivered { .. }) => continue,
                Err(JobError::WorkerGone { .. }) => {
                    tracing::error!(
                        %request,
                        first = chunk.offset,
                        pairs = chunk.texts.len(),
                        "texts crashed a tokenizer worker alone; failing their request"
                    );
                    return Err(PipelineError::TokenizerPoison {
                        first: chunk.offset,
                        last: chunk.offset + chunk.texts.len().saturating_sub(1),
                    });
                }
                answered => return Ok(answered?),
            }
        }
        Err(PipelineError::NoWorker(kind))
    }
}

/// Each pair's best window's raw score: a document read in windows is as relevant as
/// its most relevant passage (every activation is increasing, so the best raw score is
/// the best activated one).
fn best_window(scores: &[f32], owners: &[usize], pairs: usize) -> Vec<f32> {
    let mut best = vec![f32::NEG_INFINITY; pairs];
    for (&score, &owner) in scores.iter().zip(owners) {
        best[owner] = best[owner].max(score);
    }
    best
}

/// The score sentence-transformers' CrossEncoder gives a single-label model's logit.
fn sigmoid_of(raw: f32) -> f32 {
    1.0 / (1.0 + (-raw).exp())
}

/// Adds to a gauge for as long as it lives.
struct GaugeShare<'a> {
    gauge: &'a prometheus_client::metrics::gauge::Gauge,
    amount: i64,
}

impl<'a> GaugeShare<'a> {
    fn add(gauge: &'a prometheus_client::metrics::gauge::Gauge, amount: usize) -> Self {
        let amount = amount as i64;
        gauge.inc_by(amount);
        Self { gauge, amount }
    }
}

impl Drop for GaugeShare<'_> {
    fn drop(&mut self) {
        self.gauge.dec_by(self.amount);
    }
}

async fn submit_once(
    workers: &WorkerSet,
    kind: WorkerKind,
    (mut work, request): (Work, &RequestId),
    (timeout, patience): (Duration, Duration),
) -> Result<Reply, PipelineError> {
    loop {
        let member: Arc<Member> = workers
            .least_loaded_within(patience)
            .await
            .ok_or(PipelineError::NoWorker(kind))?;
        match member.submit_beside_others(work, std::slice::from_ref(request)) {
            Ok(pending) => return Ok(member.reply_within(pending, timeout).await?),
            // Taken for an isolated job since it was picked: pick again.
            Err(back) => work = back,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_scores_as_its_best_window() {
        let scores = [0.1, 0.9, -2.0, 0.3, 0.2];
        let owners = [0, 0, 1, 2, 2];
        assert_eq!(best_window(&scores, &owners, 3), [0.9, -2.0, 0.3]);
    }

    #[test]
    fn the_sigmoid_is_sentence_transformers_one() {
        assert_eq!(sigmoid_of(0.0), 0.5);
        assert!((sigmoid_of(2.0) - 0.880_797).abs() < 1e-6);
        assert!((sigmoid_of(-2.0) - 0.119_203).abs() < 1e-6);
    }
}
