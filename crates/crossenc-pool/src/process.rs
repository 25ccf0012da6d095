//! A running worker process: the supervisor's handle on it, and the threads that carry
//! its commands, its events and its stats (starting one is `launch`'s job).
//!
//! A [`WorkerProcess`] is the core's [`Worker`]: jobs submitted to it wait in its
//! pending table until the process answers. When the process dies (or its channel
//! breaks), every job it held gets [`JobError::WorkerGone`] at once, so that no caller
//! waits forever; what happens to that work then (a model batch re-queued and searched,
//! a tokenizer chunk retried alone) is the core's decision.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crossenc_core::workers::{JobError, PendingReply, Reply, Worker};
use crossenc_ipc::{
    IpcReceiver, IpcSender, Job, JobTiming, RequestId, Stamp, StatsReport, Work, WorkerCommand,
    WorkerEvent, WorkerInfo, WorkerKind,
};
use crossenc_metrics::ModelMetrics;
use tokio::sync::{oneshot, watch};

type ReplySender = oneshot::Sender<Result<Reply, JobError>>;

/// Jobs sent and not yet answered; `None` once the worker is gone, so that a job
/// submitted after the death fails instead of waiting.
type Pending = Mutex<Option<HashMap<u64, ReplySender>>>;

static NEXT_JOB: AtomicU64 = AtomicU64::new(1);

/// The supervisor's handle on one running worker process.
pub struct WorkerProcess {
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
    /// Set when the supervisor asked the worker to exit, so that its exit is no error.
    stopping: Arc<AtomicBool>,
    /// Turns true once the process is gone and its pending jobs have failed.
    exited: watch::Receiver<bool>,
}

impl Worker for WorkerProcess {
    fn kind(&self) -> WorkerKind {
        self.kind
    }

    fn id(&self) -> u32 {
        self.id
    }

    fn submit(&self, work: Work, requests: Vec<RequestId>) -> PendingReply {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (reply, pending_reply) = oneshot::channel();
        let id = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
        match pending.as_mut() {
            Some(table) => {
                table.insert(id, reply);
                // A closed command channel means the worker is dying; the event thread
                // fails this job with the others when it sees the death.
                let _ = self.commands.send(WorkerCommand::Run(Job {
                    id,
                    work,
                    requests,
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
        pending_reply
    }

    fn load(&self) -> usize {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.as_ref().map_or(usize::MAX, HashMap::len)
    }

    fn is_alive(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn kill(&self) {
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
}

impl WorkerProcess {
    /// Resolves once the process is gone and every job it held has failed.
    pub async fn exited(&self) {
        let mut exited = self.exited.clone();
        let _ = exited.wait_for(|&gone| gone).await;
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

impl WorkerProcess {
    pub(crate) fn start(
        kind: WorkerKind,
        id: u32,
        link: crossenc_ipc::SupervisorLink,
        info: WorkerInfo,
        (child, pidfd): (Child, Option<OwnedFd>),
        metrics: &Arc<ModelMetrics>,
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
    metrics: &ModelMetrics,
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
    metrics: Arc<ModelMetrics>,
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
    metrics: Arc<ModelMetrics>,
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
                    tokenized,
                    timing,
                } => {
                    self.received(timing);
                    (job, Ok(Reply::Encoded(tokenized, timing)))
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
