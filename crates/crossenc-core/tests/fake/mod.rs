//! Fake workers for the core's tests: no process, no IPC, only the [`Worker`] contract,
//! driven by tokio's paused clock so that every run takes the same steps.
//!
//! A fake tokenizer turns each pair into the bytes of `[1] query [2] document [2]`; a
//! fake model scores a pair as the sum of its ids, so that a score placed at the wrong
//! position shows. What a document says decides what the fake model does with a batch
//! that holds it:
//! - `POISON`: the worker dies as it starts the batch, failing every job it holds;
//! - `ONCE`: the same, the first time any worker sees it;
//! - `HANG`: the worker never answers (until it is killed).
//!
//! Each job takes [`COMPUTE`] of (paused) time, one at a time, in the order sent.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossenc_core::workers::{JobError, PendingReply, Reply, Worker, WorkerSet};
use crossenc_core::WorkerKind;
use crossenc_ipc::{
    JobTiming, RequestId, ScoreBatch, TokenBatch, TokenBatchBuilder, Tokenized, Work,
};
use tokio::sync::{oneshot, Notify};

/// How long every fake job takes.
pub const COMPUTE: Duration = Duration::from_millis(10);

const CLS: u32 = 1;
const SEP: u32 = 2;

/// What every fake worker of a test writes down.
#[derive(Debug, Default)]
pub struct Log {
    /// Each model batch a worker took, as the documents it held.
    pub batches: Mutex<Vec<Vec<String>>>,
    /// Each model batch answered, as its documents.
    pub answered: Mutex<Vec<Vec<String>>>,
    /// Jobs each worker held when it died, in order of deaths.
    pub deaths: Mutex<Vec<usize>>,
    pub kills: AtomicUsize,
    /// Jobs refused as undeliverable (see [`FakeWorker::refuse_next`]).
    pub refused: AtomicUsize,
    once_fired: AtomicBool,
}

impl Log {
    /// How many answered batches held `document`.
    pub fn times_answered(&self, document: &str) -> usize {
        let answered = self.answered.lock().unwrap();
        answered
            .iter()
            .flatten()
            .filter(|d| d.as_str() == document)
            .count()
    }

    pub fn batch_sizes(&self) -> Vec<usize> {
        self.batches.lock().unwrap().iter().map(Vec::len).collect()
    }
}

type Job = (Work, oneshot::Sender<Result<Reply, JobError>>);

/// A worker that does its jobs in-process.
pub struct FakeWorker {
    kind: WorkerKind,
    id: u32,
    /// Jobs not yet answered, oldest first; `None` once dead.
    jobs: Mutex<Option<VecDeque<Job>>>,
    arrived: Notify,
    /// Submissions to refuse as undeliverable before taking any.
    refuse_next: AtomicUsize,
    log: Arc<Log>,
    /// Told when the worker dies, for the fake pool's respawn.
    died: Arc<Notify>,
}

impl FakeWorker {
    /// A worker already running its job loop.
    pub fn start(kind: WorkerKind, id: u32, log: &Arc<Log>, died: &Arc<Notify>) -> Arc<Self> {
        let worker = Arc::new(Self {
            kind,
            id,
            jobs: Mutex::new(Some(VecDeque::new())),
            arrived: Notify::new(),
            refuse_next: AtomicUsize::new(0),
            log: Arc::clone(log),
            died: Arc::clone(died),
        });
        tokio::spawn(Arc::clone(&worker).run());
        worker
    }

    /// The next `n` submissions find the worker "just gone": NotDelivered, as when a
    /// worker dies between being picked and being sent the job.
    pub fn refuse_next(&self, n: usize) {
        self.refuse_next.store(n, Ordering::SeqCst);
    }

    async fn run(self: Arc<Self>) {
        loop {
            let Some(front) = self.front_documents() else {
                return;
            };
            let Some(documents) = front else {
                self.arrived.notified().await;
                continue;
            };
            tokio::time::sleep(COMPUTE).await;
            if self.kind == WorkerKind::Model {
                self.log.batches.lock().unwrap().push(documents.clone());
                if documents.iter().any(|d| d.contains("HANG")) {
                    // Never answers; only a kill ends it.
                    std::future::pending::<()>().await;
                }
                let once = documents.iter().any(|d| d.contains("ONCE"))
                    && !self.log.once_fired.swap(true, Ordering::SeqCst);
                if once || documents.iter().any(|d| d.contains("POISON")) {
                    self.die();
                    return;
                }
            }
            self.answer_front(documents);
        }
    }

    /// The documents of the oldest job (`Some(None)`: no job; `None`: dead).
    fn front_documents(&self) -> Option<Option<Vec<String>>> {
        let jobs = self.jobs.lock().unwrap();
        let jobs = jobs.as_ref()?;
        Some(jobs.front().map(|(work, _)| documents_of(work)))
    }

    fn answer_front(&self, documents: Vec<String>) {
        let job = {
            let mut jobs = self.jobs.lock().unwrap();
            jobs.as_mut().and_then(VecDeque::pop_front)
        };
        let Some((work, reply)) = job else { return };
        let timing = JobTiming {
            compute: COMPUTE,
            ..JobTiming::default()
        };
        let answer = match work {
            Work::Encode(texts) => {
                let tokenized = Tokenized {
                    batch: encode(&texts),
                    windows: Vec::new(),
                    lossy: Vec::new(),
                    refused: None,
                };
                Reply::Encoded(tokenized, timing)
            }
            Work::Score(batch) => {
                self.log.answered.lock().unwrap().push(documents);
                let scores: Vec<f32> = batch.iter().map(|p| sum(p.ids())).collect();
                Reply::Scored(ScoreBatch::new(&scores), timing)
            }
        };
        let _ = reply.send(Ok(answer));
    }

    /// Fails every job held, as a worker process's death does.
    fn die(&self) {
        let Some(jobs) = self.jobs.lock().unwrap().take() else {
            return;
        };
        self.log.deaths.lock().unwrap().push(jobs.len());
        for (_, reply) in jobs {
            let _ = reply.send(Err(JobError::WorkerGone {
                kind: self.kind,
                id: self.id,
            }));
        }
        self.arrived.notify_one();
        self.died.notify_one();
    }
}

impl Worker for FakeWorker {
    fn kind(&self) -> WorkerKind {
        self.kind
    }

    fn id(&self) -> u32 {
        self.id
    }

    fn submit(&self, work: Work, _requests: Vec<RequestId>) -> PendingReply {
        let (reply, pending) = oneshot::channel();
        let refuse = self
            .refuse_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let mut jobs = self.jobs.lock().unwrap();
        match jobs.as_mut() {
            Some(jobs) if !refuse => {
                jobs.push_back((work, reply));
                self.arrived.notify_one();
            }
            _ => {
                if refuse {
                    self.log.refused.fetch_add(1, Ordering::SeqCst);
                }
                let _ = reply.send(Err(JobError::NotDelivered {
                    kind: self.kind,
                    id: self.id,
                }));
            }
        }
        pending
    }

    fn load(&self) -> usize {
        self.jobs
            .lock()
            .unwrap()
            .as_ref()
            .map_or(usize::MAX, VecDeque::len)
    }

    fn is_alive(&self) -> bool {
        self.jobs.lock().unwrap().is_some()
    }

    fn kill(&self) {
        self.log.kills.fetch_add(1, Ordering::SeqCst);
        self.die();
    }
}

/// Model workers that come back `after` each death, as the pool's respawn does; with
/// `after = None` a dead worker stays dead.
pub fn keep_models(set: &Arc<WorkerSet>, count: u32, log: &Arc<Log>, after: Option<Duration>) {
    for id in 0..count {
        let set = Arc::clone(set);
        let log = Arc::clone(log);
        tokio::spawn(async move {
            loop {
                let died = Arc::new(Notify::new());
                let worker = FakeWorker::start(WorkerKind::Model, id, &log, &died);
                let handle: Arc<dyn Worker> = worker;
                set.add(Arc::clone(&handle));
                died.notified().await;
                set.remove(&handle);
                match after {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return,
                }
            }
        });
    }
}

/// One tokenizer worker, never dying on its own.
pub fn add_tokenizer(set: &WorkerSet, log: &Arc<Log>) {
    let died = Arc::new(Notify::new());
    set.add(FakeWorker::start(WorkerKind::Tokenizer, 0, log, &died));
}

/// The raw score the fake model gives (query, document).
pub fn expected_score(query: &str, document: &str) -> f32 {
    sum(pair_ids(query, document).into_iter())
}

fn sum(ids: impl Iterator<Item = u32>) -> f32 {
    ids.map(|id| id as f32).sum()
}

fn pair_ids(query: &str, document: &str) -> Vec<u32> {
    let bytes = |t: &str| t.bytes().map(u32::from).collect::<Vec<_>>();
    let mut ids = vec![CLS];
    ids.extend(bytes(query));
    ids.push(SEP);
    ids.extend(bytes(document));
    ids.push(SEP);
    ids
}

fn encode(texts: &crossenc_ipc::TextPairs) -> TokenBatch {
    let pairs = texts.resolve().expect("the core sends resolvable pairs");
    let mut builder = TokenBatchBuilder::default();
    for (query, document) in pairs {
        let ids = pair_ids(&query.text, &document.text);
        let first = ids.iter().position(|&id| id == SEP).unwrap_or(0) + 1;
        let types: Vec<u8> = (0..ids.len()).map(|i| u8::from(i >= first)).collect();
        builder.push(ids, &types);
    }
    builder.finish_inline()
}

/// The documents of a job: a model batch's, read back from its ids.
fn documents_of(work: &Work) -> Vec<String> {
    match work {
        Work::Encode(texts) => texts
            .pairs
            .iter()
            .map(|(_, d)| d.text.to_string())
            .collect(),
        Work::Score(batch) => batch
            .iter()
            .map(|pair| {
                let ids: Vec<u32> = pair.ids().collect();
                let first = ids.iter().position(|&id| id == SEP).unwrap_or(0) + 1;
                let document = &ids[first..ids.len().saturating_sub(1)];
                document.iter().map(|&b| b as u8 as char).collect()
            })
            .collect(),
    }
}
