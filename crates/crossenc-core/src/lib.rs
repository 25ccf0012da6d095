//! crossenc's batching core: what happens to a request between the API that received it
//! and the workers that compute it.
//!
//! - [`models`] routes a request to its model's pipeline;
//! - [`admission`] bounds what the server holds (requests, queued pairs, text bytes)
//!   and refuses work that cannot meet its deadline;
//! - [`pipeline`] takes a request's texts through the tokenizer workers, in chunks,
//!   retrying a chunk whose worker died alone once;
//! - [`scheduler`] cuts the waiting pairs of every request into model batches;
//! - [`dispatch`] sends the batches to the model workers and routes each score back,
//!   re-queuing and searching the batches of a worker that died.
//!
//! The core sees workers only through the [`workers::Worker`] trait: submit a job, hear
//! its reply or its worker's death, read its load, and learn when workers join or leave.
//! It must never know that workers are processes, how they are started or restarted, or
//! what protocol a client spoke: those are `crossenc-pool`'s and `crossenc-api`'s.
//!
//! Time is read from tokio's clock, so that the core's tests run on a paused one.

pub mod admission;
pub mod dispatch;
pub mod error;
pub mod models;
pub mod pipeline;
pub mod scheduler;
pub mod texts;
pub mod workers;

pub use crossenc_ipc::{RequestId, WorkerKind};
pub use error::{InvalidRequest, PipelineError};
pub use models::{ModelRoute, Models, UnknownModel};
pub use pipeline::{LearnedModel, Pipeline, PipelineLimits, Scores};
pub use workers::{JobError, PendingReply, Reply, Worker, WorkerSet};
