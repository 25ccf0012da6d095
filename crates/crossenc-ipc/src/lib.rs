//! The wire between crossenc's supervisor and its worker processes.
//!
//! A worker is started with the name of a one-shot IPC server owned by the supervisor.
//! It connects, sends [`WorkerEvent::Hello`] carrying the sender on which it takes
//! [`WorkerCommand`]s, loads what it needs and then says [`WorkerEvent::Ready`] (or
//! [`WorkerEvent::StartFailed`]). From then on commands flow one way and events the
//! other. Control messages are small and serialized through ipc-channel; token ids and
//! scores travel in shared memory ([`TokenBatch`], [`ScoreBatch`]).
//!
//! Workers also report per-job figures ([`StatsReport`]) on a stats channel of their
//! own, which the supervisor reads apart from the data path.
//!
//! Nothing here depends on an async runtime: both sides use plain blocking calls.

mod batch;
mod link;
mod message;
mod request;
mod texts;
mod timing;

pub use batch::{PairTokens, PairView, ScoreBatch, TokenBatch, TokenBatchBuilder};
pub use ipc_channel::ipc::{channel, IpcReceiver, IpcSender};
pub use link::{connect_to_supervisor, IpcFailure, SupervisorLink, WorkerLink, WorkerListener};
pub use message::{Job, Tokenized, Work, WorkerCommand, WorkerEvent, WorkerInfo, WorkerKind};
pub use request::{joined, RequestId};
pub use texts::{Text, TextPairs, TextRef};
pub use timing::{JobTiming, Stamp, StatsReport};
