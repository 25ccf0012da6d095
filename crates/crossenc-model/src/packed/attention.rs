//! Attention on packed pairs: each pair attends over its own tokens, one task per
//! (pair, head), reading Q, K and V from the fused `[tokens, 3 * hidden]` product and
//! writing its head's columns of the context: `[tokens, hidden]`, or `[pairs, hidden]`
//! where only each pair's first token asks ([`Queries::First`]). Between the scores
//! and the softmax an architecture may change them: ModernBERT's sliding window,
//! DeBERTa's relative scores.

use rayon::prelude::*;

use super::{product, product_into, softmax_rows, View};

/// Which of a pair's tokens attention computes a context for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queries {
    /// Every token: the context is `[tokens, hidden]`.
    All,
    /// Each pair's first token alone, the context `[pairs, hidden]`: in the last layer
    /// of a model whose head reads only that token, no other row of it is ever read.
    First,
}

impl Queries {
    /// The rows of the context, `tokens` in `pairs` pairs.
    pub(crate) fn rows(self, tokens: usize, pairs: usize) -> usize {
        match self {
            Queries::All => tokens,
            Queries::First => pairs,
        }
    }
}

/// Self-attention of every pair: the context of the `queries` asked, from the fused
/// Q|K|V. With a `window`, a
/// token attends only to tokens at most that far from it (ModernBERT's local layers).
pub(crate) fn attend(
    offsets: &[usize],
    qkv: &[f32],
    (heads, queries): (usize, Queries),
    window: Option<usize>,
    context: &mut Vec<f32>,
) {
    let mask = |task: &HeadTask<'_>, scores: &mut [f32]| {
        let (len, Some(window)) = (task.len, window) else {
            return;
        };
        if window + 1 >= len {
            return;
        }
        for (i, row) in scores.chunks_exact_mut(len).enumerate() {
            let (near, far) = (i.saturating_sub(window), (i + window + 1).min(len));
            row[..near].fill(f32::NEG_INFINITY);
            row[far..].fill(f32::NEG_INFINITY);
        }
    };
    attend_each(offsets, qkv, (heads, queries), 1, context, mask);
}

/// [`attend`] with DeBERTa's relative scores added: for query i and key j, the query
/// against the key projection of the relative embedding of i - j, and the key against
/// its query projection, all scaled by 1 / sqrt(3 * head size).
pub(crate) fn attend_relative(
    offsets: &[usize],
    qkv: &[f32],
    (heads, queries): (usize, Queries),
    (relative, layer): (&RelativeAttention, usize),
    context: &mut Vec<f32>,
) {
    let table = &relative.projected[layer];
    let positions = 2 * relative.span;
    let longest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1);
    // The embedding each distance reads: entry delta + longest - 1.
    let index: Vec<usize> = (0..2 * longest - 1)
        .map(|i| relative.index(i as i64 - (longest as i64 - 1)))
        .collect();
    let add = |task: &HeadTask<'_>, scores: &mut [f32]| {
        let (len, asking) = (task.len, task.q.rows);
        let (relative_q, relative_k) = (task.of(table, 0, positions), task.of(table, 1, positions));
        let mut to_position = vec![0.0f32; asking * positions];
        let operands = (task.q, relative_k.transposed());
        product(&mut to_position, positions, false, operands, task.scale, 1);
        let mut from_position = vec![0.0f32; len * positions];
        let operands = (task.k, relative_q.transposed());
        product(
            &mut from_position,
            positions,
            false,
            operands,
            task.scale,
            1,
        );
        for (i, row) in scores.chunks_exact_mut(len).enumerate() {
            let c2p = &to_position[i * positions..][..positions];
            for (j, score) in row.iter_mut().enumerate() {
                let r = index[i + longest - 1 - j];
                *score += c2p[r] + from_position[j * positions + r];
            }
        }
    };
    attend_each(offsets, qkv, (heads, queries), 3, context, add);
}

/// DeBERTa's relative attention: content-to-position and position-to-content scores
/// added to the content scores, from relative embeddings projected by each layer's own
/// query and key (`share_att_key`), over log-bucketed distances.
pub(crate) struct RelativeAttention {
    /// Each layer's Q|K|V projection of the normed relative embeddings,
    /// `[2 * span, 3 * hidden]` (the V third unused).
    pub projected: Vec<Vec<f32>>,
    /// Relative embeddings on each side: `position_buckets`, or the largest distance.
    pub span: usize,
    /// `position_buckets` (0: distances are not bucketed).
    pub buckets: usize,
    /// `max_relative_positions`, for the log buckets.
    pub max_position: usize,
}

impl RelativeAttention {
    /// Which relative embedding a query `delta` tokens after its key reads, as
    /// transformers' `make_log_bucket_position` and the clamp into the table make it.
    fn index(&self, delta: i64) -> usize {
        let bucketed = if self.buckets > 0 {
            log_bucket(delta, self.buckets, self.max_position)
        } else {
            delta
        };
        (bucketed + self.span as i64).clamp(0, 2 * self.span as i64 - 1) as usize
    }
}

/// Distances within half the buckets stay as they are; longer ones share buckets that
/// grow logarithmically up to `max_position`. f32 as transformers computes it.
fn log_bucket(delta: i64, buckets: usize, max_position: usize) -> i64 {
    let mid = (buckets / 2) as i64;
    let distance = if delta < mid && delta > -mid {
        mid - 1
    } else {
        delta.abs()
    };
    if distance <= mid {
        return delta;
    }
    let ratio = (((max_position - 1) as f64) / mid as f64) as f32;
    let log = ((distance as f32 / mid as f32).ln() / ratio.ln() * (mid - 1) as f32).ceil();
    (log + mid as f32) as i64 * delta.signum()
}

/// One (pair, head) of a batch: its Q (every token's, or the first's), K and V, and
/// the scale of its scores.
struct HeadTask<'a> {
    q: View<'a>,
    k: View<'a>,
    v: View<'a>,
    len: usize,
    head: usize,
    hidden: usize,
    scale: f32,
}

impl HeadTask<'_> {
    /// This head's columns of part `part` (0 Q, 1 K, 2 V) of a fused `[rows, 3 * hidden]`
    /// table.
    fn of<'t>(&self, table: &'t [f32], part: usize, rows: usize) -> View<'t> {
        let d = self.q.cols;
        View::columns(
            table,
            rows,
            (part * self.hidden + self.head * d, d),
            3 * self.hidden,
        )
    }
}

/// Runs every (pair, head) task: scores q·kᵀ scaled by 1 / sqrt(`scale_terms` * head
/// size), `adjust` on them (a row per query, the first token's first), softmax, then
/// the probabilities times V into the context.
fn attend_each(
    offsets: &[usize],
    qkv: &[f32],
    (heads, queries): (usize, Queries),
    scale_terms: usize,
    context: &mut Vec<f32>,
    adjust: impl Fn(&HeadTask<'_>, &mut [f32]) + Sync,
) {
    let tokens = offsets.last().copied().unwrap_or(0);
    context.clear();
    if tokens == 0 {
        return;
    }
    let h = qkv.len() / 3 / tokens;
    let d = h / heads;
    let scale = 1.0 / ((scale_terms * d) as f32).sqrt();
    let pairs = offsets.len() - 1;
    context.resize(queries.rows(tokens, pairs) * h, 0.0);
    // One task per (pair, head); each writes its own columns of its pair's rows.
    let tasks: Vec<(usize, usize, usize, usize)> = offsets
        .windows(2)
        .enumerate()
        .flat_map(|(pair, p)| (0..heads).map(move |head| (pair, p[0], p[1], head)))
        .collect();
    let out = SharedOut(context.as_mut_ptr(), context.len());
    tasks.par_iter().for_each(|&(pair, start, end, head)| {
        let len = end - start;
        let rows = &qkv[start * 3 * h..end * 3 * h];
        let part = |part: usize, rows_of: usize| {
            View::columns(rows, rows_of, (part * h + head * d, d), 3 * h)
        };
        let (asking, first_row) = match queries {
            Queries::All => (len, start),
            Queries::First => (1, pair),
        };
        let task = HeadTask {
            q: part(0, asking),
            k: part(1, len),
            v: part(2, len),
            len,
            head,
            hidden: h,
            scale,
        };
        let mut scores = vec![0.0f32; asking * len];
        product(
            &mut scores,
            len,
            false,
            (task.q, task.k.transposed()),
            scale,
            1,
        );
        adjust(&task, &mut scores);
        softmax_rows(&mut scores, &len);
        let probs = View::rows(&scores, asking, len);
        let first = first_row * h + head * d;
        // SAFETY: this task alone writes its pair's `asking` rows from `first_row`,
        // columns head*d..(head+1)*d of the context, borrowed mutably above until every
        // task has ended.
        unsafe {
            product_into(
                out.at(first),
                out.len() - first,
                h,
                false,
                (probs, task.v),
                1.0,
                1,
            )
        };
    });
}

/// The context buffer, written by attention tasks that each own disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32, usize);

// SAFETY: the tasks that share it write disjoint elements (see `attend_each`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Where element `index` lives (a method, so that closures capture the whole
    /// `Sync` wrapper rather than its raw pointer).
    fn at(&self, index: usize) -> *mut f32 {
        assert!(index < self.1, "attention output out of bounds");
        // SAFETY: in bounds of the allocation, checked above.
        unsafe { self.0.add(index) }
    }

    fn len(&self) -> usize {
        self.1
    }
}
