//! The access log: one line per finished request at info, under the target
//! `crossenc::access` (`log.access = false`, or the filter `crossenc::access=off`, turns
//! it off), with what an operator looks a request up by.

use std::time::Duration;

use crossenc_core::RequestId;
use crossenc_metrics::StageTimes;

/// What a request that was answered with scores cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Served {
    pub stages: StageTimes,
    pub pairs: usize,
    pub tokens: u64,
}

impl Served {
    /// What a request answered with `scores` cost.
    pub fn of(scores: &crossenc_core::Scores) -> Self {
        Self {
            stages: scores.stages,
            pairs: scores.scores.len(),
            tokens: scores.tokens,
        }
    }
}

/// Writes the access line of a finished request: `status` is gRPC's code word or the HTTP
/// status; `served` is absent for a request that got no scores.
pub fn log(
    request: Option<&RequestId>,
    method: &str,
    status: &dyn std::fmt::Display,
    served: Option<&Served>,
    latency: Duration,
) {
    let (pairs, tokens) = served.map_or((0, 0), |s| (s.pairs, s.tokens));
    tracing::info!(
        target: "crossenc::access",
        request_id = request.map_or("", RequestId::as_str),
        method,
        %status,
        pairs,
        tokens,
        latency_ms = latency.as_secs_f64() * 1e3,
        "request finished"
    );
}
