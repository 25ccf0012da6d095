use std::fmt;

use ipc_channel::ipc::{IpcReceiver, IpcSender};
use serde::{Deserialize, Serialize};

use crossenc_types::{Dtype, PairRefusal, ScoreActivation};

use crate::{JobTiming, ScoreBatch, Stamp, StatsReport, TextPairs, TextRef, TokenBatch};

/// The two kinds of worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkerKind {
    Tokenizer,
    Model,
}

impl WorkerKind {
    /// The name used on the command line and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Tokenizer => "tokenizer",
            WorkerKind::Model => "model",
        }
    }
}

impl fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a worker learned while loading, for the supervisor's limits and labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Longest pair in tokens after truncation.
    pub max_length: usize,
    /// The model's name as its folder says it.
    pub model_name: String,
    /// The architecture that runs it (`bert`, `xlm-roberta`, `qwen3`).
    pub architecture: String,
    /// A decoder's prompt template (`qwen3-reranker`, or a file); empty for an encoder.
    pub template: String,
    /// Whether requests may give an instruction (the template reads one).
    pub takes_instruction: bool,
    /// What the model's own default turns raw scores into (sigmoid: probabilities),
    /// where the operator does not override it.
    pub default_activation: ScoreActivation,
    /// Real tokens per second a model worker scored in a warm-up batch at start: the
    /// supervisor's first throughput estimate, before any request was scored.
    pub warmup_tokens_per_second: Option<f64>,
    /// The device the worker computes on (`cpu`, `cuda:0`).
    pub device: String,
    /// The number format its products run in, after any fallback.
    pub dtype: Dtype,
    /// The kernels its products run on, as timed fastest at load
    /// (`onednn-f32:brg:avx512_core`); `candle` off the CPU.
    pub kernels: String,
}

/// Supervisor to worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerCommand {
    Run(Job),
    /// Finish the job at hand and exit.
    Shutdown,
}

/// One unit of work, answered by an event that carries the same id.
#[derive(Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub work: Work,
    /// The requests this job serves (one for a tokenizer job, those whose pairs ride in a
    /// model batch), for the worker's log lines.
    pub requests: Vec<crate::RequestId>,
    /// Set by the supervisor just before the job goes on the wire.
    pub sent_at: Stamp,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Work {
    /// Tokenize these (query, document) pairs; answered by [`WorkerEvent::Encoded`].
    Encode(TextPairs),
    /// Score these tokenized pairs; answered by [`WorkerEvent::Scored`].
    Score(TokenBatch),
}

/// What a tokenizer job came to.
#[derive(Debug, Serialize, Deserialize)]
pub struct Tokenized {
    /// Every window of every pair, in pair order.
    pub batch: TokenBatch,
    /// How many windows each pair made, in order; empty when each made one.
    pub windows: Vec<u32>,
    /// Texts that arrived cut and whose cut changed the tokens the model reads.
    pub lossy: Vec<TextRef>,
    /// The first pair refused as its request's reading asked (its index in the job),
    /// with why; the batch is then empty.
    pub refused: Option<(u32, PairRefusal)>,
}

impl Tokenized {
    /// The windows' owners: for each entry of the batch, the index of its pair; `None`
    /// when the counts do not describe `pairs` pairs and the batch (a malformed reply).
    pub fn owners(&self, pairs: usize) -> Option<Vec<u32>> {
        if self.windows.is_empty() {
            return (self.batch.len() == pairs).then(|| (0..pairs as u32).collect());
        }
        let total: u64 = self.windows.iter().map(|&w| u64::from(w)).sum();
        let each_read = !self.windows.contains(&0);
        if !each_read || self.windows.len() != pairs || total != self.batch.len() as u64 {
            return None;
        }
        let each = self.windows.iter().enumerate();
        Some(
            each.flat_map(|(i, &w)| std::iter::repeat_n(i as u32, w as usize))
                .collect(),
        )
    }
}

/// Worker to supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerEvent {
    /// First message after connecting: where to send commands, and where the worker's
    /// [`StatsReport`]s arrive.
    Hello {
        pid: u32,
        commands: IpcSender<WorkerCommand>,
        stats: IpcReceiver<StatsReport>,
    },
    /// Loaded and waiting for commands.
    Ready(WorkerInfo),
    /// Could not load; the worker exits after sending this.
    StartFailed { message: String },
    Encoded {
        job: u64,
        tokenized: Tokenized,
        timing: JobTiming,
    },
    Scored {
        job: u64,
        scores: ScoreBatch,
        timing: JobTiming,
    },
    /// The job could not be done; the worker goes on with the next.
    JobFailed { job: u64, message: String },
    /// Sent by the supervisor to itself to stop waiting for a worker that never connected.
    Abandoned,
}
