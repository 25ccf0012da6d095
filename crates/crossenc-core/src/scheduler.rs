//! The scheduler: which waiting pairs form the next model batch, and when.
//!
//! Pairs of every request in flight wait here, indexed by length. Each batch is built
//! around the oldest waiting pair, so no pair starves: a pair is in a batch after at most
//! as many batches as there were pairs older than it. Around that pair the batch takes
//! its neighbours in length order, as long as the batch stays under both budgets
//! (`max_batch_tokens` of [`BatchCost`], `max_batch_size` pairs). For a padded pass its
//! padding also stays under [`MAX_PADDING`] of its real tokens; the packed CPU pass
//! computes no padding, so there only the cost counts. A batch is full when
//! `max_batch_size` or `max_batch_tokens` stops it; one that is not full is cut only once
//! its oldest pair has waited `max_batch_delay`, in case more pairs arrive to fill it.
//!
//! This is a plain data structure: no IPC, no async, no clock of its own (callers pass
//! `now`), so that it can be tested exhaustively.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::time::{Duration, Instant};

/// Padding a padded batch may carry, as a fraction of its real tokens. Padded tokens
/// cost as much as real ones; 10% keeps the waste small while letting batches grow.
pub const MAX_PADDING: f64 = 0.10;

/// What a batch costs the pass that runs it: the measure `max_batch_tokens` bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchCost {
    /// A pass over the pairs padded to the longest (candle's, on GPUs): pairs x longest,
    /// and padding at most [`MAX_PADDING`] of the real tokens.
    Padded,
    /// The packed CPU pass: each pair's own tokens through the dense layers, plus its
    /// attention, which grows with its length squared. A pair of `len` tokens costs
    /// `len + len² / attention_span` tokens, `attention_span` being the length at which
    /// a token's attention costs what its dense layers do (6 x the hidden size in a
    /// BERT-style layer: 24h² products against 4h·len; a decoder's, from its shape and
    /// causal attention's half of the keys: the model's `attention_span`).
    Packed { attention_span: usize },
}

impl BatchCost {
    /// The packed pass's cost of a model whose attention costs a token what its dense
    /// layers do at `attention_span` tokens (the model's `attention_span`).
    pub fn packed(attention_span: usize) -> Self {
        BatchCost::Packed {
            attention_span: attention_span.max(1),
        }
    }

    /// What one pair of `len` tokens adds (the padded pass: its real tokens).
    fn of_pair(self, len: usize) -> usize {
        match self {
            BatchCost::Padded => len,
            BatchCost::Packed { attention_span } => len + len * len / attention_span,
        }
    }
}

/// The limits every batch respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// The batch's [`BatchCost`] in tokens, at most (a single pair over it still gets a
    /// batch of its own).
    pub max_batch_tokens: usize,
    pub cost: BatchCost,
    /// Pairs in a batch, at most.
    pub max_batch_size: usize,
    /// How long a batch that is not full waits for more pairs.
    pub max_batch_delay: Duration,
}

/// Which request a pair belongs to (the dispatch task's own number for it).
pub type RequestKey = u64;

/// A pair waiting to be scored, with what the caller needs to route its score back.
#[derive(Debug)]
struct Waiting<T> {
    request: RequestKey,
    arrived: Instant,
    item: T,
}

/// A batch the scheduler cut: its pairs, and the figures the metrics need.
#[derive(Debug)]
pub struct Batch<T> {
    /// Each pair's item and how long it waited in the scheduler.
    pub pairs: Vec<(T, Duration)>,
    /// Tokens of the pairs themselves.
    pub real_tokens: usize,
    /// Pairs x longest pair: what the model computes.
    pub padded_tokens: usize,
}

/// Waiting pairs and the rule that cuts them into batches.
#[derive(Debug)]
pub struct Scheduler<T> {
    limits: SchedulerLimits,
    /// Waiting pairs by (length, arrival sequence).
    by_length: BTreeMap<(usize, u64), Waiting<T>>,
    /// The same pairs by arrival sequence: the first is the oldest.
    by_age: BTreeMap<u64, usize>,
    /// Each request's waiting pairs, as (length, sequence) keys.
    by_request: HashMap<RequestKey, HashSet<(usize, u64)>>,
    next_seq: u64,
}

impl<T> Scheduler<T> {
    pub fn new(limits: SchedulerLimits) -> Self {
        Self {
            limits,
            by_length: BTreeMap::new(),
            by_age: BTreeMap::new(),
            by_request: HashMap::new(),
            next_seq: 0,
        }
    }

    pub fn limits(&self) -> SchedulerLimits {
        self.limits
    }

    /// Pairs waiting.
    pub fn len(&self) -> usize {
        self.by_length.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_length.is_empty()
    }

    /// Adds a pair of `len` tokens that arrived at `now`.
    pub fn push(&mut self, request: RequestKey, len: usize, item: T, now: Instant) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = (len, seq);
        self.by_length.insert(
            key,
            Waiting {
                request,
                arrived: now,
                item,
            },
        );
        self.by_age.insert(seq, len);
        self.by_request.entry(request).or_default().insert(key);
    }

    /// Drops every waiting pair of `request` (its client went away or its deadline
    /// passed); returns how many were dropped.
    pub fn cancel(&mut self, request: RequestKey) -> usize {
        let Some(keys) = self.by_request.remove(&request) else {
            return 0;
        };
        let mut dropped = 0;
        for key in keys {
            if self.by_length.remove(&key).is_some() {
                self.by_age.remove(&key.1);
                dropped += 1;
            }
        }
        dropped
    }

    /// When the batch around the oldest pair must be cut even if it is not full.
    pub fn deadline(&self) -> Option<Instant> {
        let (&seq, &len) = self.by_age.first_key_value()?;
        let oldest = &self.by_length[&(len, seq)];
        Some(oldest.arrived + self.limits.max_batch_delay)
    }

    /// The next batch, if one should go now: it is full, or its oldest pair has waited
    /// `max_batch_delay`. Call it when a model worker can take a batch.
    pub fn next_batch(&mut self, now: Instant) -> Option<Batch<T>> {
        let (keys, full) = self.plan()?;
        if !full && self.deadline().is_some_and(|deadline| now < deadline) {
            return None;
        }
        Some(self.take(keys, now))
    }

    /// The batch around the oldest pair, and whether a budget stops it from growing.
    fn plan(&self) -> Option<(Vec<(usize, u64)>, bool)> {
        let (&seq, &len) = self.by_age.first_key_value()?;
        let anchor = (len, seq);
        let mut shorter = self.by_length.range(..anchor).rev().map(|(key, _)| *key);
        let mut longer = self
            .by_length
            .range((Bound::Excluded(anchor), Bound::Unbounded))
            .map(|(key, _)| *key);
        let mut next_shorter = shorter.next();
        let mut next_longer = longer.next();
        let mut window = Window::new(anchor, self.limits.cost);
        let mut budget_bound = false;
        while window.keys.len() < self.limits.max_batch_size {
            // Take the neighbour that adds less padding; stop when neither fits.
            let via_shorter = next_shorter.filter(|&k| self.fits(&window, k) == Fit::Yes);
            let via_longer = next_longer.filter(|&k| self.fits(&window, k) == Fit::Yes);
            let pick = match (via_shorter, via_longer) {
                (Some(s), Some(l)) => {
                    if window.padding_after(s) <= window.padding_after(l) {
                        Some((s, true))
                    } else {
                        Some((l, false))
                    }
                }
                (Some(s), None) => Some((s, true)),
                (None, Some(l)) => Some((l, false)),
                (None, None) => None,
            };
            let Some((key, is_shorter)) = pick else {
                // Full only if the token budget stopped it: a neighbour refused for its
                // padding may yet be joined by later pairs of a closer length.
                budget_bound = [next_shorter, next_longer]
                    .into_iter()
                    .flatten()
                    .any(|k| self.fits(&window, k) == Fit::OverBudget);
                break;
            };
            window.add(key);
            if is_shorter {
                next_shorter = shorter.next();
            } else {
                next_longer = longer.next();
            }
        }
        let full = budget_bound || window.keys.len() >= self.limits.max_batch_size;
        Some((window.keys, full))
    }

    fn fits(&self, window: &Window, key: (usize, u64)) -> Fit {
        let budget = self.limits.max_batch_tokens;
        let real = window.real + key.0;
        match self.limits.cost {
            BatchCost::Packed { .. } if window.cost + self.limits.cost.of_pair(key.0) > budget => {
                Fit::OverBudget
            }
            BatchCost::Packed { .. } => Fit::Yes,
            BatchCost::Padded => {
                let padded = (window.keys.len() + 1) * window.longest.max(key.0);
                if padded > budget {
                    Fit::OverBudget
                } else if (padded - real) as f64 > MAX_PADDING * real as f64 {
                    Fit::TooMuchPadding
                } else {
                    Fit::Yes
                }
            }
        }
    }

    fn take(&mut self, keys: Vec<(usize, u64)>, now: Instant) -> Batch<T> {
        let longest = keys.iter().map(|k| k.0).max().unwrap_or(0);
        let padded_tokens = longest * keys.len();
        let mut real_tokens = 0;
        let mut pairs = Vec::with_capacity(keys.len());
        for key in keys {
            let waiting = self
                .by_length
                .remove(&key)
                .expect("planned keys are waiting");
            self.by_age.remove(&key.1);
            self.forget(waiting.request, key);
            real_tokens += key.0;
            pairs.push((waiting.item, now.saturating_duration_since(waiting.arrived)));
        }
        Batch {
            pairs,
            real_tokens,
            padded_tokens,
        }
    }

    fn forget(&mut self, request: RequestKey, key: (usize, u64)) {
        if let Some(keys) = self.by_request.get_mut(&request) {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_request.remove(&request);
            }
        }
    }
}

/// Whether a pair can join a batch being planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fit {
    Yes,
    OverBudget,
    TooMuchPadding,
}

/// A batch being planned: its keys, longest pair, real tokens and cost.
struct Window {
    keys: Vec<(usize, u64)>,
    longest: usize,
    real: usize,
    cost: usize,
    measure: BatchCost,
}

impl Window {
    fn new(anchor: (usize, u64), measure: BatchCost) -> Self {
        Self {
            keys: vec![anchor],
            longest: anchor.0,
            real: anchor.0,
            cost: measure.of_pair(anchor.0),
            measure,
        }
    }

    /// Padded minus real tokens if `key` joined.
    fn padding_after(&self, key: (usize, u64)) -> usize {
        let longest = self.longest.max(key.0);
        (self.keys.len() + 1) * longest - (self.real + key.0)
    }

    fn add(&mut self, key: (usize, u64)) {
        self.keys.push(key);
        self.longest = self.longest.max(key.0);
        self.real += key.0;
        self.cost += self.measure.of_pair(key.0);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    const LIMITS: SchedulerLimits = SchedulerLimits {
        max_batch_tokens: 1000,
        cost: BatchCost::Padded,
        max_batch_size: 8,
        max_batch_delay: Duration::from_millis(2),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_batch_that_is_not_full_waits_for_the_delay() {
        let t0 = Instant::now();
        let mut scheduler = Scheduler::new(LIMITS);
        scheduler.push(1, 10, "a", t0);
        assert!(scheduler.next_batch(t0 + ms(1)).is_none());
        assert_eq!(scheduler.deadline(), Some(t0 + ms(2)));
        let batch = scheduler.next_batch(t0 + ms(2)).expect("delay passed");
        assert_eq!(batch.pairs.len(), 1);
        assert_eq!(batch.pairs[0].1, ms(2));
        assert!(scheduler.is_empty());
    }

    #[test]
    fn a_full_batch_goes_at_once() {
        let t0 = Instant::now();
        let mut scheduler = Scheduler::new(LIMITS);
        for i in 0..9 {
            scheduler.push(1, 10, i, t0);
        }
        let batch = scheduler.next_batch(t0).expect("eight pairs fill a batch");
        let items: Vec<_> = batch.pairs.iter().map(|p| p.0).collect();
        assert_eq!(items, (0..8).collect::<Vec<_>>());
        assert!(scheduler.next_batch(t0).is_none(), "one pair is not full");
    }

    #[test]
    fn pairs_of_other_lengths_wait_for_a_batch_of_their_own() {
        let t0 = Instant::now();
        let mut scheduler = Scheduler::new(LIMITS);
        scheduler.push(1, 100, "long-1", t0);
        scheduler.push(2, 10, "short-1", t0);
        scheduler.push(2, 100, "long-2", t0);
        scheduler.push(1, 11, "short-2", t0);
        let first = scheduler.next_batch(t0 + ms(2)).unwrap();
        let second = scheduler.next_batch(t0 + ms(2)).unwrap();
        fn items(batch: &Batch<&'static str>) -> Vec<&'static str> {
            batch.pairs.iter().map(|p| p.0).collect()
        }
        assert_eq!(items(&first), ["long-1", "long-2"]);
        assert_eq!(items(&second), ["short-1", "short-2"]);
        assert_eq!((second.real_tokens, second.padded_tokens), (21, 22));
    }

    #[test]
    fn cancel_drops_only_that_requests_pairs() {
        let t0 = Instant::now();
        let mut scheduler = Scheduler::new(LIMITS);
        scheduler.push(1, 10, "a", t0);
        scheduler.push(2, 10, "b", t0);
        scheduler.push(1, 12, "c", t0);
        assert_eq!(scheduler.cancel(1), 2);
        assert_eq!(scheduler.cancel(1), 0);
        let batch = scheduler.next_batch(t0 + ms(5)).unwrap();
        assert_eq!(batch.pairs.len(), 1);
        assert_eq!(batch.pairs[0].0, "b");
    }

    #[test]
    fn a_pair_over_the_token_budget_gets_a_batch_of_one() {
        let t0 = Instant::now();
        let mut scheduler = Scheduler::new(LIMITS);
        scheduler.push(1, 1500, "huge", t0);
        scheduler.push(1, 1500, "huge-too", t0);
        let batch = scheduler
            .next_batch(t0)
            .expect("over budget counts as full");
        assert_eq!(batch.pairs.len(), 1);
        assert_eq!(batch.padded_tokens, 1500);
    }

    #[test]
    fn a_packed_batch_joins_lengths_a_padded_one_keeps_apart() {
        let t0 = Instant::now();
        let padded_or_packed = [BatchCost::Padded, BatchCost::packed(10_000)];
        let sizes = padded_or_packed.map(|cost| {
            let mut scheduler = Scheduler::new(SchedulerLimits { cost, ..LIMITS });
            for (i, len) in [20, 200, 60, 100].into_iter().enumerate() {
                scheduler.push(i as u64, len, len, t0);
            }
            scheduler.next_batch(t0 + ms(2)).unwrap().pairs.len()
        });
        // Padded: 20 rides alone (any neighbour would pad it past 10%); packed: all four.
        assert_eq!(sizes, [1, 4]);
    }

    #[test]
    fn a_packed_batch_pays_for_attention_by_length_squared() {
        let t0 = Instant::now();
        // Span 100: a 300-token pair costs 300 + 900 = 1200, over the 1000 budget.
        let cost = BatchCost::Packed {
            attention_span: 100,
        };
        let mut scheduler = Scheduler::new(SchedulerLimits { cost, ..LIMITS });
        scheduler.push(1, 300, "long", t0);
        scheduler.push(2, 100, "short", t0);
        scheduler.push(3, 100, "short-too", t0);
        let first = scheduler
            .next_batch(t0)
            .expect("over budget counts as full");
        assert_eq!(first.pairs.len(), 1);
        // 100-token pairs cost 200 each: both fit.
        let second = scheduler.next_batch(t0 + ms(2)).unwrap();
        assert_eq!(second.pairs.len(), 2);
    }

    /// One step of a random simulation: pairs arrive, or a worker asks for a batch.
    #[derive(Debug, Clone)]
    enum Step {
        Arrive {
            request: u64,
            lengths: Vec<usize>,
            after_us: u64,
        },
        Cancel {
            request: u64,
        },
        WorkerFree {
            after_us: u64,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..20, prop::collection::vec(1usize..700, 1..40), 0u64..3000)
                .prop_map(|(request, lengths, after_us)| Step::Arrive { request, lengths, after_us }),
            1 => (0u64..20).prop_map(|request| Step::Cancel { request }),
            5 => (0u64..3000).prop_map(|after_us| Step::WorkerFree { after_us }),
        ]
    }

    proptest! {
        /// For random arrivals, lengths and cancellations: every pair is batched exactly
        /// once or cancelled, no batch breaks a budget, every batch holds the oldest
        /// waiting pair, and a free worker never waits past the oldest pair's deadline.
        #[test]
        fn every_pair_once_within_budgets_and_the_oldest_first(
            steps in prop::collection::vec(step(), 1..80),
            max_batch_tokens in 600usize..20_000,
            max_batch_size in 1usize..70,
            packed in any::<bool>(),
        ) {
            let cost = if packed { BatchCost::packed(64) } else { BatchCost::Padded };
            let limits = SchedulerLimits { max_batch_tokens, cost, max_batch_size, max_batch_delay: ms(2) };
            let mut scheduler = Scheduler::new(limits);
            let t0 = Instant::now();
            let mut now = t0;
            let mut next_item = 0u64;
            // item -> (request, length, arrival)
            let mut waiting: BTreeMap<u64, (u64, usize, Instant)> = BTreeMap::new();
            let mut batched = HashSet::new();
            let mut cancelled = HashSet::new();
            let mut check_batch = |batch: Batch<u64>, waiting: &mut BTreeMap<u64, (u64, usize, Instant)>, now: Instant| -> Result<(), TestCaseError> {
                let oldest = *waiting.keys().next().expect("a batch comes from waiting pairs");
                prop_assert!(batch.pairs.iter().any(|p| p.0 == oldest), "the oldest pair rides first");
                let longest = batch.pairs.iter().map(|p| waiting[&p.0].1).max().unwrap();
                prop_assert!(batch.pairs.len() <= max_batch_size);
                let spent: usize = batch.pairs.iter().map(|p| cost.of_pair(waiting[&p.0].1)).sum();
                let within = match cost {
                    BatchCost::Padded => batch.pairs.len() * longest <= max_batch_tokens,
                    BatchCost::Packed { .. } => spent <= max_batch_tokens,
                };
                prop_assert!(batch.pairs.len() == 1 || within, "over budget: {spent}");
                prop_assert_eq!(batch.padded_tokens, batch.pairs.len() * longest);
                for (item, waited) in batch.pairs {
                    let (_, _, arrived) = waiting.remove(&item).expect("batched once");
                    prop_assert_eq!(waited, now - arrived);
                    prop_assert!(batched.insert(item));
                }
                Ok(())
            };
            for step in steps {
                match step {
                    Step::Arrive { request, lengths, after_us } => {
                        now += Duration::from_micros(after_us);
                        for len in lengths {
                            scheduler.push(request, len, next_item, now);
                            waiting.insert(next_item, (request, len, now));
                            next_item += 1;
                        }
                    }
                    Step::Cancel { request } => {
                        let theirs: Vec<u64> = waiting.iter().filter(|(_, w)| w.0 == request).map(|(i, _)| *i).collect();
                        prop_assert_eq!(scheduler.cancel(request), theirs.len());
                        for item in theirs {
                            waiting.remove(&item);
                            cancelled.insert(item);
                        }
                    }
                    Step::WorkerFree { after_us } => {
                        now += Duration::from_micros(after_us);
                        match scheduler.next_batch(now) {
                            Some(batch) => check_batch(batch, &mut waiting, now)?,
                            None => {
                                // Only a batch that is not full waits, and never past the deadline.
                                if let Some((_, &(_, _, arrived))) = waiting.iter().next() {
                                    prop_assert!(now < arrived + limits.max_batch_delay);
                                }
                            }
                        }
                    }
                }
                prop_assert_eq!(scheduler.len(), waiting.len());
            }
            // Drain: after the delay, every remaining pair leaves.
            now += limits.max_batch_delay;
            while let Some(batch) = scheduler.next_batch(now) {
                check_batch(batch, &mut waiting, now)?;
            }
            prop_assert!(waiting.is_empty(), "{} pairs never left", waiting.len());
            prop_assert_eq!(batched.len() + cancelled.len(), next_item as usize);
        }
    }
}
