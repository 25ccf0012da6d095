//! Admission: the supervisor holds at most `max_concurrent_requests` requests and at
//! most `max_queued_pairs` pairs that no model worker has taken yet. A request over
//! either limit is refused at once, so that an overload costs the client a retry, not
//! the server its memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Which limit refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the server is at max_concurrent_requests ({limit}); retry later")]
    Requests { limit: usize },
    #[error(
        "{asked} pairs would exceed max_queued_pairs ({limit}) with {queued} already queued; retry later"
    )]
    Pairs {
        asked: usize,
        queued: usize,
        limit: usize,
    },
}

/// The two limits, shared by every request.
#[derive(Debug)]
pub struct Admission {
    requests: Arc<Semaphore>,
    max_requests: usize,
    pairs: Arc<PairBudget>,
}

/// Pairs admitted and not yet sent to a model worker.
#[derive(Debug)]
pub struct PairBudget {
    queued: AtomicUsize,
    limit: usize,
}

/// What one admitted request holds: its request slot and its queued pairs.
#[derive(Debug)]
pub struct Ticket {
    _request: OwnedSemaphorePermit,
    pub pairs: PairReservation,
}

/// Pairs of one request still counted as queued; released as they go to a model
/// worker, and all at once when dropped.
#[derive(Debug)]
pub struct PairReservation {
    budget: Arc<PairBudget>,
    held: usize,
}

impl Admission {
    pub fn new(max_requests: usize, max_queued_pairs: usize) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(max_requests)),
            max_requests,
            pairs: Arc::new(PairBudget {
                queued: AtomicUsize::new(0),
                limit: max_queued_pairs,
            }),
        }
    }

    /// Admits a request of `pairs` pairs, or says which limit it would break.
    pub fn admit(&self, pairs: usize) -> Result<Ticket, Refused> {
        let request = Arc::clone(&self.requests)
            .try_acquire_owned()
            .map_err(|_| Refused::Requests {
                limit: self.max_requests,
            })?;
        let pairs = self.pairs.reserve(pairs)?;
        Ok(Ticket {
            _request: request,
            pairs,
        })
    }

    /// Pairs admitted and not yet sent to a model worker.
    pub fn queued_pairs(&self) -> usize {
        self.pairs.queued.load(Ordering::Relaxed)
    }

    pub fn requests_in_flight(&self) -> usize {
        self.max_requests - self.requests.available_permits()
    }

    pub fn max_queued_pairs(&self) -> usize {
        self.pairs.limit
    }

    pub fn max_requests(&self) -> usize {
        self.max_requests
    }
}

impl PairBudget {
    fn reserve(self: &Arc<Self>, asked: usize) -> Result<PairReservation, Refused> {
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued + asked <= self.limit).then_some(queued + asked)
            });
        match reserved {
            Ok(_) => Ok(PairReservation {
                budget: Arc::clone(self),
                held: asked,
            }),
            Err(queued) => Err(Refused::Pairs {
                asked,
                queued,
                limit: self.limit,
            }),
        }
    }
}

impl PairReservation {
    /// `count` of these pairs left the queue.
    pub fn release(&mut self, count: usize) {
        let count = count.min(self.held);
        self.held -= count;
        self.budget.queued.fetch_sub(count, Ordering::AcqRel);
    }
}

impl Drop for PairReservation {
    fn drop(&mut self) {
        self.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_over_the_limit_are_refused_and_come_back_when_released() {
        let admission = Admission::new(10, 100);
        let mut first = admission.admit(60).unwrap();
        assert_eq!(
            admission.admit(41).unwrap_err(),
            Refused::Pairs {
                asked: 41,
                queued: 60,
                limit: 100
            }
        );
        first.pairs.release(20);
        let second = admission.admit(60).unwrap();
        assert_eq!(admission.queued_pairs(), 100);
        drop(first);
        drop(second);
        assert_eq!(admission.queued_pairs(), 0);
    }

    #[test]
    fn requests_over_the_limit_are_refused() {
        let admission = Admission::new(2, 100);
        let _a = admission.admit(1).unwrap();
        let b = admission.admit(1).unwrap();
        assert_eq!(
            admission.admit(1).unwrap_err(),
            Refused::Requests { limit: 2 }
        );
        drop(b);
        assert!(admission.admit(1).is_ok());
        assert_eq!(admission.requests_in_flight(), 1);
    }

    #[test]
    fn the_message_names_the_limit() {
        let message = Admission::new(1, 5).admit(6).unwrap_err().to_string();
        assert!(message.contains("max_queued_pairs (5)"), "{message}");
    }
}
