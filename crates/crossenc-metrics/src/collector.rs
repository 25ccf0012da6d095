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

use crate::model_metrics::ModelMetrics;
use crate::registry::{GpuLabels, Metrics, WorkerLabels};

/// What the collection loop reads of one model from outside the registry: its worker
/// processes and its admission levels, from whoever owns them.
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

/// One model's figures, and where the collection loop reads its admission and workers.
pub struct ModelSource {
    pub metrics: Arc<ModelMetrics>,
    pub sources: Box<dyn CollectorSources>,
}

/// Refreshes the interval gauges.
pub struct Collector {
    metrics: Arc<Metrics>,
    models: Vec<Watched>,
    gpus: Option<GpuMonitor>,
    /// CPU ticks of each process at the last look.
    ticks: HashMap<u32, u64>,
    last: Instant,
}

/// A model, and what the last look saw of it.
struct Watched {
    source: ModelSource,
    /// Requests finished at the last look.
    requests: u64,
    /// Workers whose memory was reported last time, to drop those that exited.
    reported: Vec<WorkerLabels>,
}

impl Collector {
    pub fn new(metrics: Arc<Metrics>, models: Vec<ModelSource>, gpus: Option<GpuMonitor>) -> Self {
        let models = models
            .into_iter()
            .map(|source| Watched {
                source,
                requests: 0,
                reported: Vec::new(),
            })
            .collect();
        Self {
            metrics,
            models,
            gpus,
            ticks: HashMap::new(),
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
        for model in &mut self.models {
            let metrics = &model.source.metrics;
            batches(metrics);
            workers(metrics, seconds);
            model.requests = requests(model, seconds);
        }
        self.processes(seconds);
        if let Some(gpus) = &self.gpus {
            gpus.sample(&self.metrics);
        }
    }

    /// Resident memory of every process, and the CPU they used together.
    fn processes(&mut self, seconds: f64) {
        let page = procfs::page_size();
        let mut ticks = HashMap::new();
        let mut used = 0;
        let mut look = |pid: u32| -> Option<i64> {
            // A worker that just exited has no /proc entry: it is skipped this time.
            let stat = procfs::process::Process::new(pid as i32)
                .and_then(|p| p.stat())
                .ok()?;
            let now = stat.utime + stat.stime;
            // A process first seen this interval counts from now on.
            used += self
                .ticks
                .get(&pid)
                .map_or(0, |&then| now.saturating_sub(then));
            ticks.insert(pid, now);
            Some((stat.rss * page) as i64)
        };
        if let Some(resident) = look(std::process::id()) {
            self.metrics.set_supervisor_memory(resident);
        }
        for model in &mut self.models {
            let mut reported = Vec::new();
            for process in model.source.sources.processes() {
                let Some(resident) = look(process.pid) else {
                    continue;
                };
                let labels = WorkerLabels {
                    worker_id: process.id,
                    worker_type: process.kind.as_str(),
                };
                let memory = &model.source.metrics.resident_memory;
                memory.get_or_create(&labels).set(resident);
                reported.push(labels);
            }
            // A worker that exited (or is being restarted) has no memory to report.
            for gone in model.reported.iter().filter(|l| !reported.contains(l)) {
                model.source.metrics.resident_memory.remove(gone);
            }
            model.reported = reported;
        }
        let first_look = self.ticks.is_empty();
        self.ticks = ticks;
        if !first_look {
            let busy = used as f64 / procfs::ticks_per_second() as f64;
            self.metrics.cpu_percent.set(busy / seconds * 100.0);
        }
    }
}

/// Padding and lengths of the interval's batches; 0 for an idle interval.
fn batches(metrics: &ModelMetrics) {
    let figures = metrics.batches.take();
    let padding = figures.computed_tokens.saturating_sub(figures.real_tokens);
    let ratio = padding as f64 / figures.computed_tokens.max(1) as f64;
    metrics.padding_ratio.set(ratio);
    metrics.max_seq_length.set(figures.longest as i64);
    let mean = figures.real_tokens as f64 / figures.pairs.max(1) as f64;
    metrics.avg_seq_length.set(mean);
}

fn workers(metrics: &ModelMetrics, seconds: f64) {
    let (mut tokenizer_pairs, mut model_pairs) = (0, 0);
    for ((kind, id), window) in metrics.worker_windows() {
        let (jobs, pairs, busy) = window.take();
        let labels = WorkerLabels {
            worker_id: id,
            worker_type: kind.as_str(),
        };
        let throughput = pairs as f64 / seconds;
        metrics
            .worker_throughput_qps
            .get_or_create(&labels)
            .set(throughput);
        let mean_ms = busy.as_secs_f64() * 1e3 / jobs.max(1) as f64;
        metrics
            .worker_latency_ms
            .get_or_create(&labels)
            .set(mean_ms);
        match kind {
            WorkerKind::Tokenizer => tokenizer_pairs += pairs,
            WorkerKind::Model => model_pairs += pairs,
        }
    }
    let rate = |pairs: u64| pairs as f64 / seconds;
    metrics.tokenizer_throughput_qps.set(rate(tokenizer_pairs));
    metrics.inference_throughput_qps.set(rate(model_pairs));
}

/// The request rate and admission's levels; returns the requests finished so far.
fn requests(model: &Watched, seconds: f64) -> u64 {
    let metrics = &model.source.metrics;
    let finished = metrics
        .finished_requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let rate = finished.saturating_sub(model.requests) as f64 / seconds;
    metrics.overall_throughput_qps.set(rate);
    let admission = model.source.sources.admission();
    metrics.queued_pairs.set(admission.queued_pairs as i64);
    metrics
        .requests_in_flight
        .set(admission.requests_in_flight as i64);
    finished
}
