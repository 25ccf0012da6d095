//! Worker processes: spawning, the handshake, and the threads that carry each worker's
//! commands and events.
//!
//! A [`Worker`] is the supervisor's handle on one process. Jobs submitted to it wait in
//! its pending table until the worker answers; when the worker dies, every pending job
//! fails at once with [`JobError::WorkerGone`], so no caller waits forever.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crossenc_ipc::{
    IpcReceiver, IpcSender, Job, JobTiming, ScoreBatch, Stamp, StatsReport, TextRef, TokenBatch,
    Work, WorkerCommand, WorkerEvent, WorkerInfo, WorkerKind, WorkerListener,
};
use tokio::sync::{oneshot, watch};

use crate::metrics::Metrics;

/// How to start a worker: the binary to re-execute and what every worker is told.
#[derive(Debug, Clone)]
pub struct WorkerLauncher {
    pub exe: PathBuf,
    pub model: PathBuf,
    pub max_length: Option<usize>,
    pub device: String,
    /// `f32` or `bf16`, as `model.dtype` says.
    pub dtype: &'static str,
    pub model_threads: usize,
    pub startup_timeout: Duration,
}

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

/// A worker that could not be started, and why.
#[derive(Debug, thiserror::Error)]
#[error("{kind} worker {id} failed to start: {reason}")]
pub struct SpawnError {
    pub kind: WorkerKind,
    pub id: u32,
    pub reason: String,
}

type ReplySender = oneshot::Sender<Result<Reply, JobError>>;

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
        let (reply, answer) = oneshot::channel();
        let id = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Takes an idle worker for a job that must run alone, waiting up to `patience` for
    /// one; it gets no other job until the returned guard is dropped.
    pub async fn isolate_within(&self, patience: Duration) -> Option<IsolatedWorker> {
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            if let Some(worker) = self.claim_idle() {
                return Some(worker);
            }
            if tokio::time::Instant::now() >= give_up {
                return None;
            }
            // Jobs finishing do not signal; a short poll is enough for a rare retry.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn claim_idle(&self) -> Option<IsolatedWorker> {
        let workers = self.workers.read().unwrap_or_else(|e| e.into_inner());
        workers
            .iter()
            .filter(|w| w.is_alive() && w.load() == 0)
            .find(|w| {
                w.isolated
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .map(|w| IsolatedWorker(Arc::clone(w)))
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

/// A worker taken for one isolated job; free for others again when dropped.
pub struct IsolatedWorker(pub Arc<Worker>);

impl Drop for IsolatedWorker {
    fn drop(&mut self) {
        self.0.isolated.store(false, Ordering::Release);
    }
}

/// Opens a pidfd on a child that no one has reaped yet (so the pid is still its own).
fn open_pidfd(child: &Child) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    // SAFETY: a non-negative result is a descriptor this process now owns alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn signal_pidfd(pidfd: &OwnedFd, signal: i32) {
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

impl WorkerLauncher {
    /// Starts one worker and waits until it is loaded (blocking: call from a blocking
    /// thread). A worker that exits, fails to load or takes longer than
    /// `startup_timeout` is reported with its reason.
    pub fn spawn(
        &self,
        kind: WorkerKind,
        id: u32,
        metrics: &Arc<Metrics>,
    ) -> Result<Worker, SpawnError> {
        let fail = |reason: String| SpawnError { kind, id, reason };
        let listener = WorkerListener::new().map_err(|e| fail(e.to_string()))?;
        let name = listener.name().to_string();
        let mut child = spawn_from_forker(self.command(kind, id, &name))
            .map_err(|e| fail(format!("cannot execute {}: {e}", self.exe.display())))?;
        let pidfd = open_pidfd(&child);
        let hello = self
            .await_hello(listener, &name, &mut child)
            .and_then(|link| match link.pid == child.id() {
                true => Ok(link),
                false => Err(format!(
                    "said it was pid {} but was started as pid {}",
                    link.pid,
                    child.id()
                )),
            });
        let link = match hello {
            Ok(link) => link,
            Err(reason) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(reason));
            }
        };
        let info = match link.events.try_recv_timeout(self.startup_timeout) {
            Ok(WorkerEvent::Ready(info)) => info,
            Ok(WorkerEvent::StartFailed { message }) => Err(fail(message))?,
            Ok(other) => Err(fail(format!("sent {other:?} before Ready")))?,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "no Ready within {:?} ({e:?})",
                    self.startup_timeout
                )));
            }
        };
        tracing::info!(%kind, id, pid = link.pid, "worker ready");
        Ok(Worker::start(kind, id, link, info, (child, pidfd), metrics))
    }

    fn command(&self, kind: WorkerKind, id: u32, server_name: &str) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .args(["worker", kind.as_str(), "--ipc-server", server_name])
            .arg("--worker-id")
            .arg(id.to_string())
            .arg("--supervisor-pid")
            .arg(std::process::id().to_string())
            .arg("--model")
            .arg(&self.model)
            .args(["--device", &self.device])
            .args(["--dtype", self.dtype])
            .stdin(Stdio::null())
            // Its own process group: a terminal's Ctrl-C reaches the supervisor alone,
            // which then stops the workers in order.
            .process_group(0);
        if let Some(max_length) = self.max_length {
            command.arg("--max-length").arg(max_length.to_string());
        }
        let threads = match kind {
            WorkerKind::Model => self.model_threads,
            WorkerKind::Tokenizer => 1,
        };
        // rayon runs the CPU pass; OpenMP runs oneDNN's bf16 products. OpenMP threads that
        // spin after a product would take the cores from the rayon work between products.
        command.env("RAYON_NUM_THREADS", threads.to_string());
        command.env("OMP_NUM_THREADS", threads.to_string());
        if std::env::var_os("OMP_WAIT_POLICY").is_none() {
            command.env("OMP_WAIT_POLICY", "passive");
        }
        command
    }

    /// Waits for the worker's Hello; gives up if the process exits first.
    fn await_hello(
        &self,
        listener: WorkerListener,
        name: &str,
        child: &mut Child,
    ) -> Result<crossenc_ipc::SupervisorLink, String> {
        let accept = std::thread::spawn(move || listener.accept());
        let deadline = Instant::now() + self.startup_timeout;
        while !accept.is_finished() {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                WorkerListener::abandon(name);
                let _ = accept.join();
                return Err(match exited {
                    Some(status) => format!("exited ({status}) before connecting"),
                    None => "did not connect in time".to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let link = accept
            .join()
            .map_err(|_| "the accept thread panicked".to_string())?;
        link.map_err(|e| e.to_string())
    }
}

impl Worker {
    fn start(
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

type ForkRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `command` from one thread that lives as long as the supervisor.
///
/// Workers ask for SIGKILL when their parent dies (PR_SET_PDEATHSIG), and Linux sends it
/// when the *thread* that forked them exits, not the process: a worker forked from a
/// short-lived thread (such as tokio's blocking pool) would be killed when that thread is
/// retired.
fn spawn_from_forker(command: Command) -> std::io::Result<Child> {
    static FORKER: OnceLock<Mutex<mpsc::Sender<ForkRequest>>> = OnceLock::new();
    let forker = FORKER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<ForkRequest>();
        spawn_named("worker-forker".into(), move || {
            for (mut command, reply) in incoming {
                let _ = reply.send(command.spawn());
            }
        });
        Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    let sent = forker
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, reply));
    let gone = || std::io::Error::other("the worker-forker thread is gone");
    sent.map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

fn spawn_named(name: String, body: impl FnOnce() + Send + 'static) {
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
