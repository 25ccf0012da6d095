//! The poison search: the batches a dead model worker held, sorted into the one it was
//! running (searched in groups of up to eight, each alone on a worker kept for the
//! search) and those queued behind it (back to the scheduler as they were).

use std::sync::Arc;

use crossenc_ipc::RequestId;

use crate::error::PipelineError;
use crate::workers::Member;

use super::{DispatchTask, QueuedPair, SEARCH_FANOUT};

impl DispatchTask {
    /// The worker for the next suspect group, once it is idle. The search keeps one
    /// worker (the least loaded when it starts, or after its worker died) until no
    /// suspect is left; while only one is up, it gives that one back between groups for
    /// a new batch, if one waits.
    pub(super) fn search_worker(&mut self) -> Option<Arc<Member>> {
        let alone = self.models.alive_count() == 1;
        let yields = alone && self.batch_turn && !self.scheduler.is_empty();
        if self.suspects.is_empty() || yields {
            if self.isolating.is_empty() {
                self.searching_on = None;
            }
            return None;
        }
        let kept = self.searching_on;
        let worker = match kept
            .and_then(|serial| self.models.least_loaded_where(|m| m.serial() == serial))
        {
            Some(worker) => worker,
            None => {
                let worker = self.models.least_loaded()?;
                self.searching_on = Some(worker.serial());
                worker
            }
        };
        let isolating = self.isolating.values().any(|&s| s == worker.serial());
        (worker.load() == 0 && !isolating).then_some(worker)
    }

    /// Whether `worker` still owes a reply for a batch older than `batch`.
    pub(super) fn older_in_flight(&self, batch: u64, worker: u64) -> bool {
        self.in_flight
            .iter()
            .any(|(&other, flight)| other < batch && flight.worker == worker)
    }

    /// The batches of a dead `worker` that were waiting to learn their fate, oldest first.
    pub(super) fn take_behind(&mut self, worker: u64) -> Vec<Vec<QueuedPair>> {
        let (mut theirs, others) = std::mem::take(&mut self.behind_a_death)
            .into_iter()
            .partition::<Vec<_>, _>(|(_, w, _)| *w == worker);
        self.behind_a_death = others;
        theirs.sort_by_key(|(batch, _, _)| *batch);
        theirs.into_iter().map(|(_, _, pairs)| pairs).collect()
    }

    /// An older batch of `worker` was answered: if batches of it wait behind a death and
    /// none older is owed, the oldest of them was the one running when it died.
    pub(super) fn settle_behind(&mut self, worker: u64) {
        let oldest = self
            .behind_a_death
            .iter()
            .filter(|(_, w, _)| *w == worker)
            .map(|(batch, _, _)| *batch)
            .min();
        if oldest.is_none_or(|b| self.older_in_flight(b, worker)) {
            return;
        }
        let mut behind = self.take_behind(worker).into_iter();
        if let Some(running) = behind.next() {
            self.search(running, false);
        }
        for pairs in behind {
            self.put_back(pairs, false);
        }
    }

    /// The worker died holding these pairs (of requests still waiting): they count as
    /// queued again and run alone on idle workers, in up to eight groups, so that a pair
    /// that kills a worker is found in log8 steps. A pair that killed a worker alone is the poison,
    /// and its request fails.
    pub(super) fn search(&mut self, pairs: Vec<QueuedPair>, isolated: bool) {
        // Alone as sent: a group that is down to one pair only because the others' requests
        // went away does not convict that pair; it runs alone first.
        let alone = isolated && pairs.len() == 1;
        let mut pairs = self.requeued(pairs);
        if alone && pairs.len() == 1 {
            let pair = &pairs[0];
            let request = self.requests.get(&pair.request).map(|g| g.id.clone());
            tracing::error!(
                request = request.as_ref().map_or("", RequestId::as_str),
                pair = pair.index,
                "a pair killed a model worker alone; failing its request"
            );
            let error = PipelineError::Poison { index: pair.index };
            self.fail_pairs(&pairs, error);
            return;
        }
        // A run that lives costs a small batch; one that dies costs a worker's restart,
        // and the cores it loads on. So each step splits in up to SEARCH_FANOUT groups:
        // log8(n) deaths find the pair, at most 8 runs a step, where halves took log2(n).
        let size = pairs.len().div_ceil(SEARCH_FANOUT).max(1);
        let mut groups = Vec::new();
        while pairs.len() > size {
            let rest = pairs.split_off(size);
            groups.push(std::mem::replace(&mut pairs, rest));
        }
        groups.push(pairs);
        for group in groups.into_iter().rev().filter(|g| !g.is_empty()) {
            self.suspects.push_front(group);
        }
        self.publish_waiting();
    }

    /// The batch never reached its worker (it had just died): its pairs wait again as
    /// they were, a suspect group still as one.
    pub(super) fn put_back(&mut self, pairs: Vec<QueuedPair>, isolated: bool) {
        let pairs = self.requeued(pairs);
        if isolated {
            if !pairs.is_empty() {
                self.suspects.push_front(pairs);
            }
        } else {
            for pair in pairs {
                let (request, len, arrived) = (pair.request, pair.tokens.len(), pair.arrived);
                self.scheduler.push(request, len, pair, arrived);
            }
        }
        self.publish_waiting();
    }

    /// The pairs whose requests still wait, each counted as queued again.
    pub(super) fn requeued(&mut self, pairs: Vec<QueuedPair>) -> Vec<QueuedPair> {
        pairs
            .into_iter()
            .filter(|pair| match self.requests.get_mut(&pair.request) {
                Some(gathering) => {
                    gathering.ticket.pairs.restore(1);
                    true
                }
                None => false,
            })
            .collect()
    }
}
