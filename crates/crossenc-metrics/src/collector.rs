//! The collection loop: every `collection_interval` it refreshes the gauges that
//! describe the last interval (throughputs, padding, sequence lengths, CPU) or a state
//! read from outside the request path (memory, GPUs, admission).
//!
//! It reads /proc and NVML on a blocking thread, so request handling never waits on it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossenc_ipc::WorkerKind;
use tokio::sync::watch;

use crate::registry::{GpuLabels, Metrics, WorkerLabels};

/// What the collection loop reads from outside the registry: the worker processes and
/// the admission levels, from whoever owns them.
pub trait CollectorSources: Send + 'static {
    /// The live worker processes.
    fn processes(&self) -> Vec<Process>;
    /// Pairs queued and requests in flight now.
    fn admission(&self) -> AdmissionLevels;
}

/// A worker process, as the collection loop reads it from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    pub id: u32,
    pub kind: WorkerKind,
}

/// How full admission is now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionLevels {
    pub queued_pairs: usize,
    pub requests_in_flight: usize,
}

/// NVIDIA's management library, where the machine has it, and the GPUs it watches.
pub struct GpuMonitor {
    nvml: nvml_wrapper::Nvml,
    watched: Vec<u32>,
}

/// GPUs the model was asked to run on that this machine does not have.
#[derive(Debug, thiserror::Error)]
pub enum GpuMissing {
    #[error(
        "model.device asks for {asked}, but this machine has no NVIDIA driver: NVIDIA's \
         management library (libnvidia-ml.so.1) could not be opened ({reason}); serve on \
         `cpu`, or on a machine with NVIDIA's driver"
    )]
    NoDriver { asked: String, reason: String },
    #[error(
        "model.device asks for cuda:{asked}, but this machine has {count} NVIDIA GPU(s) \
         (cuda:0 to cuda:{last})", last = .count.saturating_sub(1)
    )]
    NoSuchGpu { asked: u32, count: u32 },
}

impl GpuMonitor {
    /// Opens NVML to watch the GPUs the model runs on (`in_use`, CUDA ordinals in PCI
    /// bus order), failing with why when one of them is not there. With `in_use` empty
    /// (a model on the CPU) it watches every GPU of the machine, and a machine without
    /// NVML gets `None`, logged once.
    pub fn open(in_use: &[u32]) -> Result<Option<Self>, GpuMissing> {
        let opened = nvml_wrapper::Nvml::init().and_then(|nvml| {
            let count = nvml.device_count()?;
            Ok((nvml, count))
        });
        let (nvml, count) = match opened {
            Ok(opened) => opened,
            Err(error) if in_use.is_empty() => {
                tracing::info!(%error, "no GPU metrics: NVIDIA's management library (NVML) is not available");
                return Ok(None);
            }
            Err(error) => {
                let asked = in_use.iter().map(|n| format!("cuda:{n}"));
                return Err(GpuMissing::NoDriver {
                    asked: asked.collect::<Vec<_>>().join(","),
                    reason: error.to_string(),
                });
            }
        };
        if let Some(&asked) = in_use.iter().find(|&&n| n >= count) {
            return Err(GpuMissing::NoSuchGpu { asked, count });
        }
        let watched = match in_use.is_empty() {
            true => (0..count).collect(),
            false => in_use.to_vec(),
        };
        tracing::info!(gpus = ?watched, "GPU metrics from NVML");
        Ok(Some(Self { nvml, watched }))
    }

    fn sample(&self, metrics: &Metrics) {
        const MIB: f64 = 1024.0 * 1024.0;
        for &index in &self.watched {
            let Ok(device) = self.nvml.device_by_index(index) else {
                continue;
            };
            let labels = GpuLabels { gpu: index };
            if let Ok(memory) = device.memory_info() {
                let used = memory.used as f64 / MIB;
                metrics.gpu_memory_mb.get_or_create(&labels).set(used);
                let total = memory.total as f64 / MIB;
                metrics
                    .gpu_memory_total_mb
                    .get_or_create(&labels)
                    .set(total);
            }
            if let Ok(utilization) = device.utilization_rates() {
                let busy = f64::from(utilization.gpu);
                metrics.gpu_utilization_pct.get_or_create(&labels).set(busy);
            }
        }
    }
}

/// A process of the server: the supervisor or one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Member {
    pid: u32,
    id: u32,
    kind: &'static str,
}

/// Refreshes the interval gauges.
pub struct Collector {
    metrics: Arc<Metrics>,
    sources: Box<dyn CollectorSources>,
    gpus: Option<GpuMonitor>,
    /// CPU ticks of each process at the last look.
    ticks: HashMap<u32, u64>,
    /// Processes whose memory was reported last time, to drop those that exited.
    reported: Vec<WorkerLabels>,
    requests: u64,
    last: Instant,
}

impl Collector {
    pub fn new(
        metrics: Arc<Metrics>,
        sources: Box<dyn CollectorSources>,
        gpus: Option<GpuMonitor>,
    ) -> Self {
        Self {
            metrics,
            sources,
            gpus,
            ticks: HashMap::new(),
            reported: Vec::new(),
            requests: 0,
            last: Instant::now(),
        }
    }

    /// Collects every `interval` until `stop` turns true.
    pub async fn run(mut self, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|&stop| stop) => return,
            }
            let collected = tokio::task::spawn_blocking(move || {
                self.collect();
                self
            })
            .await;
            match collected {
                Ok(collector) => self = collector,
                Err(error) => {
                    tracing::error!(%error, "the metrics collection loop failed; gauges stop updating");
                    return;
                }
            }
        }
    }

    /// One look: everything since the last.
    pub fn collect(&mut self) {
        let now = Instant::now();
        let seconds = now.duration_since(self.last).as_secs_f64().max(1e-3);
        self.last = now;
        self.batches();
        self.workers(seconds);
        self.requests(seconds);
        self.processes(seconds);
        if let Some(gpus) = &self.gpus {
            gpus.sample(&self.metrics);
        }
    }

    /// Padding and lengths of the interval's batches; 0 for an idle interval.
    fn batches(&self) {
        let figures = self.metrics.batches.take();
        let padding = figures.computed_tokens.saturating_sub(figures.real_tokens);
        let ratio = padding as f64 / figures.computed_tokens.max(1) as f64;
        self.metrics.padding_ratio.set(ratio);
        self.metrics.max_seq_length.set(figures.longest as i64);
        let mean = figures.real_tokens as f64 / figures.pairs.max(1) as f64;
        self.metrics.avg_seq_length.set(mean);
    }

    fn workers(&self, seconds: f64) {
        let (mut tokenizer_pairs, mut model_pairs) = (0, 0);
        for ((kind, id), window) in self.metrics.worker_windows() {
            let (jobs, pairs, busy) = window.take();
            let labels = WorkerLabels {
                worker_id: id,
                worker_type: kind.as_str(),
            };
            let throughput = pairs as f64 / seconds;
            self.metrics
                .worker_throughput_qps
                .get_or_create(&labels)
                .set(throughput);
            let mean_ms = busy.as_secs_f64() * 1e3 / jobs.max(1) as f64;
            self.metrics
                .worker_latency_ms
                .get_or_create(&labels)
                .set(mean_ms);
            match kind {
                WorkerKind::Tokenizer => tokenizer_pairs += pairs,
                WorkerKind::Model => model_pairs += pairs,
            }
        }
        let rate = |pairs: u64| pairs as f64 / seconds;
        self.metrics
            .tokenizer_throughput_qps
            .set(rate(tokenizer_pairs));
        self.metrics.inference_throughput_qps.set(rate(model_pairs));
    }

    fn requests(&mut self, seconds: f64) {
        let finished = self
            .metrics
            .finished_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        let rate = finished.saturating_sub(self.requests) as f64 / seconds;
        self.requests = finished;
        self.metrics.overall_throughput_qps.set(rate);
        let admission = self.sources.admission();
        self.metrics.queued_pairs.set(admission.queued_pairs as i64);
        self.metrics
            .requests_in_flight
            .set(admission.requests_in_flight as i64);
    }

    /// Resident memory of every process, and the CPU they used together.
    fn processes(&mut self, seconds: f64) {
        let mut members = vec![Member {
            pid: std::process::id(),
            id: 0,
            kind: "supervisor",
        }];
        members.extend(self.sources.processes().iter().map(|p| Member {
            pid: p.pid,
            id: p.id,
            kind: p.kind.as_str(),
        }));
        let page = procfs::page_size();
        let mut ticks = HashMap::with_capacity(members.len());
        let mut reported = Vec::with_capacity(members.len());
        let mut used = 0;
        for member in members {
            // A worker that just exited has no /proc entry: it is skipped this time.
            let Ok(stat) = procfs::process::Process::new(member.pid as i32).and_then(|p| p.stat())
            else {
                continue;
            };
            let labels = WorkerLabels {
                worker_id: member.id,
                worker_type: member.kind,
            };
            let resident = (stat.rss * page) as i64;
            self.metrics
                .resident_memory
                .get_or_create(&labels)
                .set(resident);
            reported.push(labels);
            let now = stat.utime + stat.stime;
            // A process first seen this interval counts from now on.
            used += self
                .ticks
                .get(&member.pid)
                .map_or(0, |&then| now.saturating_sub(then));
            ticks.insert(member.pid, now);
        }
        // A worker that exited (or is being restarted) has no memory to report.
        for gone in self.reported.iter().filter(|l| !reported.contains(l)) {
            self.metrics.resident_memory.remove(gone);
        }
        self.reported = reported;
        let first_look = self.ticks.is_empty();
        self.ticks = ticks;
        if !first_look {
            let busy = used as f64 / procfs::ticks_per_second() as f64;
            self.metrics.cpu_percent.set(busy / seconds * 100.0);
        }
    }
}
