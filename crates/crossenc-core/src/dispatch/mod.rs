//! Model dispatch: one task owns the [`Scheduler`] and the requests whose pairs it
//! holds, cuts batches whenever a model worker has room, sends them, and routes the
//! scores back to each request at its own positions.
//!
//! Every worker is kept at most `batches_per_worker` batches deep, so that its next
//! batch is already in its IPC queue when it finishes one, while the rest of the pairs
//! stay in the scheduler where later arrivals can still join their batches.
//!
//! When a worker dies (or is killed for holding a batch past `batch_timeout`), its batch
//! is searched: it is split in up to eight groups, each run alone on an idle worker, a
//! group that kills its worker is split again, and a pair that kills a worker alone is a
//! poison input whose request fails with INTERNAL. A poison pair in a batch of n costs
//! about log8(n) worker deaths, never a crash loop, and every other pair is scored; the
//! search's runs are bounded by the batch (at most 8 a step, under 2n in all) and counted in
//! `poison_search_runs_total`. The search takes one worker, reserved until it
//! ends; the others keep taking new batches meanwhile, so that one bad request holds
//! back only itself (with a single model worker, new batches wait for the search). Pairs that go back to the queue
//! count against `max_queued_pairs` again. While no model worker is up, pairs wait for
//! the respawn at most `no_worker_patience`, then their requests fail with UNAVAILABLE.

mod search;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_ipc::{JobTiming, PairTokens, RequestId, TokenBatchBuilder, Work, WorkerKind};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crossenc_metrics::ModelMetrics;

use crate::admission::{computed_tokens, Backlog, Ticket};
use crate::error::PipelineError;
use crate::pipeline::Scores;
use crate::scheduler::{Batch, RequestKey, Scheduler, SchedulerLimits};
use crate::workers::{JobError, Member, PendingReply, Reply, WorkerSet};

/// How many groups a suspect batch is split into at each step of the poison search.
const SEARCH_FANOUT: usize = 8;

/// A pair in the scheduler: whose it is, where its score goes, and its tokens.
#[derive(Debug)]
struct QueuedPair {
    request: RequestKey,
    index: u32,
    tokens: PairTokens,
    arrived: Instant,
}

/// Where a request's scores go: in order, with the model stages of the batch that
/// completed it (the pipeline fills in the tokenizer's).
type ScoresTo = oneshot::Sender<Result<Scores, PipelineError>>;

enum Command {
    Submit {
        request: RequestKey,
        id: RequestId,
        /// The request's span where it waits for its scores: each batch it rides in
        /// follows from it.
        span: tracing::Span,
        pairs: Vec<PairTokens>,
        ticket: Ticket,
        reply: ScoresTo,
    },
    Cancel(RequestKey),
}

/// A worker's reply to a batch (or why there is none), back in the dispatch loop.
struct BatchReply {
    batch: u64,
    result: Result<(Vec<f32>, JobTiming), PipelineError>,
}

/// A batch sent and not answered, kept to re-queue if its worker dies.
struct InFlight {
    pairs: Vec<QueuedPair>,
    sent: Instant,
    /// Ran alone on its worker, as part of the poison search.
    isolated: bool,
    /// The worker's serial: a worker runs its batches one at a time, in the order sent.
    worker: u64,
}

/// How the dispatch task treats its workers.
#[derive(Debug, Clone, Copy)]
pub struct DispatchLimits {
    pub batches_per_worker: usize,
    /// A worker holding one batch longer than this is killed as hung.
    pub batch_timeout: Duration,
    /// How long pairs wait for a model worker to come back before their requests fail.
    pub no_worker_patience: Duration,
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
        dispatch: DispatchLimits,
        metrics: Arc<ModelMetrics>,
        backlog: Arc<Backlog>,
    ) -> Self {
        let (commands, incoming) = mpsc::unbounded_channel();
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let task = DispatchTask {
            scheduler: Scheduler::new(limits),
            requests: HashMap::new(),
            in_flight: HashMap::new(),
            suspects: VecDeque::new(),
            isolating: HashMap::new(),
            searching_on: None,
            batch_turn: false,
            behind_a_death: Vec::new(),
            next_batch: 0,
            joined: models.changes(),
            models,
            limits: dispatch,
            no_worker_since: None,
            replies_tx,
            metrics,
            backlog,
        };
        tokio::spawn(task.run(incoming, replies));
        Self { commands }
    }

    /// Scores `pairs` in order. Dropping the future (client gone, deadline passed)
    /// withdraws the pairs no worker has taken yet.
    pub async fn score(
        &self,
        pairs: Vec<PairTokens>,
        ticket: Ticket,
        id: &RequestId,
    ) -> Result<Scores, PipelineError> {
        let request = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Submit {
                request,
                id: id.clone(),
                span: tracing::Span::current(),
                pairs,
                ticket,
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
    request: RequestKey,
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
    /// Its id, for the workers' log lines and this task's.
    id: RequestId,
    span: tracing::Span,
    scores: Scores,
    remaining: usize,
    reply: ScoresTo,
    /// Its queued pairs and tokens, given back as they leave the queue and the model.
    ticket: Ticket,
}

struct DispatchTask {
    scheduler: Scheduler<QueuedPair>,
    requests: HashMap<RequestKey, Gathering>,
    in_flight: HashMap<u64, InFlight>,
    /// Parts of batches whose worker died, each to run alone on an idle worker, before
    /// any new batch: the search that finds a poison pair.
    suspects: VecDeque<Vec<QueuedPair>>,
    /// Workers (by their set's serial) running a suspect group alone: they get nothing
    /// else meanwhile, so that their death is the group's doing and no other pair's.
    isolating: HashMap<u64, u64>,
    /// The worker (by serial) the search runs on while suspects wait: it takes no new
    /// batches, so that it runs dry and the next group finds it idle.
    searching_on: Option<u64>,
    /// Batches a dead worker held behind an older batch whose reply has not come yet:
    /// (batch, worker serial, pairs).
    behind_a_death: Vec<(u64, u64, Vec<QueuedPair>)>,
    /// With one model worker up, the search and new batches take turns: a suspect group
    /// was the last thing sent, so a new batch goes next.
    batch_turn: bool,
    next_batch: u64,
    models: Arc<WorkerSet>,
    /// Changes when a model worker joins or leaves: pairs waiting for one can go.
    joined: watch::Receiver<u64>,
    limits: DispatchLimits,
    /// Since when pairs have waited with no model worker up.
    no_worker_since: Option<Instant>,
    replies_tx: mpsc::UnboundedSender<BatchReply>,
    metrics: Arc<ModelMetrics>,
    /// Learns the workers' throughput from every batch, for admission.
    backlog: Arc<Backlog>,
}

impl DispatchTask {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut replies: mpsc::UnboundedReceiver<BatchReply>,
    ) {
        loop {
            self.dispatch();
            let wake = self.wake_at();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(reply) = replies.recv() => self.finish(reply),
                Ok(()) = self.joined.changed() => {}
                () = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }

    /// When the loop must look again without news: a batch that is not full is due,
    /// or the patience for a missing worker runs out.
    fn wake_at(&self) -> Option<Instant> {
        if let Some(since) = self.no_worker_since {
            return Some(since + self.limits.no_worker_patience);
        }
        self.free_worker()?;
        self.scheduler.deadline()
    }

    /// A worker with room for the next new batch: neither running a suspect group nor
    /// kept for the search.
    fn free_worker(&self) -> Option<Arc<Member>> {
        let busy = |m: &Member| self.isolating.values().any(|&s| s == m.serial());
        let kept = |m: &Member| self.searching_on == Some(m.serial());
        self.models
            .least_loaded_where(|m| !busy(m) && !kept(m))
            .filter(|m| m.load() < self.limits.batches_per_worker)
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit {
                request,
                id,
                span,
                pairs,
                ticket,
                reply,
            } => self.submit((request, id, span), pairs, ticket, reply),
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
        (request, id, span): (RequestKey, RequestId, tracing::Span),
        pairs: Vec<PairTokens>,
        ticket: Ticket,
        reply: ScoresTo,
    ) {
        if pairs.is_empty() {
            let _ = reply.send(Ok(Scores::default()));
            return;
        }
        let now = now();
        let count = pairs.len();
        for (index, tokens) in pairs.into_iter().enumerate() {
            let len = tokens.len();
            let pair = QueuedPair {
                request,
                index: index as u32,
                tokens,
                arrived: now,
            };
            self.scheduler.push(request, len, pair, now);
        }
        self.requests.insert(
            request,
            Gathering {
                id,
                span,
                scores: Scores {
                    scores: vec![0.0; count],
                    ..Scores::default()
                },
                remaining: count,
                reply,
                ticket,
            },
        );
    }

    /// Sends batches while a worker has room and the scheduler has one ready.
    fn dispatch(&mut self) {
        if self.scheduler.is_empty() && self.suspects.is_empty() {
            self.no_worker_since = None;
            return;
        }
        if !self.models.any_alive() {
            let since = *self.no_worker_since.get_or_insert_with(now);
            if now().saturating_duration_since(since) >= self.limits.no_worker_patience {
                self.no_worker_since = None;
                self.fail_waiting(PipelineError::NoWorker(WorkerKind::Model));
            }
            return;
        }
        self.no_worker_since = None;
        while let Some(worker) = self.search_worker() {
            let Some(mut group) = self.suspects.pop_front() else {
                break;
            };
            // Pairs of requests that went away or failed are not worth a worker's life.
            group.retain(|pair| self.requests.contains_key(&pair.request));
            if !group.is_empty() {
                self.metrics.poison_search_runs.inc();
                self.send_pairs(worker, group, true);
                self.batch_turn = true;
            }
        }
        while let Some(worker) = self.free_worker() {
            let deciding = now();
            let Some(batch) = self.scheduler.next_batch(deciding) else {
                break;
            };
            self.metrics
                .scheduler_latency
                .observe(deciding.elapsed().as_secs_f64());
            self.send(worker, batch);
            self.batch_turn = false;
        }
        self.publish_waiting();
    }

    fn send(&mut self, worker: Arc<Member>, batch: Batch<QueuedPair>) {
        self.record(&batch);
        let pairs = batch.pairs.into_iter().map(|(pair, _)| pair).collect();
        self.send_pairs(worker, pairs, false);
    }

    /// Sends `pairs` as one batch; an `isolated` one keeps its worker to itself.
    fn send_pairs(&mut self, worker: Arc<Member>, pairs: Vec<QueuedPair>, isolated: bool) {
        let tokens = pairs.iter().map(|p| p.tokens.len()).sum();
        let mut builder = TokenBatchBuilder::with_capacity(pairs.len(), tokens);
        let mut requests: Vec<RequestId> = Vec::new();
        let span = tracing::info_span!(
            parent: None,
            "model_batch",
            pairs = pairs.len(),
            tokens,
            isolated,
            requests = tracing::field::Empty,
            queued_ms = tracing::field::Empty,
            compute_ms = tracing::field::Empty,
        );
        for pair in &pairs {
            builder.push_pair(&pair.tokens);
            if let Some(gathering) = self.requests.get_mut(&pair.request) {
                gathering.ticket.pairs.release(1);
                if !requests.contains(&gathering.id) {
                    requests.push(gathering.id.clone());
                    span.follows_from(&gathering.span);
                }
            }
        }
        span.record("requests", crossenc_ipc::joined(&requests));
        let id = self.next_batch;
        self.next_batch += 1;
        if isolated {
            self.isolating.insert(id, worker.serial());
        }
        self.metrics.model_queue_size.inc_by(pairs.len() as i64);
        let sent = now();
        self.in_flight.insert(
            id,
            InFlight {
                pairs,
                sent,
                isolated,
                worker: worker.serial(),
            },
        );
        let pending = worker.submit(Work::Score(builder.finish()), requests);
        let replies = self.replies_tx.clone();
        let timeout = self.limits.batch_timeout;
        tokio::spawn(
            async move {
                let result = await_scores(&worker, pending, timeout).await;
                if let Ok((_, timing)) = &result {
                    let span = tracing::Span::current();
                    span.record("queued_ms", timing.queued.as_secs_f64() * 1e3);
                    span.record("compute_ms", timing.compute.as_secs_f64() * 1e3);
                }
                let _ = replies.send(BatchReply { batch: id, result });
            }
            .instrument(span),
        );
    }

    fn record(&self, batch: &Batch<QueuedPair>) {
        let pairs = batch.pairs.len();
        self.metrics.record_batch(
            pairs,
            batch.real_tokens,
            batch.padded_tokens,
            batch.padded_tokens / pairs.max(1),
        );
    }

    fn publish_waiting(&self) {
        let suspects: usize = self.suspects.iter().map(Vec::len).sum();
        self.metrics
            .batch_queue_size
            .set((self.scheduler.len() + suspects) as i64);
    }

    /// Puts a batch's scores in place and answers the requests it completed; a batch
    /// whose worker died goes to the search, or back to the scheduler if it never ran.
    fn finish(&mut self, reply: BatchReply) {
        let worker = self.in_flight.get(&reply.batch).map(|flight| flight.worker);
        self.finish_batch(reply);
        if let Some(worker) = worker {
            self.settle_behind(worker);
        }
    }

    fn finish_batch(&mut self, reply: BatchReply) {
        let Some(InFlight {
            pairs,
            sent,
            isolated,
            worker,
        }) = self.in_flight.remove(&reply.batch)
        else {
            return;
        };
        self.metrics.model_queue_size.dec_by(pairs.len() as i64);
        self.isolating.remove(&reply.batch);
        let (scores, timing) = match reply.result {
            Ok((scores, timing)) if scores.len() == pairs.len() => (scores, timing),
            Ok((scores, _)) => {
                let error = PipelineError::ScoreCount {
                    expected: pairs.len(),
                    got: scores.len(),
                };
                return self.fail_pairs(&pairs, error);
            }
            // A worker runs its batches one at a time, oldest first: of those a dead
            // worker held, only the oldest was running. One behind an older batch whose
            // reply has not come waits for it, to learn which it was.
            Err(PipelineError::Job(JobError::WorkerGone { .. }))
                if self.older_in_flight(reply.batch, worker) =>
            {
                self.behind_a_death.push((reply.batch, worker, pairs));
                return;
            }
            Err(PipelineError::Job(JobError::WorkerGone { .. })) => {
                self.search(pairs, isolated);
                // Those behind it never started: they go back as they were.
                for pairs in self.take_behind(worker) {
                    self.put_back(pairs, false);
                }
                return;
            }
            Err(PipelineError::Job(JobError::NotDelivered { .. })) => {
                return self.put_back(pairs, isolated)
            }
            Err(error) => return self.fail_pairs(&pairs, error),
        };
        // Isolated retries (a pair or two on a worker) say nothing of full batches' speed.
        if !isolated {
            let tokens = computed_tokens(pairs.iter().map(|p| (p.request, &p.tokens)));
            self.backlog
                .observe(tokens, timing.compute, self.models.alive_count());
        }
        for (pair, score) in pairs.into_iter().zip(scores) {
            // In the scheduler until sent, then behind the worker's earlier batches.
            let waited = sent.saturating_duration_since(pair.arrived) + timing.queued;
            self.metrics
                .model_queue_wait_latency
                .observe(waited.as_secs_f64());
            // A request that was withdrawn or failed is gone; its scores are not needed.
            let Some(gathering) = self.requests.get_mut(&pair.request) else {
                continue;
            };
            // The request's shared prefix is released with its ticket.
            gathering
                .ticket
                .tokens
                .scored(pair.tokens.own_tokens() as u64);
            gathering.scores.scores[pair.index as usize] = score;
            gathering.remaining -= 1;
            if gathering.remaining == 0 {
                let mut gathering = self.requests.remove(&pair.request).expect("present above");
                gathering.scores.stages.model_wait = waited;
                gathering.scores.stages.inference = timing.compute;
                let _ = gathering.reply.send(Ok(gathering.scores));
            }
        }
    }

    fn fail_pairs(&mut self, pairs: &[QueuedPair], error: PipelineError) {
        for pair in pairs {
            if let Some(gathering) = self.requests.remove(&pair.request) {
                self.scheduler.cancel(pair.request);
                let _ = gathering.reply.send(Err(error.clone()));
            }
        }
        self.publish_waiting();
    }

    /// No worker can take the waiting pairs: their requests fail now rather than hang.
    fn fail_waiting(&mut self, error: PipelineError) {
        let mut waiting: Vec<RequestKey> = self
            .requests
            .keys()
            .copied()
            .filter(|&r| self.scheduler.cancel(r) > 0)
            .collect();
        waiting.extend(self.suspects.drain(..).flatten().map(|pair| pair.request));
        for request in waiting {
            if let Some(gathering) = self.requests.remove(&request) {
                let _ = gathering.reply.send(Err(error.clone()));
            }
        }
        self.publish_waiting();
    }
}

/// A batch's scores, or why there are none (a hung worker is killed at `timeout`).
async fn await_scores(
    worker: &Member,
    pending: PendingReply,
    timeout: Duration,
) -> Result<(Vec<f32>, JobTiming), PipelineError> {
    match worker.reply_within(pending, timeout).await? {
        Reply::Scored(scores, timing) => Ok((scores.to_vec(), timing)),
        Reply::Encoded(..) => Err(PipelineError::WrongReply {
            kind: worker.worker().kind(),
        }),
    }
}

/// Now, on tokio's clock: the real one in a server, a paused one in the core's tests.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(wake: Option<Instant>) {
    if let Some(wake) = wake {
        tokio::time::sleep_until(wake.into()).await;
    }
}
