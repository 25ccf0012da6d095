//! Keeping each worker slot filled: when a worker process exits, the supervisor learns
//! it at once (its IPC channel closes and the process is reaped), fails or re-queues the
//! jobs it held, and starts a new one after a short, growing pause.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_ipc::WorkerKind;
use tokio::sync::{mpsc, watch};

use crossenc_core::workers::{Worker, WorkerSet};
use crossenc_metrics::{ModelMetrics, PoolLabels};

use crate::launch::{SpawnError, WorkerLauncher};
use crate::process::WorkerProcess;
use crate::ProcessTable;

/// A worker that ran this long was healthy: its next restart starts from the first pause.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long a worker may take to exit after the supervisor asks it to.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Growing pauses between restarts, so that a worker that cannot start does not spin:
/// from `first`, doubling on each failure up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The pause before this attempt; the next one is twice as long, up to the maximum.
    pub fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// One worker position (kind and id) that the supervisor keeps filled.
pub struct WorkerSlot {
    pub kind: WorkerKind,
    pub id: u32,
    pub launcher: WorkerLauncher,
    pub set: Arc<WorkerSet>,
    pub metrics: Arc<ModelMetrics>,
    pub backoff: Backoff,
    /// Failed starts in a row after which the slot gives up and reports on `fatal`.
    pub max_start_failures: u32,
    /// Where a slot that gave up says why: the server then stops with that reason.
    pub fatal: mpsc::Sender<SpawnError>,
    pub processes: ProcessTable,
}

impl WorkerSlot {
    /// Watches `worker`, restarts it whenever it exits, and stops it when `stop` turns
    /// true. Returns once the slot's last worker has stopped.
    pub async fn run(self, mut worker: Arc<WorkerProcess>, mut stop: watch::Receiver<bool>) {
        let mut backoff = self.backoff.clone();
        loop {
            self.up(&worker);
            let started = Instant::now();
            tokio::select! {
                () = worker.exited() => {}
                () = stopped(&mut stop) => {
                    self.down(&worker);
                    let _ = tokio::task::spawn_blocking(move || worker.stop(STOP_GRACE)).await;
                    return;
                }
            }
            self.down(&worker);
            if started.elapsed() >= HEALTHY_RUN {
                backoff.reset();
            }
            match self.restart(&mut backoff, &mut stop).await {
                Some(next) => worker = next,
                None => return,
            }
        }
    }

    /// Starts a new worker, pausing between attempts; `None` if the server stops first
    /// or `max_start_failures` attempts in a row failed (then the reason is on `fatal`).
    async fn restart(
        &self,
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Arc<WorkerProcess>> {
        let mut failures = 0;
        loop {
            let pause = backoff.pause();
            tracing::warn!(kind = %self.kind, id = self.id, ?pause, "restarting worker");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stopped(stop) => return None,
            }
            let launcher = WorkerLauncher {
                warm_up: false,
                ..self.launcher.clone()
            };
            let (kind, id) = (self.kind, self.id);
            let metrics = Arc::clone(&self.metrics);
            let spawned =
                tokio::task::spawn_blocking(move || launcher.spawn(kind, id, &metrics)).await;
            match spawned {
                Ok(Ok(worker)) => {
                    let worker = Arc::new(worker);
                    self.metrics
                        .worker_restarts
                        .get_or_create(&PoolLabels {
                            worker_type: kind.as_str(),
                        })
                        .inc();
                    if *stop.borrow() {
                        let _ = tokio::task::spawn_blocking(move || worker.stop(STOP_GRACE)).await;
                        return None;
                    }
                    self.set.add(Arc::clone(&worker) as Arc<dyn Worker>);
                    return Some(worker);
                }
                Ok(Err(error)) => {
                    failures += 1;
                    tracing::error!(%error, failures, "worker restart failed");
                    if failures >= self.max_start_failures {
                        tracing::error!(
                            kind = %self.kind,
                            id = self.id,
                            failures,
                            "worker failed to start too many times in a row; stopping the server"
                        );
                        let _ = self.fatal.try_send(error);
                        return None;
                    }
                }
                Err(join) => {
                    failures += 1;
                    tracing::error!(%join, failures, "worker restart panicked");
                    if failures >= self.max_start_failures {
                        let _ = self.fatal.try_send(SpawnError {
                            kind: self.kind,
                            id: self.id,
                            reason: format!("starting it panicked {failures} times in a row"),
                        });
                        return None;
                    }
                }
            }
        }
    }

    /// The worker is up: in its set (the caller added it), counted, and known to the
    /// collection loop.
    fn up(&self, worker: &WorkerProcess) {
        self.metrics.set_worker_up(self.kind, self.id, true);
        self.processes.set(self.kind, self.id, Some(worker.pid));
    }

    /// The worker is gone or going: out of its set, so that no job goes to it.
    fn down(&self, worker: &Arc<WorkerProcess>) {
        self.set.remove(&(Arc::clone(worker) as Arc<dyn Worker>));
        self.metrics.set_worker_up(self.kind, self.id, false);
        self.processes.set(self.kind, self.id, None);
    }
}

/// Resolves once `stop` turns true (the guard `wait_for` returns must not cross an await).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&s| s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset() {
        let (first, max) = (Duration::from_millis(50), Duration::from_secs(10));
        let mut backoff = Backoff::new(first, max);
        let pauses: Vec<_> = (0..12).map(|_| backoff.pause()).collect();
        assert_eq!(pauses[0], first);
        assert_eq!(pauses[1], first * 2);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), max);
        backoff.reset();
        assert_eq!(backoff.pause(), first);
    }
}
