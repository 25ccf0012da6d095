//! The one mapping from what went wrong to what a client is told: each failure has a
//! class, and the class decides the gRPC code, the HTTP status, the JSON `error_type`
//! and the `code` label of `request_errors_total`, for both faces alike.

use std::time::Duration;

use axum::http::StatusCode;
use crossenc_core::models::UnknownModel;
use crossenc_core::{InvalidRequest, JobError, PipelineError, RequestId};
use crossenc_types::PairRefusal;
use tonic::Code;

/// What kind of failure a client is told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// A field is missing, empty, malformed or out of range.
    InvalidArgument,
    /// More entries or bytes than a request may carry.
    PayloadTooLarge,
    /// An HTTP body that is not declared JSON.
    UnsupportedMediaType,
    /// The server is full, or the deadline cannot be met: retry later.
    ResourceExhausted,
    /// No worker is up, or the server is stopping: retry shortly.
    Unavailable,
    /// No answer within the deadline.
    DeadlineExceeded,
    /// A worker failed the work: retrying the same input will not help.
    Internal,
    /// No valid API key.
    Unauthenticated,
    /// A model this server does not serve.
    NotFound,
}

/// Every class, for the tests that check the mapping is one-to-one where it must be.
pub const CLASSES: [ErrorClass; 9] = [
    ErrorClass::InvalidArgument,
    ErrorClass::PayloadTooLarge,
    ErrorClass::UnsupportedMediaType,
    ErrorClass::ResourceExhausted,
    ErrorClass::Unavailable,
    ErrorClass::DeadlineExceeded,
    ErrorClass::Internal,
    ErrorClass::Unauthenticated,
    ErrorClass::NotFound,
];

impl ErrorClass {
    pub fn grpc_code(self) -> Code {
        match self {
            // gRPC has no code of its own for a request that is too large.
            ErrorClass::InvalidArgument
            | ErrorClass::PayloadTooLarge
            | ErrorClass::UnsupportedMediaType => Code::InvalidArgument,
            ErrorClass::ResourceExhausted => Code::ResourceExhausted,
            ErrorClass::Unavailable => Code::Unavailable,
            ErrorClass::DeadlineExceeded => Code::DeadlineExceeded,
            ErrorClass::Internal => Code::Internal,
            ErrorClass::Unauthenticated => Code::Unauthenticated,
            ErrorClass::NotFound => Code::NotFound,
        }
    }

    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorClass::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorClass::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorClass::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorClass::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorClass::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorClass::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorClass::NotFound => StatusCode::NOT_FOUND,
        }
    }

    /// The JSON body's `error_type`, in text-embeddings-inference's words.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorClass::InvalidArgument | ErrorClass::UnsupportedMediaType => "validation",
            ErrorClass::PayloadTooLarge => "payload_too_large",
            ErrorClass::ResourceExhausted => "overloaded",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::DeadlineExceeded => "timeout",
            ErrorClass::Internal => "backend",
            ErrorClass::Unauthenticated => "unauthorized",
            ErrorClass::NotFound => "not_found",
        }
    }

    /// The `code` label of `request_errors_total`, in the words gRPC's codes use.
    pub fn code_word(self) -> &'static str {
        match self {
            ErrorClass::InvalidArgument => "invalid_argument",
            ErrorClass::PayloadTooLarge => "payload_too_large",
            ErrorClass::UnsupportedMediaType => "unsupported_media_type",
            ErrorClass::ResourceExhausted => "resource_exhausted",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::DeadlineExceeded => "deadline_exceeded",
            ErrorClass::Internal => "internal",
            ErrorClass::Unauthenticated => "unauthenticated",
            ErrorClass::NotFound => "not_found",
        }
    }

    pub fn of_invalid(error: &InvalidRequest) -> Self {
        match error {
            InvalidRequest::Field(_) => ErrorClass::InvalidArgument,
            InvalidRequest::TooMany { .. } | InvalidRequest::TextTooLong { .. } => {
                ErrorClass::PayloadTooLarge
            }
            InvalidRequest::Unreadable { refusal, .. } => match refusal {
                PairRefusal::WouldCut { .. }
                | PairRefusal::TooManyWindows { .. }
                | PairRefusal::PromptLeavesNoRoom { .. } => ErrorClass::PayloadTooLarge,
                PairRefusal::PromptReadsOneWindow => ErrorClass::InvalidArgument,
            },
        }
    }

    pub fn of(error: &PipelineError) -> Self {
        match error {
            PipelineError::Invalid(invalid) => Self::of_invalid(invalid),
            PipelineError::Refused(_) => ErrorClass::ResourceExhausted,
            PipelineError::NoWorker(_)
            | PipelineError::Stopping
            | PipelineError::Job(JobError::WorkerGone { .. } | JobError::NotDelivered { .. }) => {
                ErrorClass::Unavailable
            }
            PipelineError::Job(JobError::Failed { .. })
            | PipelineError::WrongReply { .. }
            | PipelineError::ScoreCount { .. }
            | PipelineError::Poison { .. }
            | PipelineError::TokenizerPoison { .. } => ErrorClass::Internal,
        }
    }
}

/// The `code` label of a failed gRPC call, from its status code (a call refused by
/// tonic itself has no class of ours).
pub fn grpc_code_word(code: Code) -> &'static str {
    match code {
        Code::Cancelled => "cancelled",
        code => match CLASSES.iter().find(|c| c.grpc_code() == code) {
            Some(class) => class.code_word(),
            None => "unknown",
        },
    }
}

/// A failure as a client is told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: ErrorClass,
    pub message: String,
}

impl Failure {
    pub fn new(class: ErrorClass, message: impl ToString) -> Self {
        Self {
            class,
            message: message.to_string(),
        }
    }

    /// No scores within `timeout`: the server's own limit (HTTP), or the deadline named
    /// by `whose` (gRPC).
    pub fn deadline(whose: &str, timeout: Duration) -> Self {
        Self::new(
            ErrorClass::DeadlineExceeded,
            format!("{whose} ({timeout:?}) passed before the scores were ready"),
        )
    }

    pub fn stopping() -> Self {
        Self::new(ErrorClass::Unavailable, "the server is shutting down")
    }

    pub fn into_status(self) -> tonic::Status {
        tonic::Status::new(self.class.grpc_code(), self.message)
    }
}

impl From<PipelineError> for Failure {
    fn from(error: PipelineError) -> Self {
        Self::of_request(error, &RequestId::generate())
    }
}

impl Failure {
    /// What the client did, or can act on, is said as it is; internal detail (worker
    /// ids, a worker's own message) goes to the log under the request's id, which the
    /// answer gives.
    pub fn of_request(error: PipelineError, request: &RequestId) -> Self {
        let class = ErrorClass::of(&error);
        match error {
            PipelineError::Refused(_)
            | PipelineError::Invalid(_)
            | PipelineError::NoWorker(_)
            | PipelineError::Stopping
            | PipelineError::Poison { .. }
            | PipelineError::TokenizerPoison { .. } => Self::new(class, error),
            PipelineError::Job(_)
            | PipelineError::WrongReply { .. }
            | PipelineError::ScoreCount { .. } => {
                tracing::error!(%request, %error, "request failed");
                let message = match class {
                    ErrorClass::Unavailable => format!(
                        "a worker stopped while handling this request; retry it (request id {request} in the server's log)"
                    ),
                    _ => format!(
                        "the server could not score this request (request id {request} in the server's log)"
                    ),
                };
                Self::new(class, message)
            }
        }
    }
}

impl Failure {
    /// No valid API key: nothing more is said.
    pub fn unauthenticated() -> Self {
        Self::new(
            ErrorClass::Unauthenticated,
            "a valid API key is required: send it as a Bearer token in the authorization header",
        )
    }
}

impl From<UnknownModel> for Failure {
    fn from(error: UnknownModel) -> Self {
        Self::new(ErrorClass::NotFound, error)
    }
}

impl From<InvalidRequest> for Failure {
    fn from(error: InvalidRequest) -> Self {
        Self::new(ErrorClass::of_invalid(&error), error)
    }
}

impl From<Failure> for tonic::Status {
    fn from(failure: Failure) -> Self {
        failure.into_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_has_its_own_http_status_and_code_word() {
        for (i, a) in CLASSES.iter().enumerate() {
            for b in &CLASSES[i + 1..] {
                assert_ne!(a.http_status(), b.http_status(), "{a:?} {b:?}");
                assert_ne!(a.code_word(), b.code_word(), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn grpc_words_match_the_classes_that_own_the_code() {
        assert_eq!(grpc_code_word(Code::InvalidArgument), "invalid_argument");
        assert_eq!(
            grpc_code_word(Code::ResourceExhausted),
            "resource_exhausted"
        );
        assert_eq!(grpc_code_word(Code::DeadlineExceeded), "deadline_exceeded");
        assert_eq!(grpc_code_word(Code::Cancelled), "cancelled");
        assert_eq!(grpc_code_word(Code::DataLoss), "unknown");
    }

    #[test]
    fn a_worker_that_went_away_is_unavailable_and_a_poison_pair_internal() {
        let gone = PipelineError::Job(JobError::WorkerGone {
            kind: crossenc_core::WorkerKind::Model,
            id: 0,
        });
        assert_eq!(ErrorClass::of(&gone), ErrorClass::Unavailable);
        let told = Failure::from(gone).message;
        assert!(
            !told.contains("worker 0"),
            "no worker id for the client: {told}"
        );
        assert!(told.contains("request id"), "{told}");
        let poison = PipelineError::Poison { index: 3 };
        assert_eq!(ErrorClass::of(&poison), ErrorClass::Internal);
        let too_many = InvalidRequest::TooMany {
            field: "documents".into(),
            count: 2,
            limit: 1,
        };
        assert_eq!(
            Failure::from(too_many).into_status().code(),
            Code::InvalidArgument
        );
    }
}
