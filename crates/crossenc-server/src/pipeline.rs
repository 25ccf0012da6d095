//! A request's path through the workers: tokenize on the tokenizer workers, cut into
//! batches, score on the model workers, and put the scores back in request order.

use std::sync::Arc;

use crossenc_ipc::{TokenBatch, TokenBatchBuilder, Work, WorkerKind};
use futures_util::future::try_join_all;

use crate::batching::{plan_batches, BatchLimits};
use crate::pool::{JobError, Reply, WorkerSet};

/// Pairs sent to one tokenizer job: large requests spread over the tokenizer workers.
const TOKENIZE_CHUNK: usize = 64;

/// Why a request's pairs were not scored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    #[error("no {0} worker is ready; retry shortly")]
    NoWorker(WorkerKind),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("{kind} worker answered a job with the wrong reply")]
    WrongReply { kind: WorkerKind },
    #[error("a model worker returned {got} scores for {expected} pairs")]
    ScoreCount { expected: usize, got: usize },
}

/// Raw logits in request order, and the real tokens they cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub scores: Vec<f32>,
    pub tokens: u64,
}

/// The workers a request passes through.
pub struct Pipeline {
    pub tokenizers: Arc<WorkerSet>,
    pub models: Arc<WorkerSet>,
    limits: BatchLimits,
}

impl Pipeline {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            tokenizers: Arc::default(),
            models: Arc::default(),
            limits,
        }
    }

    /// Both kinds of worker have at least one live member.
    pub fn is_ready(&self) -> bool {
        self.tokenizers.any_alive() && self.models.any_alive()
    }

    pub async fn score(&self, pairs: Vec<(String, String)>) -> Result<Scored, PipelineError> {
        let tokenized = self.tokenize(pairs).await?;
        let views: Vec<_> = tokenized.iter().flat_map(TokenBatch::iter).collect();
        let lengths: Vec<usize> = views.iter().map(|p| p.len()).collect();
        let batches: Vec<(Vec<usize>, TokenBatch)> = plan_batches(&lengths, self.limits)
            .into_iter()
            .map(|indices| {
                let tokens = indices.iter().map(|&i| lengths[i]).sum();
                let mut builder = TokenBatchBuilder::with_capacity(indices.len(), tokens);
                for &i in &indices {
                    builder.push(views[i].ids(), views[i].type_ids());
                }
                (indices, builder.finish())
            })
            .collect();
        let scored = try_join_all(batches.into_iter().map(|(indices, batch)| async move {
            let scores = self.run_model(batch).await?;
            if scores.len() != indices.len() {
                return Err(PipelineError::ScoreCount {
                    expected: indices.len(),
                    got: scores.len(),
                });
            }
            Ok((indices, scores))
        }))
        .await?;
        let mut scores = vec![0f32; lengths.len()];
        for (indices, batch_scores) in scored {
            for (i, score) in indices.into_iter().zip(batch_scores) {
                scores[i] = score;
            }
        }
        Ok(Scored {
            scores,
            tokens: lengths.iter().sum::<usize>() as u64,
        })
    }

    async fn tokenize(
        &self,
        mut pairs: Vec<(String, String)>,
    ) -> Result<Vec<TokenBatch>, PipelineError> {
        let mut chunks = Vec::new();
        while pairs.len() > TOKENIZE_CHUNK {
            let rest = pairs.split_off(TOKENIZE_CHUNK);
            chunks.push(std::mem::replace(&mut pairs, rest));
        }
        chunks.push(pairs);
        try_join_all(chunks.into_iter().map(|chunk| async move {
            match submit(&self.tokenizers, WorkerKind::Tokenizer, Work::Encode(chunk)).await? {
                Reply::Encoded(batch) => Ok(batch),
                Reply::Scored(_) => Err(PipelineError::WrongReply {
                    kind: WorkerKind::Tokenizer,
                }),
            }
        }))
        .await
    }

    async fn run_model(&self, batch: TokenBatch) -> Result<Vec<f32>, PipelineError> {
        match submit(&self.models, WorkerKind::Model, Work::Score(batch)).await? {
            Reply::Scored(scores) => Ok(scores.to_vec()),
            Reply::Encoded(_) => Err(PipelineError::WrongReply {
                kind: WorkerKind::Model,
            }),
        }
    }
}

async fn submit(workers: &WorkerSet, kind: WorkerKind, work: Work) -> Result<Reply, PipelineError> {
    let worker = workers
        .least_loaded()
        .ok_or(PipelineError::NoWorker(kind))?;
    let answer = worker.submit(work);
    // The sender is dropped only with the worker's pending table, which answers first.
    let reply = answer.await.map_err(|_| JobError::WorkerGone {
        kind,
        id: worker.id,
    })?;
    Ok(reply?)
}
