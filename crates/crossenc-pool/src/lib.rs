//! crossenc's worker processes: starting them (the re-executed binary, the IPC
//! handshake), the threads that carry each one's jobs, events and stats, and the slots
//! that restart a worker when it exits.
//!
//! Each running process is a [`WorkerProcess`], the core's `Worker`: the pool adds it to
//! the core's `WorkerSet` of its kind when it is ready and removes it when it exits.
//! This crate must never know how requests are batched or answered, nor what the API
//! looks like: that is the core's and the API faces' business.

pub mod launch;
pub mod process;
pub mod respawn;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossenc_core::workers::{Worker, WorkerSet};
use crossenc_ipc::{WorkerInfo, WorkerKind};
use crossenc_metrics::{ModelMetrics, Process};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use launch::{SpawnError, WorkerLauncher};
pub use process::WorkerProcess;
use respawn::{Backoff, WorkerSlot, STOP_GRACE};

/// How many workers of each kind, and how hard to try restarting them.
#[derive(Debug, Clone)]
pub struct PoolPlan {
    pub tokenizers: usize,
    pub models: usize,
    pub respawn_backoff_initial: Duration,
    pub respawn_backoff_max: Duration,
    /// Failed starts in a row after which a slot gives up and the server stops.
    pub max_start_failures: u32,
}

/// The sets the pool's workers join: the core's.
pub struct PoolSets {
    pub tokenizers: Arc<WorkerSet>,
    pub models: Arc<WorkerSet>,
}

impl PoolSets {
    fn of(&self, kind: WorkerKind) -> &Arc<WorkerSet> {
        match kind {
            WorkerKind::Tokenizer => &self.tokenizers,
            WorkerKind::Model => &self.models,
        }
    }
}

/// The live worker processes by slot, for the collection loop.
#[derive(Debug, Clone, Default)]
pub struct ProcessTable(Arc<Mutex<HashMap<(WorkerKind, u32), u32>>>);

impl ProcessTable {
    fn set(&self, kind: WorkerKind, id: u32, pid: Option<u32>) {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match pid {
            Some(pid) => table.insert((kind, id), pid),
            None => table.remove(&(kind, id)),
        };
    }

    pub fn processes(&self) -> Vec<Process> {
        let table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        table
            .iter()
            .map(|(&(kind, id), &pid)| Process { pid, id, kind })
            .collect()
    }
}

/// Every worker slot, each keeping its worker running until the pool stops.
pub struct Pool {
    slots: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    fatal: mpsc::Receiver<SpawnError>,
    processes: ProcessTable,
}

/// What the workers said when they were ready, by kind.
pub type Started = Vec<(WorkerKind, WorkerInfo)>;

impl Pool {
    /// Starts every worker at once and adds each to its set as it is ready. On the first
    /// failure, stops those that did start and returns it.
    pub async fn start(
        launcher: WorkerLauncher,
        plan: PoolPlan,
        sets: PoolSets,
        metrics: Arc<ModelMetrics>,
    ) -> Result<(Pool, Started), SpawnError> {
        let workers = start_all(&launcher, &plan, &sets, &metrics).await?;
        let started = workers.iter().map(|w| (w.kind, w.info.clone())).collect();
        let (stop, stopped) = watch::channel(false);
        let (fatal_tx, fatal) = mpsc::channel(1);
        let processes = ProcessTable::default();
        let slots = workers
            .into_iter()
            .map(|worker| {
                let kind = worker.kind;
                let slot = WorkerSlot {
                    kind,
                    id: worker.id,
                    launcher: launcher.clone(),
                    set: Arc::clone(sets.of(kind)),
                    metrics: Arc::clone(&metrics),
                    backoff: Backoff::new(plan.respawn_backoff_initial, plan.respawn_backoff_max),
                    max_start_failures: plan.max_start_failures,
                    fatal: fatal_tx.clone(),
                    processes: processes.clone(),
                };
                tokio::spawn(slot.run(worker, stopped.clone()))
            })
            .collect();
        let pool = Pool {
            slots,
            stop,
            fatal,
            processes,
        };
        Ok((pool, started))
    }

    /// The live processes, for the collection loop.
    pub fn processes(&self) -> ProcessTable {
        self.processes.clone()
    }

    /// Resolves when a slot gave up restarting its worker, with the last reason.
    pub async fn failed(&mut self) -> SpawnError {
        match self.fatal.recv().await {
            Some(error) => error,
            // Every slot ended without giving up: only after stop, which consumes self.
            None => std::future::pending().await,
        }
    }

    /// Stops every worker (each asked to exit, killed after a grace) and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for slot in self.slots {
            let _ = slot.await;
        }
    }
}

/// Starts every worker at once; on the first failure, stops those that did start.
async fn start_all(
    launcher: &WorkerLauncher,
    plan: &PoolPlan,
    sets: &PoolSets,
    metrics: &Arc<ModelMetrics>,
) -> Result<Vec<Arc<WorkerProcess>>, SpawnError> {
    let counts = [
        (WorkerKind::Tokenizer, plan.tokenizers),
        (WorkerKind::Model, plan.models),
    ];
    let mut handles = Vec::new();
    for (kind, count) in counts {
        for id in 0..count as u32 {
            let launcher = launcher.clone();
            let set = Arc::clone(sets.of(kind));
            let metrics = Arc::clone(metrics);
            let handle = tokio::task::spawn_blocking(move || {
                launcher.spawn(kind, id, &metrics).map(|w| {
                    let worker = Arc::new(w);
                    set.add(Arc::clone(&worker) as Arc<dyn Worker>);
                    worker
                })
            });
            handles.push((kind, id, handle));
        }
    }
    let mut workers = Vec::new();
    let mut first_error = None;
    for (kind, id, handle) in handles {
        match handle.await {
            Ok(Ok(worker)) => workers.push(worker),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(join) => {
                first_error.get_or_insert(SpawnError {
                    kind,
                    id,
                    reason: format!("starting it panicked: {join}"),
                });
            }
        }
    }
    match first_error {
        None => Ok(workers),
        Some(error) => {
            stop_now(workers).await;
            Err(error)
        }
    }
}

/// Stops workers that never got a slot (a start that failed elsewhere).
async fn stop_now(workers: Vec<Arc<WorkerProcess>>) {
    let _ = tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            for worker in &workers {
                scope.spawn(|| worker.stop(STOP_GRACE));
            }
        });
    })
    .await;
}
