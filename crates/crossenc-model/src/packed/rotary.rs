//! Rotary position embeddings on packed tokens, shared by every architecture that has
//! them (ModernBERT, Qwen3): each pair's positions count from its own first token.

use rayon::prelude::*;

use super::attention::AttentionShape;

/// cos and sin of every position's angle for each of a head's `dim / 2` frequencies,
/// as transformers computes them (f32 products of position and inverse frequency).
pub(crate) struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rotary {
    pub fn new(theta: f64, head_dim: usize, positions: usize) -> Self {
        let half = head_dim / 2;
        let inverse: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32)
            .collect();
        let angles: Vec<f32> = (0..positions)
            .flat_map(|p| inverse.iter().map(move |f| p as f32 * f))
            .collect();
        Self {
            cos: angles.iter().map(|a| a.cos()).collect(),
            sin: angles.iter().map(|a| a.sin()).collect(),
            half,
        }
    }

    /// Rotates one head's query or key at `position` in place: the two halves of the
    /// head as the real and imaginary parts (transformers' `rotate_half`).
    fn rotate(&self, x: &mut [f32], position: usize) {
        let (cos, sin) = (
            &self.cos[position * self.half..][..self.half],
            &self.sin[position * self.half..][..self.half],
        );
        let (first, second) = x.split_at_mut(self.half);
        for i in 0..self.half {
            let (a, b) = (first[i], second[i]);
            first[i] = a * cos[i] - b * sin[i];
            second[i] = b * cos[i] + a * sin[i];
        }
    }

    /// Rotates every query and key head of a fused `[tokens, Q|K|V]` product in place,
    /// each token at its position in its own pair: from `starts[pair]` (a pair that
    /// continues a prefix computed before), else from 0. `before` runs on each head
    /// first: Qwen3 norms its queries and keys before their rotation.
    pub(crate) fn rotate_queries_and_keys(
        &self,
        (offsets, starts): (&[usize], &[usize]),
        qkv: &mut [f32],
        shape: AttentionShape,
        before: impl Fn(&mut [f32], Part) + Sync,
    ) {
        let d = shape.head_dim;
        let queries = shape.heads * d;
        let start = |pair: usize| starts.get(pair).copied().unwrap_or(0);
        let positions: Vec<usize> = (offsets.windows(2).enumerate())
            .flat_map(|(pair, w)| start(pair)..start(pair) + w[1] - w[0])
            .collect();
        qkv.par_chunks_mut(shape.row_width())
            .zip(positions.par_iter())
            .for_each(|(row, &position)| {
                let (q, rest) = row.split_at_mut(queries);
                let k = &mut rest[..shape.kv_heads * d];
                for (part, heads) in [(Part::Query, q), (Part::Key, k)] {
                    for head in heads.chunks_exact_mut(d) {
                        before(head, part);
                        self.rotate(head, position);
                    }
                }
            });
    }
}

/// Which of a head's projections a hook sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Query,
    Key,
}
