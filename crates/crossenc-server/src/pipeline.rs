//! A request's path through the workers: tokenize on the tokenizer workers, cut into
//! batches, score on the model workers, and put the scores back in request order.

use std::sync::Arc;
use std::time::Duration;

use crossenc_ipc::{JobTiming, TokenBatch, Work, WorkerKind};
use futures_util::future::try_join_all;

use crate::admission::{Admission, Refused};
use crate::dispatch::{DispatchLimits, ModelDispatch};
use crate::metrics::{Metrics, StageTimes};
use crate::pool::{JobError, Reply, WorkerSet};
use crate::scheduler::SchedulerLimits;
use crate::scoring::activate;
use crossenc_config::Activation;

/// Pairs sent to one tokenizer job: large requests spread over the tokenizer workers.
const TOKENIZE_CHUNK: usize = 64;

/// Why a request's pairs were not scored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("no {0} worker is ready; retry shortly")]
    NoWorker(WorkerKind),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("{kind} worker answered a job with the wrong reply")]
    WrongReply { kind: WorkerKind },
    #[error("a model worker returned {got} scores for {expected} pairs")]
    ScoreCount { expected: usize, got: usize },
    #[error("the server is stopping")]
    Stopping,
    #[error("pair {index} of this request crashed two model workers; it is not retried")]
    Poison { index: u32 },
}

/// Raw logits in request order, the real tokens they cost, and where the time went.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
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
    /// What turns logits into scores unless a request asks for raw ones.
    pub activation: Activation,
}

/// The workers a request passes through, and the scheduler between them.
pub struct Pipeline {
    pub tokenizers: Arc<WorkerSet>,
    pub models: Arc<WorkerSet>,
    pub admission: Admission,
    pub dispatch: ModelDispatch,
    pub metrics: Arc<Metrics>,
    /// A tokenizer worker holding one job longer is killed as hung.
    job_timeout: Duration,
    /// How long a chunk waits for a tokenizer worker while none is up.
    patience: Duration,
    activation: Activation,
}

impl Pipeline {
    /// Starts the model dispatch task: call within the runtime.
    pub fn start(limits: PipelineLimits, metrics: Arc<Metrics>) -> Self {
        let models = Arc::<WorkerSet>::default();
        let dispatch = ModelDispatch::start(
            limits.scheduler,
            Arc::clone(&models),
            limits.dispatch,
            Arc::clone(&metrics),
        );
        Self {
            tokenizers: Arc::default(),
            models,
            admission: Admission::new(limits.max_concurrent_requests, limits.max_queued_pairs),
            dispatch,
            metrics,
            job_timeout: limits.dispatch.batch_timeout,
            patience: limits.dispatch.no_worker_patience,
            activation: limits.activation,
        }
    }

    /// The scores a client gets: logits through the configured activation, or raw
    /// when the request asks for them.
    pub fn activate(&self, scores: Vec<f32>, raw: bool) -> Vec<f32> {
        activate(scores, raw || self.activation == Activation::Identity)
    }

    /// Both kinds of worker have at least one live member.
    pub fn is_ready(&self) -> bool {
        self.tokenizers.any_alive() && self.models.any_alive()
    }

    /// Scores `pairs` in order, or refuses them at once when the server is full.
    pub async fn score(&self, pairs: Vec<(String, String)>) -> Result<Scored, PipelineError> {
        let ticket = self.admission.admit(pairs.len())?;
        let chunks = self.tokenize(pairs).await?;
        let tokenized: Vec<_> = chunks
            .iter()
            .flat_map(|(batch, _)| batch.iter())
            .map(|pair| pair.to_pair_tokens())
            .collect();
        let tokens = tokenized.iter().map(|p| p.len() as u64).sum();
        let scored = self.dispatch.score(tokenized, ticket.pairs).await?;
        // Chunks run side by side: the slowest one is what the request waited for.
        let slowest = chunks
            .iter()
            .map(|(_, t)| *t)
            .max_by_key(|t| t.queued + t.compute)
            .unwrap_or_default();
        let stages = StageTimes {
            tokenization: slowest.compute,
            tokenizer_wait: slowest.queued,
            model_wait: scored.model_wait,
            inference: scored.inference,
        };
        Ok(Scored {
            scores: scored.scores,
            tokens,
            stages,
        })
    }

    async fn tokenize(
        &self,
        mut pairs: Vec<(String, String)>,
    ) -> Result<Vec<(TokenBatch, JobTiming)>, PipelineError> {
        let mut chunks = Vec::new();
        while pairs.len() > TOKENIZE_CHUNK {
            let rest = pairs.split_off(TOKENIZE_CHUNK);
            chunks.push(std::mem::replace(&mut pairs, rest));
        }
        chunks.push(pairs);
        try_join_all(chunks.into_iter().map(|chunk| self.encode(chunk))).await
    }

    /// Tokenizes one chunk. A tokenizer worker that dies holding it (or hangs past the
    /// job timeout and is killed) costs the chunk one retry on another or the respawned
    /// worker; while none is up, the chunk waits for one up to the dispatch's patience.
    async fn encode(
        &self,
        chunk: Vec<(String, String)>,
    ) -> Result<(TokenBatch, JobTiming), PipelineError> {
        let kind = WorkerKind::Tokenizer;
        let expected = chunk.len();
        let _queued = GaugeShare::add(&self.metrics.tokenizer_queue_size, expected);
        // The copy is the text of at most TOKENIZE_CHUNK pairs: small beside tokenizing it.
        let first = submit_once(
            &self.tokenizers,
            kind,
            Work::Encode(chunk.clone()),
            (self.job_timeout, self.patience),
        );
        let reply = match first.await {
            Err(PipelineError::Job(
                JobError::WorkerGone { .. } | JobError::NotDelivered { .. },
            )) => {
                submit_once(
                    &self.tokenizers,
                    kind,
                    Work::Encode(chunk),
                    (self.job_timeout, self.patience),
                )
                .await?
            }
            answered => answered?,
        };
        match reply {
            // A batch that does not hold one valid pair per input is refused here, where
            // it would otherwise put scores at the wrong places.
            Reply::Encoded(batch, timing)
                if batch.len() == expected && batch.validate().is_ok() =>
            {
                self.metrics
                    .tokenizer_queue_wait_latency
                    .observe(timing.queued.as_secs_f64());
                Ok((batch, timing))
            }
            _ => Err(PipelineError::WrongReply { kind }),
        }
    }
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
    work: Work,
    (timeout, patience): (Duration, Duration),
) -> Result<Reply, PipelineError> {
    let worker = workers
        .least_loaded_within(patience)
        .await
        .ok_or(PipelineError::NoWorker(kind))?;
    let answer = worker.submit(work);
    Ok(worker.answer_within(answer, timeout).await?)
}
