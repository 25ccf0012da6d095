//! What the core knows of its workers: a [`Worker`] takes jobs and answers each one, or
//! dies and fails them all; a [`WorkerSet`] holds the live workers of one kind, picks
//! the least loaded, tells who waits when one joins or leaves, and lends one out alone
//! for a retry. Whether a worker is a process, a thread or a test's fake is the
//! implementor's business (`crossenc-pool` runs processes).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crossenc_ipc::{JobTiming, RequestId, ScoreBatch, Tokenized, Work, WorkerKind};
use tokio::sync::{oneshot, watch};

/// A worker's reply to one job.
#[derive(Debug)]
pub enum Reply {
    /// The tokens (windows), and what else the tokenizer found.
    Encoded(Tokenized, JobTiming),
    Scored(ScoreBatch, JobTiming),
}

/// Why a job got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    #[error("{kind} worker {id} exited before it answered")]
    WorkerGone { kind: WorkerKind, id: u32 },
    /// The worker was already gone: the job never reached it.
    #[error("{kind} worker {id} had exited; the job was not sent")]
    NotDelivered { kind: WorkerKind, id: u32 },
    #[error("{kind} worker {id} could not do the job: {message}")]
    Failed {
        kind: WorkerKind,
        id: u32,
        message: String,
    },
}

/// Where a job's reply arrives.
pub type PendingReply = oneshot::Receiver<Result<Reply, JobError>>;

/// One worker as the core uses it.
///
/// Every job submitted gets exactly one reply on its [`PendingReply`]: the worker's, or
/// [`JobError::WorkerGone`] when the worker dies holding it, or
/// [`JobError::NotDelivered`] when it was gone already.
pub trait Worker: Send + Sync + 'static {
    fn kind(&self) -> WorkerKind;
    /// Its slot among the workers of its kind (a restarted worker keeps its slot's id).
    fn id(&self) -> u32;
    /// Sends `work`, serving `requests` (named in the worker's log lines about it).
    fn submit(&self, work: Work, requests: Vec<RequestId>) -> PendingReply;
    /// Jobs submitted and not yet answered.
    fn load(&self) -> usize;
    fn is_alive(&self) -> bool;
    /// Ends a worker that stopped answering; its death then fails its jobs.
    fn kill(&self);
}

/// A worker in a set: the worker, and whether it is lent out for a job that must run
/// alone.
pub struct Member {
    worker: Arc<dyn Worker>,
    /// Unique among the set's members ever: a restarted worker is a new member.
    serial: u64,
    isolated: AtomicBool,
    /// Held while submitting beside others and while isolating, so that no job slips in
    /// beside an isolated one.
    gate: Mutex<()>,
}

impl Member {
    pub fn worker(&self) -> &dyn Worker {
        &*self.worker
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    pub fn load(&self) -> usize {
        self.worker.load()
    }

    /// Sends a job whatever the worker's isolation (the isolated job itself, or a batch
    /// the dispatch task placed knowing which workers are isolated).
    pub fn submit(&self, work: Work, requests: Vec<RequestId>) -> PendingReply {
        self.worker.submit(work, requests)
    }

    /// Sends a job unless the worker was lent out for an isolated job (then the work
    /// comes back).
    pub fn submit_beside_others(
        &self,
        work: Work,
        requests: &[RequestId],
    ) -> Result<PendingReply, Work> {
        let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_isolated() {
            return Err(work);
        }
        Ok(self.worker.submit(work, requests.to_vec()))
    }

    /// Waits for a job's reply. A worker that holds the job past `timeout` is taken for
    /// hung and killed; its death then answers the job.
    pub async fn reply_within(
        &self,
        mut pending: PendingReply,
        timeout: Duration,
    ) -> Result<Reply, JobError> {
        let worker = &self.worker;
        let replied = match tokio::time::timeout(timeout, &mut pending).await {
            Ok(replied) => replied,
            Err(_) => {
                tracing::error!(kind = %worker.kind(), id = worker.id(), ?timeout, "worker holds a job past its timeout; killing it");
                worker.kill();
                pending.await
            }
        };
        // A dropped sender is a worker that went without answering.
        replied.unwrap_or(Err(JobError::WorkerGone {
            kind: worker.kind(),
            id: worker.id(),
        }))
    }

    fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Acquire)
    }

    /// Lends the worker out for an isolated job, unless it already is.
    fn try_isolate(&self) -> bool {
        let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        !self.isolated.swap(true, Ordering::AcqRel)
    }
}

/// The live workers of one kind.
pub struct WorkerSet {
    members: RwLock<Vec<Arc<Member>>>,
    /// Bumped whenever a worker joins or leaves, so that waiters learn of it.
    changes: watch::Sender<u64>,
    next_serial: AtomicU64,
}

impl Default for WorkerSet {
    fn default() -> Self {
        Self {
            members: RwLock::default(),
            changes: watch::Sender::new(0),
            next_serial: AtomicU64::new(0),
        }
    }
}

impl WorkerSet {
    pub fn add(&self, worker: Arc<dyn Worker>) {
        let member = Member {
            worker,
            serial: self.next_serial.fetch_add(1, Ordering::Relaxed),
            isolated: AtomicBool::new(false),
            gate: Mutex::new(()),
        };
        self.write().push(Arc::new(member));
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn remove(&self, worker: &Arc<dyn Worker>) {
        self.write().retain(|m| !Arc::ptr_eq(&m.worker, worker));
        self.changes.send_modify(|n| *n += 1);
    }

    /// The live worker with the fewest jobs waiting.
    pub fn least_loaded(&self) -> Option<Arc<Member>> {
        self.least_loaded_where(|_| true)
    }

    /// The live worker with the fewest jobs waiting among those `eligible` accepts
    /// (never one lent out for an isolated job).
    pub fn least_loaded_where(&self, eligible: impl Fn(&Member) -> bool) -> Option<Arc<Member>> {
        self.read()
            .iter()
            .filter(|m| m.worker.is_alive() && !m.is_isolated() && eligible(m))
            .min_by_key(|m| m.load())
            .cloned()
    }

    /// Live workers.
    pub fn alive_count(&self) -> usize {
        self.read().iter().filter(|m| m.worker.is_alive()).count()
    }

    pub fn any_alive(&self) -> bool {
        self.read().iter().any(|m| m.worker.is_alive())
    }

    /// A receiver that changes whenever a worker joins or leaves.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The least-loaded live worker, waiting up to `patience` for one to join.
    pub async fn least_loaded_within(&self, patience: Duration) -> Option<Arc<Member>> {
        let mut changes = self.changes.subscribe();
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            if let Some(member) = self.least_loaded() {
                return Some(member);
            }
            match tokio::time::timeout_at(give_up, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// Lends out a worker for a job that must run alone, waiting up to `patience` for
    /// one: it gets no new job from the moment it is taken, and is handed over once the
    /// jobs it already held are done. Others may use it again when the loan is dropped.
    pub async fn isolate_within(self: &Arc<Self>, patience: Duration) -> Option<IsolatedWorker> {
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            if let Some(taken) = self.take_least_loaded() {
                let taken = IsolatedWorker {
                    member: taken,
                    set: Arc::clone(self),
                };
                // Jobs finishing do not signal; a short poll is enough for a rare retry.
                while taken.member.worker.is_alive() && taken.member.load() > 0 {
                    if tokio::time::Instant::now() >= give_up {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if taken.member.worker.is_alive() {
                    return Some(taken);
                }
                continue;
            }
            if tokio::time::Instant::now() >= give_up {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn take_least_loaded(&self) -> Option<Arc<Member>> {
        let members = self.read();
        let mut candidates: Vec<_> = members
            .iter()
            .filter(|m| m.worker.is_alive() && !m.is_isolated())
            .collect();
        candidates.sort_by_key(|m| m.load());
        candidates
            .into_iter()
            .find(|m| m.try_isolate())
            .map(Arc::clone)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Member>>> {
        self.members.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Member>>> {
        self.members.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A worker lent out for one isolated job; free for others again when dropped, and
/// those waiting for a worker learn it.
pub struct IsolatedWorker {
    member: Arc<Member>,
    set: Arc<WorkerSet>,
}

impl IsolatedWorker {
    pub fn member(&self) -> &Member {
        &self.member
    }
}

impl Drop for IsolatedWorker {
    fn drop(&mut self) {
        self.member.isolated.store(false, Ordering::Release);
        self.set.changes.send_modify(|n| *n += 1);
    }
}
