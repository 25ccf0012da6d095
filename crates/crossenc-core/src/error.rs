//! Why a request's pairs were not scored: what the core answers instead of scores. The
//! API faces turn these into gRPC status codes and HTTP statuses, in one place.

use crossenc_ipc::WorkerKind;
use crossenc_types::PairRefusal;

use crate::admission::Refused;
use crate::workers::JobError;

/// Why a request's pairs were not scored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error("no {0} worker is ready; retry shortly")]
    NoWorker(WorkerKind),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("{kind} worker answered a job with the wrong reply")]
    WrongReply { kind: WorkerKind },
    #[error("a model worker returned {got} scores for {expected} pairs")]
    ScoreCount { expected: usize, got: usize },
    #[error("the server is stopping")]
    Stopping,
    #[error("pair {index} of this request crashed a model worker on its own; it is not retried")]
    Poison { index: u32 },
    #[error(
        "the texts of pairs {first} to {last} of this request crashed or hung a tokenizer worker twice, the second time alone; they are not retried"
    )]
    TokenizerPoison { first: usize, last: usize },
}

/// Why a request was refused before anything was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// A field is missing, empty or out of range.
    #[error("{0}")]
    Field(String),
    /// More documents or pairs than one request may carry.
    #[error("{field} has {count} entries; the limit (max_client_batch_size) is {limit}")]
    TooMany {
        field: String,
        count: usize,
        limit: usize,
    },
    /// A pair that cannot be read as its request asked: it would be cut with `truncate`
    /// false, it needs more windows than allowed, or its model reads it in one window.
    #[error("{field} {refusal}")]
    Unreadable { field: String, refusal: PairRefusal },
    /// A text so long that cutting it to `max_text_bytes` would change its tokens.
    #[error(
        "{field} is {bytes} bytes; cut to max_text_bytes ({limit}), its tokens could differ from the whole text's (a text of mostly spaces or marks, or one as long as the other text of its pair): send at most {limit} bytes"
    )]
    TextTooLong {
        field: String,
        bytes: u64,
        limit: usize,
    },
}
