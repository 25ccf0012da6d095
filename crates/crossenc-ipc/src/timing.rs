//! Time stamps that mean the same in every process, and what workers report about
//! their jobs.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};
use serde::{Deserialize, Serialize};

/// A point on the machine's monotonic clock, comparable across processes (an
/// [`std::time::Instant`] is not: it cannot cross a process boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Stamp(u64);

impl Stamp {
    pub fn now() -> Self {
        // CLOCK_MONOTONIC cannot fail on Linux; a zero stamp only blurs one figure.
        let nanos = clock_gettime(ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        Stamp(nanos)
    }

    /// Time from `earlier` to this stamp; zero if `earlier` is later.
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Time from this stamp to now.
    pub fn elapsed(self) -> Duration {
        Stamp::now().since(self)
    }
}

/// How one job went inside its worker, sent with the answer so that the supervisor can
/// split a request's latency into its stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JobTiming {
    /// From the supervisor sending the job to the worker taking it: the job waited
    /// behind the worker's earlier jobs.
    pub queued: Duration,
    /// Tokenizing or the forward pass.
    pub compute: Duration,
    /// When the worker sent the answer, for the supervisor to time the transfer.
    pub sent_at: Stamp,
}

/// A worker's figures for one job, on the stats channel (apart from the data path).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatsReport {
    /// Pairs in the job.
    pub pairs: u32,
    /// Real tokens in the job.
    pub tokens: u64,
    /// Tokenizing or the forward pass.
    pub compute: Duration,
    /// How long sending the job's answer to the supervisor took.
    pub answer_send: Duration,
    /// Reports the worker dropped since the last one because the stats channel was
    /// full: the supervisor was not reading fast enough.
    pub dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_monotonic_and_never_go_negative() {
        let a = Stamp::now();
        std::thread::sleep(Duration::from_millis(2));
        let b = Stamp::now();
        assert!(b.since(a) >= Duration::from_millis(2));
        assert_eq!(a.since(b), Duration::ZERO);
    }
}
