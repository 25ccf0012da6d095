//! Admission: what the supervisor takes on, and what it refuses at once, so that an
//! overload costs a client a retry and never the server its memory.
//!
//! - Requests in flight: at most `max_concurrent_requests`, counted from before a body
//!   is read (the gRPC and HTTP gates take a [`RequestPermit`]), so that at most that
//!   many bodies are decoded at once.
//! - Pairs not yet sent to a model worker: at most `max_queued_pairs`. Pairs that go back
//!   to the queue after a worker died count again.
//! - Text held by admitted requests: at most `max_text_bytes_in_flight` bytes.
//! - Time: the [`Backlog`] knows the tokens admitted and not yet scored and how fast the
//!   model workers score; a request that would finish after its deadline is refused
//!   with the expected wait: on arrival from its text size, and once tokenized from its
//!   real tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossenc_ipc::PairTokens;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::scheduler::RequestKey;

/// A refusal is certain only past the expected wait with this much to spare: the
/// estimate is a running average, and batches of long pairs run slower than it.
const WAIT_SAFETY: f64 = 1.5;
/// Time a request spends outside the model (tokenizing, batching, answering).
const WAIT_OVERHEAD: Duration = Duration::from_millis(50);
/// Weight of the newest batch in the throughput estimate.
const RATE_WEIGHT: f64 = 0.3;
/// The slowest the estimate may say the workers are (tokens/s), so that one absurd
/// timing cannot make every wait infinite.
const MIN_RATE: f64 = 1.0;

/// Which limit refused a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    #[error(
        "{asked} bytes of text would exceed max_text_bytes_in_flight ({limit}) with {held} already held; retry later"
    )]
    TextBytes {
        asked: usize,
        held: usize,
        limit: usize,
    },
    #[error(
        "expected wait {:.1}s (the tokens admitted before it, at {rate:.0} tokens/s) exceeds the {:.1}s left before its deadline; retry later or with a longer deadline",
        expected.as_secs_f64(),
        remaining.as_secs_f64()
    )]
    Deadline {
        expected: Duration,
        remaining: Duration,
        rate: f64,
    },
}

/// Every limit, shared by every request.
#[derive(Debug)]
pub struct Admission {
    requests: Arc<Semaphore>,
    max_requests: usize,
    pairs: Arc<Budget>,
    text: Arc<Budget>,
    pub backlog: Arc<Backlog>,
}

/// An amount admitted under a limit.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    limit: usize,
}

/// A share of a [`Budget`], given back as it is released and all at once when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    held: usize,
}

/// One request in flight, from before its body was read.
#[derive(Debug)]
pub struct RequestPermit(#[allow(dead_code)] OwnedSemaphorePermit);

/// What one admitted request holds.
#[derive(Debug)]
pub struct Ticket {
    pub pairs: Reservation,
    pub tokens: TokenReservation,
    text: Reservation,
}

impl Ticket {
    /// The request's texts were tokenized and dropped: their bytes are free again.
    pub fn release_text(&mut self) {
        self.text.release(usize::MAX);
    }
}

/// The work admitted and not yet scored, and how fast it goes.
#[derive(Debug, Default)]
pub struct Backlog {
    /// Tokens of admitted requests not yet tokenized, estimated from their sizes.
    estimated: AtomicU64,
    /// Real tokens tokenized and not yet scored.
    queued: AtomicU64,
    /// Real tokens per second that the model workers score together, once known.
    rate: Mutex<Option<f64>>,
}

/// One request's share of the [`Backlog`].
#[derive(Debug)]
pub struct TokenReservation {
    backlog: Arc<Backlog>,
    estimated: u64,
    queued: u64,
}

impl Admission {
    pub fn new(max_requests: usize, max_queued_pairs: usize, max_text_bytes: usize) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(max_requests)),
            max_requests,
            pairs: Budget::new(max_queued_pairs),
            text: Budget::new(max_text_bytes),
            backlog: Arc::default(),
        }
    }

    /// Lets a request in before its body is read, or says the server is full.
    pub fn enter(&self) -> Result<RequestPermit, Refused> {
        Arc::clone(&self.requests)
            .try_acquire_owned()
            .map(RequestPermit)
            .map_err(|_| Refused::Requests {
                limit: self.max_requests,
            })
    }

    /// Admits a request of `pairs` pairs, `text_bytes` of text and about
    /// `estimated_tokens` tokens that must be scored by `deadline`, or says which limit
    /// it would break.
    pub fn admit(
        &self,
        pairs: usize,
        text_bytes: usize,
        estimated_tokens: u64,
        deadline: Instant,
    ) -> Result<Ticket, Refused> {
        let ahead = self.backlog.estimated() + self.backlog.queued();
        self.backlog.check(ahead + estimated_tokens, deadline)?;
        let pairs = self.pairs.reserve(pairs).map_err(|queued| Refused::Pairs {
            asked: pairs,
            queued,
            limit: self.pairs.limit,
        })?;
        let text = self
            .text
            .reserve(text_bytes)
            .map_err(|held| Refused::TextBytes {
                asked: text_bytes,
                held,
                limit: self.text.limit,
            })?;
        Ok(Ticket {
            pairs,
            tokens: self.backlog.reserve(estimated_tokens),
            text,
        })
    }

    /// Counts `extra` more pairs for an admitted request (the windows of its long
    /// documents beyond one each), or refuses it as [`Admission::admit`] would have.
    pub fn widen(&self, ticket: &mut Ticket, extra: usize) -> Result<(), Refused> {
        if extra == 0 {
            return Ok(());
        }
        let more = self.pairs.reserve(extra).map_err(|queued| Refused::Pairs {
            asked: ticket.pairs.held + extra,
            queued: queued.saturating_sub(ticket.pairs.held),
            limit: self.pairs.limit,
        })?;
        ticket.pairs.absorb(more);
        Ok(())
    }

    /// Checks a tokenized request against its deadline again, now that its real tokens
    /// are known: it waits behind the tokens already tokenized, not behind requests
    /// still being tokenized (the scheduler serves the oldest pairs first).
    pub fn confirm(
        &self,
        ticket: &mut Ticket,
        tokens: u64,
        deadline: Instant,
    ) -> Result<(), Refused> {
        self.backlog
            .check(self.backlog.queued() + tokens, deadline)?;
        ticket.tokens.tokenized(tokens);
        Ok(())
    }

    /// Pairs admitted and not yet sent to a model worker.
    pub fn queued_pairs(&self) -> usize {
        self.pairs.held.load(Ordering::Relaxed)
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

impl Budget {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            held: AtomicUsize::new(0),
            limit,
        })
    }

    /// Reserves `asked`, or returns what is held already.
    fn reserve(self: &Arc<Self>, asked: usize) -> Result<Reservation, usize> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + asked <= self.limit).then_some(held + asked)
            })?;
        Ok(Reservation {
            budget: Arc::clone(self),
            held: asked,
        })
    }
}

impl Reservation {
    /// Takes `other`'s share of the same budget into this one.
    fn absorb(&mut self, mut other: Reservation) {
        self.held += std::mem::take(&mut other.held);
    }

    /// `count` of this share left the queue.
    pub fn release(&mut self, count: usize) {
        let count = count.min(self.held);
        self.held -= count;
        self.budget.held.fetch_sub(count, Ordering::AcqRel);
    }

    /// `count` came back to the queue (their worker died): they count again, past the
    /// limit if need be, so that new requests are refused until they are gone.
    pub fn restore(&mut self, count: usize) {
        self.held += count;
        self.budget.held.fetch_add(count, Ordering::AcqRel);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release(self.held);
    }
}

impl Backlog {
    fn estimated(&self) -> u64 {
        self.estimated.load(Ordering::Relaxed)
    }

    fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Real tokens per second, once a worker has reported one.
    pub fn rate(&self) -> Option<f64> {
        *self.rate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first estimate, from the workers' warm-up, unless batches came first.
    pub fn seed(&self, tokens_per_second: f64) {
        let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        if rate.is_none() && tokens_per_second.is_finite() && tokens_per_second > 0.0 {
            *rate = Some(tokens_per_second.max(MIN_RATE));
        }
    }

    /// One batch of `tokens` scored in `compute` by one of `workers` busy workers.
    pub fn observe(&self, tokens: usize, compute: Duration, workers: usize) {
        let seconds = compute.as_secs_f64();
        if tokens == 0 || seconds <= 0.0 {
            return;
        }
        let sample = tokens as f64 / seconds * workers.max(1) as f64;
        if !sample.is_finite() {
            return;
        }
        let mut rate = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let next = match *rate {
            Some(rate) => rate + RATE_WEIGHT * (sample - rate),
            None => sample,
        };
        *rate = Some(next.max(MIN_RATE));
    }

    /// How long `tokens` take at the current rate, if one is known.
    pub fn wait_for(&self, tokens: u64) -> Option<Duration> {
        let rate = self.rate()?;
        Some(Duration::try_from_secs_f64(tokens as f64 / rate).unwrap_or(Duration::MAX))
    }

    /// Refuses work of `tokens` (its own and what waits before it) that cannot be done
    /// by `deadline`.
    fn check(&self, tokens: u64, deadline: Instant) -> Result<(), Refused> {
        let (Some(expected), Some(rate)) = (self.wait_for(tokens), self.rate()) else {
            return Ok(());
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now().into_std());
        let needed = expected.as_secs_f64() * WAIT_SAFETY + WAIT_OVERHEAD.as_secs_f64();
        if needed > remaining.as_secs_f64() {
            return Err(Refused::Deadline {
                expected,
                remaining,
                rate,
            });
        }
        Ok(())
    }

    fn reserve(self: &Arc<Self>, estimated: u64) -> TokenReservation {
        self.estimated.fetch_add(estimated, Ordering::AcqRel);
        TokenReservation {
            backlog: Arc::clone(self),
            estimated,
            queued: 0,
        }
    }
}

impl TokenReservation {
    /// The request was tokenized: its estimate gives way to its real tokens.
    fn tokenized(&mut self, tokens: u64) {
        self.backlog
            .estimated
            .fetch_sub(self.estimated, Ordering::AcqRel);
        self.estimated = 0;
        self.backlog.queued.fetch_add(tokens, Ordering::AcqRel);
        self.queued += tokens;
    }

    /// `tokens` of this request were scored.
    pub fn scored(&mut self, tokens: u64) {
        let tokens = tokens.min(self.queued);
        self.queued -= tokens;
        self.backlog.queued.fetch_sub(tokens, Ordering::AcqRel);
    }
}

impl Drop for TokenReservation {
    fn drop(&mut self) {
        self.backlog
            .estimated
            .fetch_sub(self.estimated, Ordering::AcqRel);
        self.backlog.queued.fetch_sub(self.queued, Ordering::AcqRel);
    }
}

/// The tokens a pass computes for these pairs (with the request each belongs to):
/// each pair's own, and each request's shared prompt prefix once (a decoder's; an
/// encoder's pairs share none).
pub(crate) fn computed_tokens<'a>(
    pairs: impl IntoIterator<Item = (RequestKey, &'a PairTokens)>,
) -> usize {
    let mut prefixes: HashMap<RequestKey, usize> = HashMap::new();
    let mut own = 0;
    for (request, pair) in pairs {
        own += pair.own_tokens();
        let longest = prefixes.entry(request).or_default();
        *longest = (*longest).max(pair.shared as usize);
    }
    own + prefixes.values().sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[test]
    fn pairs_over_the_limit_are_refused_and_come_back_when_released() {
        let admission = Admission::new(10, 100, 1000);
        let mut first = admission.admit(60, 1, 0, later()).unwrap();
        assert_eq!(
            admission.admit(41, 1, 0, later()).unwrap_err(),
            Refused::Pairs {
                asked: 41,
                queued: 60,
                limit: 100
            }
        );
        first.pairs.release(20);
        let second = admission.admit(60, 1, 0, later()).unwrap();
        assert_eq!(admission.queued_pairs(), 100);
        drop(first);
        drop(second);
        assert_eq!(admission.queued_pairs(), 0);
    }

    #[test]
    fn restored_pairs_count_again_past_the_limit() {
        let admission = Admission::new(10, 10, 1000);
        let mut ticket = admission.admit(10, 1, 0, later()).unwrap();
        ticket.pairs.release(10);
        ticket.pairs.restore(10);
        assert!(admission.admit(1, 1, 0, later()).is_err());
        drop(ticket);
        assert_eq!(admission.queued_pairs(), 0);
    }

    #[test]
    fn requests_over_the_limit_are_refused() {
        let admission = Admission::new(2, 100, 1000);
        let _a = admission.enter().unwrap();
        let b = admission.enter().unwrap();
        assert_eq!(
            admission.enter().unwrap_err(),
            Refused::Requests { limit: 2 }
        );
        drop(b);
        assert!(admission.enter().is_ok());
        assert_eq!(admission.requests_in_flight(), 1);
    }

    #[test]
    fn text_over_the_limit_is_refused() {
        let admission = Admission::new(2, 100, 1000);
        let _held = admission.admit(1, 900, 0, later()).unwrap();
        let refused = admission.admit(1, 200, 0, later()).unwrap_err();
        assert!(refused
            .to_string()
            .contains("max_text_bytes_in_flight (1000)"));
    }

    #[test]
    fn work_that_cannot_meet_its_deadline_is_refused_with_the_expected_wait() {
        let admission = Admission::new(10, 1000, 1000);
        let soon = Instant::now() + Duration::from_secs(4);
        // No rate known yet: admitted.
        let mut first = admission.admit(1, 1, 1000, soon).unwrap();
        admission.backlog.seed(1000.0);
        admission.confirm(&mut first, 1000, soon).unwrap();
        // 1000 tokens ahead plus 2500 of its own take 3.5 s at 1000 tokens/s: past 4 s
        // with the safety margin.
        let refused = admission.admit(1, 1, 2500, soon).unwrap_err();
        assert!(matches!(refused, Refused::Deadline { .. }), "{refused}");
        assert!(
            refused.to_string().contains("expected wait 3.5s"),
            "{refused}"
        );
        // Once the first is scored, the same request fits.
        first.tokens.scored(1000);
        let mut second = admission.admit(1, 1, 2500, soon).unwrap();
        // Tokenized, it turns out to be longer than it looked.
        assert!(admission.confirm(&mut second, 3000, soon).is_err());
    }

    #[test]
    fn the_rate_follows_the_batches() {
        let backlog = Backlog::default();
        backlog.seed(100.0);
        backlog.observe(1000, Duration::from_secs(1), 1);
        let rate = backlog.rate().unwrap();
        assert!(rate > 100.0 && rate < 1000.0, "{rate}");
        backlog.seed(5.0);
        assert_eq!(
            backlog.rate(),
            Some(rate),
            "a seed does not replace a measure"
        );
    }
}
