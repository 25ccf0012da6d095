//! Model dispatch: one task owns the [`Scheduler`] and the requests whose pairs it
//! holds, cuts batches whenever a model worker has room, sends them, and routes the
//! scores back to each request at its own positions.
//!
//! Every worker is kept at most `batches_per_worker` batches deep, so that its next
//! batch is already in its IPC queue when it finishes one, while the rest of the pairs
//! stay in the scheduler where later arrivals can still join their batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossenc_ipc::{PairTokens, TokenBatchBuilder, Work, WorkerKind};
use tokio::sync::{mpsc, oneshot};

use crate::admission::PairReservation;
use crate::metrics::Metrics;
use crate::pipeline::PipelineError;
use crate::pool::{JobError, Reply, Worker, WorkerSet};
use crate::scheduler::{Batch, RequestId, Scheduler, SchedulerLimits};

/// A pair in the scheduler: whose it is, where its score goes, and its tokens.
#[derive(Debug)]
struct QueuedPair {
    request: RequestId,
    index: u32,
    tokens: PairTokens,
}

type ScoresReply = oneshot::Sender<Result<Vec<f32>, PipelineError>>;

enum Command {
    Submit {
        request: RequestId,
        pairs: Vec<PairTokens>,
        reservation: PairReservation,
        reply: ScoresReply,
    },
    Cancel(RequestId),
}

/// A batch a worker answered (or failed), with the positions its scores belong to.
struct Finished {
    positions: Vec<(RequestId, u32)>,
    result: Result<Vec<f32>, PipelineError>,
}

/// The handle requests use to have their pairs scored.
#[derive(Clone)]
pub struct ModelDispatch {
    commands: mpsc::UnboundedSender<Command>,
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

impl ModelDispatch {
    /// Starts the dispatch task on the current runtime. The command channel needs no
    /// bound of its own: admission bounds the requests that can send on it.
    pub fn start(
        limits: SchedulerLimits,
        models: Arc<WorkerSet>,
        batches_per_worker: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (commands, incoming) = mpsc::unbounded_channel();
        let (finished_tx, finished) = mpsc::unbounded_channel();
        let task = DispatchTask {
            scheduler: Scheduler::new(limits),
            requests: HashMap::new(),
            models,
            batches_per_worker,
            finished_tx,
            metrics,
        };
        tokio::spawn(task.run(incoming, finished));
        Self { commands }
    }

    /// Scores `pairs` in order. Dropping the future (client gone, deadline passed)
    /// withdraws the pairs no worker has taken yet.
    pub async fn score(
        &self,
        pairs: Vec<PairTokens>,
        reservation: PairReservation,
    ) -> Result<Vec<f32>, PipelineError> {
        let request = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Submit {
                request,
                pairs,
                reservation,
                reply,
            })
            .map_err(|_| PipelineError::Stopping)?;
        let mut withdraw = WithdrawOnDrop {
            request,
            commands: Some(&self.commands),
        };
        let scores = answer.await.map_err(|_| PipelineError::Stopping)?;
        withdraw.commands = None;
        scores
    }
}

/// Tells the dispatch task that a request's caller went away before its answer.
struct WithdrawOnDrop<'a> {
    request: RequestId,
    commands: Option<&'a mpsc::UnboundedSender<Command>>,
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(commands) = self.commands {
            let _ = commands.send(Command::Cancel(self.request));
        }
    }
}

/// A request whose scores are being gathered.
struct Gathering {
    scores: Vec<f32>,
    remaining: usize,
    reply: ScoresReply,
    reservation: PairReservation,
}

struct DispatchTask {
    scheduler: Scheduler<QueuedPair>,
    requests: HashMap<RequestId, Gathering>,
    models: Arc<WorkerSet>,
    batches_per_worker: usize,
    finished_tx: mpsc::UnboundedSender<Finished>,
    metrics: Arc<Metrics>,
}

impl DispatchTask {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut finished: mpsc::UnboundedReceiver<Finished>,
    ) {
        loop {
            self.dispatch();
            let wake = self.wake_at();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(done) = finished.recv() => self.finish(done),
                () = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }

    /// When a batch that is not full must go, if a worker could take it.
    fn wake_at(&self) -> Option<Instant> {
        self.free_worker()?;
        self.scheduler.deadline()
    }

    fn free_worker(&self) -> Option<Arc<Worker>> {
        self.models
            .least_loaded()
            .filter(|w| w.load() < self.batches_per_worker)
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit {
                request,
                pairs,
                reservation,
                reply,
            } => self.submit(request, pairs, reservation, reply),
            Command::Cancel(request) => {
                self.scheduler.cancel(request);
                // Dropping the entry releases the pairs it still held in the queue.
                self.requests.remove(&request);
            }
        }
        self.publish_waiting();
    }

    fn submit(
        &mut self,
        request: RequestId,
        pairs: Vec<PairTokens>,
        reservation: PairReservation,
        reply: ScoresReply,
    ) {
        if pairs.is_empty() {
            let _ = reply.send(Ok(Vec::new()));
            return;
        }
        let now = Instant::now();
        let count = pairs.len();
        for (index, tokens) in pairs.into_iter().enumerate() {
            let len = tokens.len();
            let pair = QueuedPair {
                request,
                index: index as u32,
                tokens,
            };
            self.scheduler.push(request, len, pair, now);
        }
        self.requests.insert(
            request,
            Gathering {
                scores: vec![0.0; count],
                remaining: count,
                reply,
                reservation,
            },
        );
    }

    /// Sends batches while a worker has room and the scheduler has one ready.
    fn dispatch(&mut self) {
        if self.scheduler.is_empty() {
            return;
        }
        if !self.models.any_alive() {
            self.fail_waiting(PipelineError::NoWorker(WorkerKind::Model));
            return;
        }
        while let Some(worker) = self.free_worker() {
            let deciding = Instant::now();
            let Some(batch) = self.scheduler.next_batch(deciding) else {
                break;
            };
            self.metrics
                .scheduler_latency
                .observe(deciding.elapsed().as_secs_f64());
            self.send(&worker, batch);
        }
        self.publish_waiting();
    }

    fn send(&mut self, worker: &Worker, batch: Batch<QueuedPair>) {
        self.record(&batch);
        let mut builder = TokenBatchBuilder::with_capacity(batch.pairs.len(), batch.real_tokens);
        let mut positions = Vec::with_capacity(batch.pairs.len());
        for (pair, _) in &batch.pairs {
            builder.push_pair(&pair.tokens);
            positions.push((pair.request, pair.index));
            if let Some(gathering) = self.requests.get_mut(&pair.request) {
                gathering.reservation.release(1);
            }
        }
        let answer = worker.submit(Work::Score(builder.finish()));
        let (kind, id) = (worker.kind, worker.id);
        let finished = self.finished_tx.clone();
        tokio::spawn(async move {
            let result = match answer.await {
                Ok(Ok(Reply::Scored(scores))) => Ok(scores.to_vec()),
                Ok(Ok(Reply::Encoded(_))) => Err(PipelineError::WrongReply { kind }),
                Ok(Err(error)) => Err(error.into()),
                Err(_) => Err(JobError::WorkerGone { kind, id }.into()),
            };
            let _ = finished.send(Finished { positions, result });
        });
    }

    fn record(&self, batch: &Batch<QueuedPair>) {
        let metrics = &self.metrics;
        metrics.total_tokens.inc_by(batch.real_tokens as u64);
        metrics
            .padded_tokens
            .inc_by((batch.padded_tokens - batch.real_tokens) as u64);
        for (_, waited) in &batch.pairs {
            metrics
                .model_queue_wait_latency
                .observe(waited.as_secs_f64());
        }
    }

    fn publish_waiting(&self) {
        self.metrics
            .batch_queue_size
            .set(self.scheduler.len() as i64);
    }

    /// Puts a batch's scores in place and answers the requests it completed.
    fn finish(&mut self, done: Finished) {
        let scores = match done.result {
            Ok(scores) if scores.len() == done.positions.len() => scores,
            Ok(scores) => {
                let error = PipelineError::ScoreCount {
                    expected: done.positions.len(),
                    got: scores.len(),
                };
                return self.fail_requests(&done.positions, error);
            }
            Err(error) => return self.fail_requests(&done.positions, error),
        };
        for ((request, index), score) in done.positions.into_iter().zip(scores) {
            // A request that was withdrawn or failed is gone; its scores are not needed.
            let Some(gathering) = self.requests.get_mut(&request) else {
                continue;
            };
            gathering.scores[index as usize] = score;
            gathering.remaining -= 1;
            if gathering.remaining == 0 {
                let gathering = self.requests.remove(&request).expect("present above");
                let _ = gathering.reply.send(Ok(gathering.scores));
            }
        }
    }

    fn fail_requests(&mut self, positions: &[(RequestId, u32)], error: PipelineError) {
        for (request, _) in positions {
            if let Some(gathering) = self.requests.remove(request) {
                self.scheduler.cancel(*request);
                let _ = gathering.reply.send(Err(error.clone()));
            }
        }
        self.publish_waiting();
    }

    /// No worker can take the waiting pairs: their requests fail now rather than hang.
    fn fail_waiting(&mut self, error: PipelineError) {
        let waiting: Vec<RequestId> = self
            .requests
            .keys()
            .copied()
            .filter(|&r| self.scheduler.cancel(r) > 0)
            .collect();
        let positions: Vec<(RequestId, u32)> = waiting.into_iter().map(|r| (r, 0)).collect();
        self.fail_requests(&positions, error);
    }
}

async fn sleep_until(wake: Option<Instant>) {
    if let Some(wake) = wake {
        tokio::time::sleep_until(wake.into()).await;
    }
}
