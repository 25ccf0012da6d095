//! Running worker processes: their jobs, the sets they form, and the threads that carry
//! each worker's commands and events (starting one is `launch`'s job).
//!
//! A [`Worker`] is the supervisor's handle on one process. Jobs submitted to it wait in
//! its pending table until the worker answers; when the worker dies, every pending job
//! fails at once with [`JobError::WorkerGone`], so no caller waits forever.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossenc_ipc::{
    IpcReceiver, IpcSender, Job, JobTiming, ScoreBatch, Stamp, StatsReport, TextRef, TokenBatch,
    Work, WorkerCommand, WorkerEvent, WorkerInfo, WorkerKind,
};
use tokio::sync::{oneshot, watch};

use crate::metrics::Metrics;

/// A worker's answer to one job.
#[derive(Debug)]
pub enum Reply {
    /// The tokens, and the cut texts whose cut changed them.
    Encoded(TokenBatch, JobTiming, Vec<TextRef>),
    Scored(ScoreBatch, JobTiming),
}

/// Why a job got no answer.
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

type ReplySender = oneshot::Sender<Result<Reply, JobError>>;
/// Where a job's answer arrives.
pub type Answer = oneshot::Receiver<Result<Reply, JobError>>;

/// Jobs sent and not yet answered; `None` once the worker is gone, so that a job
/// submitted after the death fails instead of waiting.
type Pending = Mutex<Option<HashMap<u64, ReplySender>>>;

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// The supervisor's handle on one running worker process.
pub struct Worker {
    pub kind: WorkerKind,
    pub id: u32,
    /// The pid the supervisor started it as (never one the worker reported).
    pub pid: u32,
    pub info: WorkerInfo,
    commands: mpsc::Sender<WorkerCommand>,
    pending: Arc<Pending>,
    child: Arc<Mutex<Child>>,
    /// A pidfd on the process, opened before anyone could reap it: a signal through it
    /// reaches this process or none, never another that took its pid.
    pidfd: Option<OwnedFd>,
    /// Taken for a job that must run alone (a retry after a crash): no other job is
    /// given to it meanwhile.
    isolated: AtomicBool,
    /// Set when the supervisor asked the worker to exit, so that its exit is no error.
    stopping: Arc<AtomicBool>,
    /// Turns true once the process is gone and its pending jobs have failed.
    exited: watch::Receiver<bool>,
}

impl Worker {
    /// Sends a job; the receiver resolves with the worker's answer or its death.
    pub fn submit(&self, work: Work) -> oneshot::Receiver<Result<Reply, JobError>> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.submit_locked(pending, work)
    }

    /// Sends a job unless the worker was taken for an isolated job (then the work comes
    /// back): checked under the same lock that isolating takes, so no job slips in
    /// beside an isolated one.
    pub fn submit_beside_others(&self, work: Work) -> Result<Answer, Work> {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_isolated() {
            return Err(work);
        }
        Ok(self.submit_locked(pending, work))
    }

    fn submit_locked(
        &self,
        mut pending: std::sync::MutexGuard<'_, Option<HashMap<u64, ReplySender>>>,
        work: Work,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let id = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
        match pending.as_mut() {
            Some(table) => {
                table.insert(id, reply);
                // A closed command channel means the worker is dying; the event thread
                // fails this job with the others when it sees the death.
                let _ = self.commands.send(WorkerCommand::Run(Job {
                    id,
                    work,
                    // Stamped again when it goes on the wire.
                    sent_at: Stamp::now(),
                }));
            }
            None => {
                let _ = reply.send(Err(JobError::NotDelivered {
                    kind: self.kind,
                    id: self.id,
                }));
            }
        }
        answer
    }

    /// Waits for a job's answer. A worker that holds the job past `timeout` is taken
    /// for hung and killed; its death then answers the job.
    pub async fn answer_within(
        &self,
        mut answer: oneshot::Receiver<Result<Reply, JobError>>,
        timeout: Duration,
    ) -> Result<Reply, JobError> {
        let answered = match tokio::time::timeout(timeout, &mut answer).await {
            Ok(answered) => answered,
            Err(_) => {
                tracing::error!(kind = %self.kind, id = self.id, ?timeout, "worker holds a job past its timeout; killing it");
                self.kill();
                answer.await
            }
        };
        // The sender is dropped only with the pending table, which answers first.
        answered.unwrap_or(Err(JobError::WorkerGone {
            kind: self.kind,
            id: self.id,
        }))
    }

    /// Jobs sent and not yet answered.
    pub fn load(&self) -> usize {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.as_ref().map_or(usize::MAX, HashMap::len)
    }

    pub fn is_alive(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Resolves once the process is gone and every job it held has failed.
    pub async fn exited(&self) {
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(|&gone| gone).await;
    }

    /// Kills a worker that stopped answering; its death fails its pending jobs.
    pub fn kill(&self) {
        // Through the pidfd, not the Child: its lock may be held by a thread reaping it.
        match &self.pidfd {
            Some(pidfd) => signal_pidfd(pidfd, libc::SIGKILL),
            None => {
                // No pidfd (an old kernel): the Child, once the reaper lets go of it.
                let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
                let _ = child.kill();
            }
        }
    }

    fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Acquire)
    }

    /// Marks the worker as taken for an isolated job, unless it already is.
    fn try_isolate(&self) -> bool {
        let _pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        !self.isolated.swap(true, Ordering::AcqRel)
    }

    /// Asks the worker to exit, waits up to `grace`, then kills it.
    pub fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.commands.send(WorkerCommand::Shutdown);
        let deadline = Instant::now() + grace;
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        while Instant::now() < deadline {
            // An error means the event thread reaped it already.
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                _ => return,
            }
        }
        tracing::warn!(kind = %self.kind, id = self.id, "worker did not exit in time; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The live workers of one kind.
pub struct WorkerSet {
    workers: RwLock<Vec<Arc<Worker>>>,
    /// Bumped whenever a worker joins or leaves, so that waiters learn of it.
    changes: watch::Sender<u64>,
}

impl Default for WorkerSet {
    fn default() -> Self {
        Self {
            workers: RwLock::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl WorkerSet {
    pub fn add(&self, worker: Arc<Worker>) {
        self.workers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker);
        self.changes.send_modify(|n| *n += 1);
    }

    pub fn remove(&self, worker: &Arc<Worker>) {
        self.workers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|w| !Arc::ptr_eq(w, worker));
        self.changes.send_modify(|n| *n += 1);
    }

    /// The live workers, for the collection loop.
    pub fn members(&self) -> Vec<Arc<Worker>> {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        workers.iter().filter(|w| w.is_alive()).cloned().collect()
    }

    /// The live worker with the fewest jobs waiting.
    pub fn least_loaded(&self) -> Option<Arc<Worker>> {
        self.least_loaded_where(|_| true)
    }

    /// The live worker with the fewest jobs waiting among those `eligible` accepts
    /// (never one taken for an isolated job).
    pub fn least_loaded_where(&self, eligible: impl Fn(&Worker) -> bool) -> Option<Arc<Worker>> {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        workers
            .iter()
            .filter(|w| w.is_alive() && !w.is_isolated() && eligible(w))
            .min_by_key(|w| w.load())
            .cloned()
    }

    /// Live workers.
    pub fn alive_count(&self) -> usize {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        workers.iter().filter(|w| w.is_alive()).count()
    }

    /// Takes a worker for a job that must run alone, waiting up to `patience` for one:
    /// it gets no new job from the moment it is taken, and is handed over once the jobs
    /// it already held are done. Others may use it again when the guard is dropped.
    pub async fn isolate_within(self: &Arc<Self>, patience: Duration) -> Option<IsolatedWorker> {
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            if let Some(taken) = self.take_least_loaded() {
                let taken = IsolatedWorker {
                    worker: taken,
                    set: Arc::clone(self),
                };
                // Jobs finishing do not signal; a short poll is enough for a rare retry.
                while taken.worker.is_alive() && taken.worker.load() > 0 {
                    if tokio::time::Instant::now() >= give_up {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                if taken.worker.is_alive() {
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

    fn take_least_loaded(&self) -> Option<Arc<Worker>> {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        let mut candidates: Vec<_> = workers
            .iter()
            .filter(|w| w.is_alive() && !w.is_isolated())
            .collect();
        candidates.sort_by_key(|w| w.load());
        candidates
            .into_iter()
            .find(|w| w.try_isolate())
            .map(Arc::clone)
    }

    /// The least-loaded live worker, waiting up to `patience` for one to join.
    pub async fn least_loaded_within(&self, patience: Duration) -> Option<Arc<Worker>> {
        let mut changes = self.changes.subscribe();
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            if let Some(worker) = self.least_loaded() {
                return Some(worker);
            }
            match tokio::time::timeout_at(give_up, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    }

    /// A receiver that changes whenever a worker joins or leaves.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn any_alive(&self) -> bool {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        workers.iter().any(|w| w.is_alive())
    }
}

/// A worker taken for one isolated job; free for others again when dropped, and those
/// waiting for a worker learn it.
pub struct IsolatedWorker {
    worker: Arc<Worker>,
    set: Arc<WorkerSet>,
}

impl IsolatedWorker {
    pub fn worker(&self) -> &Worker {
        &self.worker
    }
}

impl Drop for IsolatedWorker {
    fn drop(&mut self) {
        self.worker.isolated.store(false, Ordering::Release);
        self.set.changes.send_modify(|n| *n += 1);
    }
}

pub(crate) fn signal_pidfd(pidfd: &OwnedFd, signal: i32) {
    // SAFETY: pidfd_send_signal reads only its arguments; a null info is allowed.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

impl Worker {
    pub(crate) fn start(
        kind: WorkerKind,
        id: u32,
        link: crossenc_ipc::SupervisorLink,
        info: WorkerInfo,
        (child, pidfd): (Child, Option<OwnedFd>),
        metrics: &Arc<Metrics>,
    ) -> Self {
        let pid = child.id();
        let (commands, queued) = mpsc::channel();
        let pending: Arc<Pending> = Arc::new(Mutex::new(Some(HashMap::new())));
        let child = Arc::new(Mutex::new(child));
        let stopping = Arc::new(AtomicBool::new(false));
        let (exit_tx, exited) = watch::channel(false);
        let sends = Arc::clone(metrics);
        spawn_named(format!("{kind}-{id}-send"), move || {
            forward_commands(queued, link.commands, &sends)
        });
        let stats = StatsThread {
            kind,
            id,
            metrics: Arc::clone(metrics),
        };
        spawn_named(format!("{kind}-{id}-stats"), move || stats.run(link.stats));
        let events = EventThread {
            kind,
            id,
            pending: Arc::clone(&pending),
            child: Arc::clone(&child),
            stopping: Arc::clone(&stopping),
            exited: exit_tx,
            metrics: Arc::clone(metrics),
        };
        spawn_named(format!("{kind}-{id}-events"), move || {
            events.run(link.events)
        });
        Self {
            kind,
            id,
            pid,
            info,
            commands,
            pending,
            child,
            pidfd,
            isolated: AtomicBool::new(false),
            stopping,
            exited,
        }
    }
}

pub(crate) fn spawn_named(name: String, body: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .name(name)
        .spawn(body)
        .expect("the OS refused a thread to the supervisor");
}

/// Writes commands to the worker's IPC channel off the async runtime, since a large
/// message blocks until the worker reads it.
fn forward_commands(
    queued: mpsc::Receiver<WorkerCommand>,
    ipc: IpcSender<WorkerCommand>,
    metrics: &Metrics,
) {
    for mut command in queued {
        if let WorkerCommand::Run(job) = &mut command {
            job.sent_at = Stamp::now();
        }
        let sending = Instant::now();
        if ipc.send(command).is_err() {
            return;
        }
        metrics
            .mp_queue_send_latency
            .observe(sending.elapsed().as_secs_f64());
    }
}

/// Reads a worker's stats channel into the registry, apart from its events, so that
/// the figures never stand in the way of the answers.
struct StatsThread {
    kind: WorkerKind,
    id: u32,
    metrics: Arc<Metrics>,
}

impl StatsThread {
    fn run(self, reports: IpcReceiver<StatsReport>) {
        let window = self.metrics.worker_window(self.kind, self.id);
        // A report that panics its decoder ends the figures of this worker, not the
        // supervisor.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while let Ok(report) = reports.recv() {
                self.metrics
                    .record_worker_report(self.kind, self.id, &window, &report);
            }
        }));
    }
}

/// Reads a worker's events and answers the jobs waiting on them.
struct EventThread {
    kind: WorkerKind,
    id: u32,
    pending: Arc<Pending>,
    child: Arc<Mutex<Child>>,
    stopping: Arc<AtomicBool>,
    exited: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl EventThread {
    fn run(self, events: IpcReceiver<WorkerEvent>) {
        // A message that panics its decoder (ipc-channel trusts the handle indices a
        // message names) means a worker that cannot be trusted: it is treated as gone,
        // so that its jobs still get their answer.
        let answered =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.answer_events(&events)));
        if answered.is_err() {
            tracing::error!(kind = %self.kind, id = self.id, "a worker's message broke its decoder; dropping the worker");
        }
        self.fail_pending();
    }

    fn answer_events(&self, events: &IpcReceiver<WorkerEvent>) {
        while let Ok(event) = events.recv() {
            let (job, answer) = match event {
                WorkerEvent::Encoded {
                    job,
                    batch,
                    timing,
                    lossy,
                } => {
                    self.received(timing);
                    (job, Ok(Reply::Encoded(batch, timing, lossy)))
                }
                WorkerEvent::Scored {
                    job,
                    scores,
                    timing,
                } => {
                    self.received(timing);
                    (job, Ok(Reply::Scored(scores, timing)))
                }
                WorkerEvent::JobFailed { job, message } => (
                    job,
                    Err(JobError::Failed {
                        kind: self.kind,
                        id: self.id,
                        message,
                    }),
                ),
                other => {
                    tracing::warn!(kind = %self.kind, id = self.id, event = ?other, "unexpected event");
                    continue;
                }
            };
            let waiting = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|table| table.remove(&job));
            // A caller that went away dropped its receiver; its answer is not needed.
            if let Some(reply) = waiting {
                let _ = reply.send(answer);
            }
        }
    }

    fn received(&self, timing: JobTiming) {
        self.metrics
            .mp_queue_receive_latency
            .observe(timing.sent_at.elapsed().as_secs_f64());
    }

    /// The channel closed or broke: the worker is gone, or no longer to be trusted.
    /// Every waiting job learns it first; then the process is killed (it may still be
    /// alive if only the channel broke) and reaped.
    fn fail_pending(&self) {
        let orphans = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        let failed_jobs = orphans.len();
        for (_, reply) in orphans {
            let _ = reply.send(Err(JobError::WorkerGone {
                kind: self.kind,
                id: self.id,
            }));
        }
        let status = {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            child.wait().map(|s| s.to_string()).unwrap_or_default()
        };
        if self.stopping.load(Ordering::Relaxed) && failed_jobs == 0 {
            tracing::info!(kind = %self.kind, id = self.id, %status, "worker stopped");
        } else {
            tracing::error!(kind = %self.kind, id = self.id, %status, failed_jobs, "worker exited");
        }
        self.exited.send_replace(true);
    }
}
