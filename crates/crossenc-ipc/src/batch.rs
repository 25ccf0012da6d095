//! Token ids and scores between the supervisor and its workers.
//!
//! A [`TokenBatch`] holds the tokens of several pairs in one region: all ids as
//! little-endian `u32`, then all token type ids as `u8`; the pair lengths travel beside
//! it. The supervisor hands model workers batches in shared memory (sending one moves a
//! file descriptor, not the tokens). What workers send back (tokenized batches, scores)
//! travels inline in the message instead: the supervisor never maps memory a worker
//! holds, so a worker that shrinks its segment cannot SIGBUS the supervisor (the
//! segments ipc-channel makes cannot be sealed), and a batch that arrives in shared
//! memory from a worker is refused (see [`TokenBatch::is_inline`]).

use ipc_channel::ipc::IpcSharedMemory;
use serde::{Deserialize, Serialize};

const ID_BYTES: usize = 4;

/// The tokens of one pair, owned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PairTokens {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u8>,
    /// Leading tokens that are a decoder prompt's prefix, which the pairs of its
    /// request share (0 for an encoder's pair).
    pub shared: u32,
}

impl PairTokens {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens after the shared prefix: what the pair costs the pass beyond it.
    pub fn own_tokens(&self) -> usize {
        self.ids.len() - self.shared as usize
    }
}

/// Tokenized pairs.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenBatch {
    lengths: Vec<u32>,
    /// Each pair's shared prefix, in tokens (see [`PairTokens::shared`]).
    shared: Vec<u32>,
    data: Region,
}

/// Where a batch's bytes are.
#[derive(Debug, Serialize, Deserialize)]
enum Region {
    /// A shared-memory segment, for what the supervisor sends.
    Shared(IpcSharedMemory),
    /// In the message itself, for what workers send.
    Inline(Vec<u8>),
}

impl std::ops::Deref for Region {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Region::Shared(shared) => shared,
            Region::Inline(bytes) => bytes,
        }
    }
}

/// One pair of a [`TokenBatch`], borrowed from its shared memory.
#[derive(Debug, Clone, Copy)]
pub struct PairView<'a> {
    ids: &'a [u8],
    type_ids: &'a [u8],
    shared: u32,
}

impl<'a> PairView<'a> {
    pub fn len(&self) -> usize {
        self.type_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.type_ids.is_empty()
    }

    pub fn ids(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.ids
            .chunks_exact(ID_BYTES)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn type_ids(&self) -> &'a [u8] {
        self.type_ids
    }

    /// Leading tokens that are a shared prompt prefix.
    pub fn shared(&self) -> usize {
        self.shared as usize
    }

    pub fn to_pair_tokens(self) -> PairTokens {
        PairTokens {
            ids: self.ids().collect(),
            type_ids: self.type_ids.to_vec(),
            shared: self.shared,
        }
    }
}

/// Collects pairs, then writes them to shared memory once.
#[derive(Debug, Default)]
pub struct TokenBatchBuilder {
    lengths: Vec<u32>,
    shared: Vec<u32>,
    ids: Vec<u8>,
    type_ids: Vec<u8>,
}

impl TokenBatchBuilder {
    pub fn with_capacity(pairs: usize, tokens: usize) -> Self {
        Self {
            lengths: Vec::with_capacity(pairs),
            shared: Vec::with_capacity(pairs),
            ids: Vec::with_capacity(tokens * ID_BYTES),
            type_ids: Vec::with_capacity(tokens),
        }
    }

    /// Adds one pair. `ids` and `type_ids` must have the same length.
    pub fn push(&mut self, ids: impl IntoIterator<Item = u32>, type_ids: &[u8]) {
        self.push_shared(ids, type_ids, 0);
    }

    /// Adds one pair whose first `shared` tokens are a prompt prefix its request's
    /// other pairs share.
    pub fn push_shared(
        &mut self,
        ids: impl IntoIterator<Item = u32>,
        type_ids: &[u8],
        shared: u32,
    ) {
        self.shared.push(shared);
        let before = self.ids.len();
        for id in ids {
            self.ids.extend_from_slice(&id.to_le_bytes());
        }
        debug_assert_eq!((self.ids.len() - before) / ID_BYTES, type_ids.len());
        self.type_ids.extend_from_slice(type_ids);
        self.lengths.push(type_ids.len() as u32);
    }

    pub fn push_pair(&mut self, pair: &PairTokens) {
        self.push_shared(pair.ids.iter().copied(), &pair.type_ids, pair.shared);
    }

    /// The batch in shared memory, as the supervisor sends it to a model worker.
    pub fn finish(mut self) -> TokenBatch {
        self.ids.extend_from_slice(&self.type_ids);
        TokenBatch {
            lengths: self.lengths,
            shared: self.shared,
            data: Region::Shared(IpcSharedMemory::from_bytes(&self.ids)),
        }
    }

    /// The batch inline, as a worker sends it to the supervisor.
    pub fn finish_inline(mut self) -> TokenBatch {
        self.ids.extend_from_slice(&self.type_ids);
        TokenBatch {
            lengths: self.lengths,
            shared: self.shared,
            data: Region::Inline(self.ids),
        }
    }
}

impl TokenBatch {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Tokens of each pair.
    pub fn lengths(&self) -> &[u32] {
        &self.lengths
    }

    pub fn total_tokens(&self) -> usize {
        self.lengths.iter().map(|&l| l as usize).sum()
    }

    /// Whether the batch travelled in its message rather than in shared memory: the
    /// supervisor takes only such batches from workers.
    pub fn is_inline(&self) -> bool {
        matches!(self.data, Region::Inline(_))
    }

    /// Checks that the shared memory holds exactly what the lengths promise, so that a
    /// malformed batch is refused rather than read out of bounds.
    pub fn validate(&self) -> Result<(), String> {
        let expected = self.total_tokens() * (ID_BYTES + 1);
        let shared_fits = self.shared.len() == self.lengths.len()
            && (self.shared.iter().zip(&self.lengths)).all(|(s, l)| *s == 0 || s < l);
        if !shared_fits {
            return Err(format!(
                "token batch of {} pairs has shared prefixes that are not shorter than their pairs",
                self.len()
            ));
        }
        if self.data.len() == expected {
            Ok(())
        } else {
            Err(format!(
                "token batch of {} pairs should hold {expected} bytes, holds {}",
                self.len(),
                self.data.len()
            ))
        }
    }

    /// The pairs in order. Call [`TokenBatch::validate`] first on a batch from elsewhere.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = PairView<'_>> {
        let total = self.total_tokens();
        let (ids, type_ids) = self.data.split_at(total * ID_BYTES);
        let mut start = 0usize;
        self.lengths.iter().enumerate().map(move |(i, &len)| {
            let shared = self.shared.get(i).copied().unwrap_or(0);
            let len = len as usize;
            let view = PairView {
                ids: &ids[start * ID_BYTES..(start + len) * ID_BYTES],
                type_ids: &type_ids[start..start + len],
                shared,
            };
            start += len;
            view
        })
    }
}

/// One score per pair, in the order of the batch that was scored, inline in the message
/// (never in shared memory: see the module's documentation).
#[derive(Debug, Serialize, Deserialize)]
pub struct ScoreBatch {
    data: Vec<u8>,
}

impl ScoreBatch {
    pub fn new(scores: &[f32]) -> Self {
        Self {
            data: scores.iter().flat_map(|s| s.to_le_bytes()).collect(),
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn build(pairs: &[PairTokens]) -> TokenBatch {
        let mut builder = TokenBatchBuilder::default();
        for pair in pairs {
            builder.push_pair(pair);
        }
        builder.finish()
    }

    proptest! {
        #[test]
        fn pairs_come_back_as_they_went_in(
            pairs in prop::collection::vec(
                (prop::collection::vec((any::<u32>(), 0u8..2), 1..40), any::<u32>())
                    .prop_map(|(t, shared)| PairTokens {
                        ids: t.iter().map(|p| p.0).collect(),
                        type_ids: t.iter().map(|p| p.1).collect(),
                        shared: shared % t.len() as u32,
                    }),
                1..20,
            )
        ) {
            let batch = build(&pairs);
            prop_assert!(batch.validate().is_ok());
            prop_assert_eq!(batch.len(), pairs.len());
            let back: Vec<PairTokens> = batch.iter().map(PairView::to_pair_tokens).collect();
            prop_assert_eq!(back, pairs);
        }
    }

    #[test]
    fn workers_send_inline_and_the_supervisor_shares() {
        let pair = PairTokens {
            ids: vec![1, 2],
            type_ids: vec![0, 1],
            shared: 1,
        };
        let mut inline = TokenBatchBuilder::default();
        inline.push_pair(&pair);
        let inline = inline.finish_inline();
        let mut shared = TokenBatchBuilder::default();
        shared.push_pair(&pair);
        let shared = shared.finish();
        assert!(inline.is_inline() && !shared.is_inline());
        for batch in [inline, shared] {
            assert!(batch.validate().is_ok());
            assert_eq!(batch.iter().next().unwrap().to_pair_tokens(), pair);
        }
    }

    #[test]
    fn scores_round_trip() {
        let scores = [0.5, -3.25, f32::MAX, 0.0];
        assert_eq!(ScoreBatch::new(&scores).to_vec(), scores);
    }
}
